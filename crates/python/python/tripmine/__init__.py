"""tripmine: global triplet mining, retrieval metrics and corpus audit for triplet-loss
embedding models, on a Rust core (no torch needed).

    import numpy as np, tripmine
    x = np.load("embeddings.npy"); labels = np.load("labels.npy")
    t = tripmine.mine(x, labels, strategy="semihard", negatives_per_anchor=5)
    print(t.anchor[:5], t.negative[:5], t.stats["per_kind"])
    print(tripmine.evaluate(x, labels)["map_at_r"])

Definitions (as the `tripmine` command's README): rows are L2-normalised (pass
``normalise=True`` otherwise); d is Euclidean on them by default; for an anchor a, positive p
and negative n, t = d(a,n) - d(a,p); hard: t <= 0, semi-hard: 0 < t <= margin, easy: t > margin.
Arrays are read without a copy when they are C-contiguous float32 with unit rows; other
layouts and float dtypes are converted (a Fortran-order array is copied into row order, never
read as rows). Bad input raises ``ValueError`` naming the problem.

PyTorch: ``tripmine.pml`` (a miner, a memory wrapper and an AccuracyCalculator with
pytorch-metric-learning's conventions) and ``tripmine.torch`` (a neighbour-batch sampler for
``DataLoader``); both import torch, this module never does.

Past one process: ``tripmine.write_shards`` writes a corpus as a shard directory and
``tripmine.ray.mine`` mines it on a Ray cluster with ``mine``'s rules and output.
"""

import json

import numpy as np

from . import _tripmine
from .shards import read_shards, write_shards

__all__ = ["mine", "knn", "evaluate", "audit", "MiningResult", "write_shards", "read_shards", "__version__"]
__version__ = _tripmine.__version__


