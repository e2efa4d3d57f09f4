"""Sharded embeddings on disk: a directory of numpy shards and a manifest.

Layout (``FORMAT`` 1)::

    DIR/manifest.json          rows, dim, label names, each shard's files with SHA-256
    DIR/shard-00000.npy        float32 rows x dim (C order, memory-mappable)
    DIR/shard-00000.labels.npy int64 code of each row's label (into manifest["labels"])
    DIR/shard-00000.rows.npy   int64 row of each row in the corpus (its input order)
    DIR/shard-00000.paths.csv  optional: the file of each row (header ``path``)

Shards are placed by label: each class lies in one shard (classes in label order, a shard
closed once it holds ``shard_rows`` rows), so an anchor's positives never need another
shard. ``.npy`` rather than Parquet: numpy and Rust map it in place with no dependency, and it
is what the rest of tripmine reads and writes.
"""

import csv
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from . import _tripmine

FORMAT = "tripmine-shards"
VERSION = 1
MANIFEST = "manifest.json"


class ShardError(ValueError):
    """A shard directory that is not one, or whose files do not match its manifest."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shards(directory, embeddings, labels, *, paths=None, shard_rows=1_000_000):
    """Writes ``embeddings`` (n x d) and ``labels`` (n) as a shard directory, replacing one
    that is there as a whole (written beside it, then renamed). ``paths``: each row's file,
    recorded for the triplet CSV. Returns the manifest."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be a non-empty 2-D array, not shape {x.shape}")
    n, dim = x.shape
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels has shape {labels.shape}; expected ({n},), one per row")
    if paths is not None:
        paths = [str(p) for p in paths]
        if len(paths) != n:
            raise ValueError(f"paths has {len(paths)} entries for {n} rows")
    shard_rows = int(shard_rows)
    if shard_rows < 1:
        raise ValueError("shard_rows must be at least 1")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"embeddings row {bad} holds NaN or infinite values")
    # The one writer is tripmine-core's, which `tripmine embed --shard-rows` uses too.
    manifest = _tripmine.write_shards(
        os.fspath(directory), x, labels.astype(str).tolist(), paths=paths, shard_rows=shard_rows
    )
    return json.loads(manifest)


@dataclass
class Shards:
    """A shard directory, read: the manifest checked against the files."""

    directory: str
    manifest: dict

    @property
    def rows(self):
        return self.manifest["rows"]

    @property
    def names(self):
        return [s["name"] for s in self.manifest["shards"]]

    def load(self, names, *, mmap=True):
        """Rows, label codes and corpus rows of the shards ``names``, in that order."""
        parts = [self._load_one(n, mmap) for n in names]
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))

    def _load_one(self, name, mmap):
        mode = "r" if mmap else None
        at = lambda suffix: os.path.join(self.directory, name + suffix)  # noqa: E731
        x = np.load(at(".npy"), mmap_mode=mode)
        return np.ascontiguousarray(x), np.load(at(".labels.npy")), np.load(at(".rows.npy"))

    def paths(self):
        """Each corpus row's path (``str(row)`` without recorded paths) and label name."""
        names = self.manifest["labels"]
        paths, labels = [""] * self.rows, [""] * self.rows
        for shard in self.manifest["shards"]:
            _, codes, rows = self._load_one(shard["name"], True)
            if self.manifest["paths"]:
                with open(os.path.join(self.directory, shard["name"] + ".paths.csv"), newline="") as f:
                    recorded = [r[0] for r in list(csv.reader(f))[1:]]
            else:
                recorded = [str(r) for r in rows]
            for r, p, c in zip(rows.tolist(), recorded, codes.tolist()):
                paths[r], labels[r] = p, names[c]
        return paths, labels

    def digest(self):
        """SHA-256 of the manifest: names this exact set of shards (checkpoints record it)."""
        return _sha256(os.path.join(self.directory, MANIFEST))


def read_shards(directory, *, verify=True):
    """Opens a shard directory written by ``write_shards`` (or ``tripmine embed
    --shard-rows``). Checks the manifest, each shard's shape, dtype and label range, and with
    ``verify`` each file's SHA-256 (reads every byte once)."""
    directory = os.fspath(directory)
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ShardError(f"{directory}: no {MANIFEST}; not a shard directory (tripmine.write_shards writes one)") from None
    except json.JSONDecodeError as e:
        raise ShardError(f"{path}: not JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ShardError(f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}; expected {FORMAT!r} {VERSION}")
    shards = Shards(directory, manifest)
    total, next_label = 0, 0
    for shard in manifest["shards"]:
        name = shard["name"]
        for file, recorded in shard["sha256"].items():
            file_path = os.path.join(directory, file)
            if not os.path.exists(file_path):
                raise ShardError(f"{file_path}: missing (the manifest lists it)")
            if verify and _sha256(file_path) != recorded:
                raise ShardError(f"{file_path}: SHA-256 differs from the manifest's; the shard was changed after it was written")
        x, codes, rows = shards._load_one(name, True)
        lo, hi = shard["labels"]
        if x.dtype != np.float32 or x.shape != (shard["rows"], manifest["dim"]):
            raise ShardError(f"{directory}/{name}.npy: {x.dtype} {x.shape}; the manifest says float32 ({shard['rows']}, {manifest['dim']})")
        if codes.shape != (shard["rows"],) or rows.shape != (shard["rows"],):
            raise ShardError(f"{directory}/{name}: labels or rows do not have {shard['rows']} entries")
        if lo != next_label or len(codes) and (codes.min() < lo or codes.max() >= hi):
            raise ShardError(f"{directory}/{name}: labels outside its classes {lo}..{hi}")
        total += shard["rows"]
        next_label = hi
    if total != manifest["rows"] or next_label != len(manifest["labels"]):
        raise ShardError(f"{path}: shards hold {total} rows of {next_label} classes; the manifest says {manifest['rows']} of {len(manifest['labels'])}")
    return shards