def _rows(name, x):
    """A C-contiguous float32 2-D view of ``x`` (copied only when it is not one already)."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows x dims), not {a.ndim}-D with shape {a.shape}")
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold numbers, not dtype {a.dtype}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    # C order, float32, aligned: what the extension reads in place (a copy only when needed).
    return np.require(a, dtype=np.float32, requirements=["C", "A"])


def _count(name, value, minimum=0):
    """A Python int >= minimum (ValueError naming the argument otherwise, never OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    if value >= 2**63:
        raise ValueError(f"{name} {value} is too large")
    return value


def _indices(name, rows, n):
    """Row indices from integers or a boolean mask of n rows."""
    a = np.asarray(rows)
    if a.size == 0 and a.dtype != bool:
        # np.asarray([]) is float64: an empty list names no rows, whatever its dtype.
        return np.zeros(0, dtype=np.int64)
    if a.dtype == bool:
        if a.shape != (n,):
            raise ValueError(f"{name} as a boolean mask must have one entry per row ({n}), not shape {a.shape}")
        return np.flatnonzero(a).astype(np.int64)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be row indices (integers) or a boolean mask, not dtype {a.dtype}")
    a = np.ascontiguousarray(a.reshape(-1), dtype=np.int64)
    bad = a[(a < 0) | (a >= n)]
    if len(bad):
        raise ValueError(f"{name} names row {int(bad[0])}, not in 0..{n}")
    return a


def _codes(labels, n):
    """Label codes 0..C-1 for any 1-D labels (ints, strings, ...) and the unique labels."""
    a = np.asarray(labels)
    if a.ndim != 1:
        raise ValueError(f"labels must be 1-D, not shape {a.shape}")
    if len(a) != n:
        raise ValueError(f"labels has {len(a)} entries but embeddings has {n} rows; label i must belong to row i")
    names, codes = np.unique(a, return_inverse=True)
    return names.tolist(), np.ascontiguousarray(codes.reshape(-1), dtype=np.int64)


class MiningResult:
    """Mined triplets as columns (row indices into the embeddings) and the mining statistics.

    ``anchor``, ``positive``, ``negative``: int64; ``d_ap``, ``d_an``: float32 distances;
    ``kind``: "hard", "semihard" or "easy"; ``stats``: the counts per kind, anchors skipped by
    reason, the neighbour backend and why it was chosen (as the CLI's sidecar records them).
    """

    def __init__(self, columns):
        self.anchor = columns["anchor"]
        self.positive = columns["positive"]
        self.negative = columns["negative"]
        self.d_ap = columns["d_ap"]
        self.d_an = columns["d_an"]
        self.kind = np.asarray(columns["kind"], dtype=str)
        self.stats = json.loads(columns["stats"])

    def __len__(self):
        return len(self.anchor)

    def __repr__(self):
        return f"MiningResult({len(self)} triplets, per kind {self.stats['per_kind']})"

    def to_pandas(self):
        """The triplets as a DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(
            {
                "anchor": self.anchor,
                "positive": self.positive,
                "negative": self.negative,
                "d_ap": self.d_ap,
                "d_an": self.d_an,
                "kind": self.kind,
            }
        )


def mine(
    embeddings,
    labels,
    *,
    strategy="semihard",
    negatives_per_anchor=1,
    positives="hardest",
    margin=0.2,
    distance="euclidean",
    knn="auto",
    exclude=None,
    anchors=None,
    seed=0,
    skip_nearest=0,
    negative_floor=0.0,
    candidate_classes=500,
    max_search_depth=4096,
    normalise=False,
):
    """Triplets over the whole corpus, as ``tripmine mine`` mines them.

    strategy: "hard", "semihard", "easy", "violating" (t <= margin: pytorch-metric-learning's
    "all"), "any", or a mix such as "semihard=0.7,hard=0.3". negatives_per_anchor: per anchor
    and positive, nearest first, split among a mix's kinds by weight; None takes every negative
    of every requested kind. positives: "hardest" (the farthest
    same-label row), "random" or "all". knn: "auto", "exact", "classes" or "hnsw". exclude:
    row indices never used (e.g. an audit's exclusions). anchors: mine only these rows as
    anchors (their positives and negatives still come from the whole corpus). skip_nearest, negative_floor: the
    false-negative guard (never the R nearest other-label rows; no negative closer than
    F * d(a,p)).
    """
    x = _rows("embeddings", embeddings)
    _, codes = _codes(labels, x.shape[0])
    if exclude is not None:
        exclude = _indices("exclude", exclude, x.shape[0])
    if anchors is not None:
        anchors = _indices("anchors", anchors, x.shape[0])
    if negatives_per_anchor is not None:
        negatives_per_anchor = _count("negatives_per_anchor (or None for every negative)", negatives_per_anchor, 1)
    columns = _tripmine.mine(
        x,
        codes,
        strategy=str(strategy),
        negatives_per_anchor=negatives_per_anchor,
        positives=str(positives),
        margin=float(margin),
        distance=str(distance),
        knn=str(knn),
        exclude=exclude,
        anchors=anchors,
        seed=_count("seed", seed),
        skip_nearest=_count("skip_nearest", skip_nearest),
        negative_floor=float(negative_floor),
        candidate_classes=_count("candidate_classes", candidate_classes, 1),
        max_search_depth=_count("max_search_depth", max_search_depth, 1),
        normalise=bool(normalise),
    )
    return MiningResult(columns)


def knn(x, k, *, reference=None, labels=None, restrict="any", distance="euclidean", normalise=False):
    """Exact k nearest neighbours: ``(D, I)``, each n x k, nearest first.

    Without ``reference``, every row of ``x`` among the other rows of ``x`` (the row itself is
    never its own neighbour; restrict: "any", "other-label" or "same-label", with labels).
    With ``reference``, every row of ``x`` among the rows of ``reference``, as faiss's
    ``index.search(x, k)`` over an index of ``reference``. D is in ``distance``: Euclidean by
    default; ``distance="sqeuclidean"`` gives the squared L2 that faiss's ``IndexFlatL2``
    returns. Rows with fewer than k allowed neighbours are padded with inf and -1.
    """
    a = _rows("x", x)
    k = _count("k", k, 1)
    ref = None if reference is None else _rows("reference", reference)
    codes = None if labels is None else _codes(labels, a.shape[0])[1]
    d, i = _tripmine.knn_search(a, k, codes, reference=ref, restrict=str(restrict), distance=str(distance),
                                normalise=bool(normalise))
    return d.reshape(a.shape[0], k), i.reshape(a.shape[0], k)


def evaluate(embeddings, labels, *, normalise=False):
    """Retrieval metrics of the corpus against itself with exact neighbours, the object
    ``tripmine eval --json`` prints: p_at_1, r_precision, map_at_r, recall_at_k (keys "1", "2",
    "4", "8": a neighbour among the first k shares the label), queries, and skipped_queries
    (queries whose label has no other row). pytorch-metric-learning's call and keys, with
    separate queries and reference: ``tripmine.pml.AccuracyCalculator``."""
    x = _rows("embeddings", embeddings)
    _, codes = _codes(labels, x.shape[0])
    return json.loads(_tripmine.evaluate(x, codes, normalise=bool(normalise)))


def audit(
    embeddings,
    labels,
    *,
    paths=None,
    splits=None,
    k=10,
    near_duplicate_fraction=0.25,
    mislabel_probability=0.5,
    min_model_p_at_1=0.7,
    outlier_z=5.0,
    normalise=False,
):
    """The audit's findings from embeddings alone, as lists of records (dicts) with the row
    ``index`` (and ``path`` when paths are given): duplicates (near-identical rows, with
    ``conflict`` when their labels differ), conflicts, leaks (duplicates across splits),
    likely_mislabels (with the suggested label and P(wrong label)), outliers, exclude (the rows
    ``tripmine mine --exclude`` would drop, with the reason), and model_quality."""
    x = _rows("embeddings", embeddings)
    n = x.shape[0]
    names, codes = _codes(labels, n)
    k = _count("k", k, 1)
    if splits is None:
        splits = [""] * n
    splits = [str(s) for s in splits]
    if paths is not None:
        paths = [str(p) for p in paths]
        if len(paths) != n:
            raise ValueError(f"paths has {len(paths)} entries but embeddings has {n} rows")
    found = json.loads(
        _tripmine.audit_findings(
            x,
            codes,
            splits,
            k=k,
            near_duplicate_fraction=float(near_duplicate_fraction),
            mislabel_probability=float(mislabel_probability),
            min_model_p_at_1=float(min_model_p_at_1),
            outlier_z=float(outlier_z),
            normalise=bool(normalise),
        )
    )

    def named(record):
        i = record["index"]
        out = dict(record)
        out["label"] = names[codes[i]]
        if paths is not None:
            out["path"] = paths[i]
        if splits[i]:
            out["split"] = splits[i]
        if "suggested" in out:
            out["suggested_label"] = names[out.pop("suggested")]
        return out

    duplicates = [named(r) for r in found["duplicates"]]
    return {
        "duplicates": duplicates,
        "conflicts": [r for r in duplicates if r["conflict"]],
        "leaks": [r for r in duplicates if r["leak"]],
        "likely_mislabels": [named(r) for r in found["likely_mislabels"]],
        "outliers": [named(r) for r in found["outliers"]],
        "exclude": [named(r) for r in found["excluded"]],
        "model_quality": found["model_quality"],
    }
