#!/usr/bin/env python3
"""Build a held-out Fashion-MNIST corpus with planted defects, for benchmarking `tripmine audit`.

Usage: .venv-bench/bin/python scripts/make_audit_corpus.py OUT_DIR [--per-class 200] [--seed 1]

(numpy and Pillow are needed: the bench venv, `make bench-venv`, has both.)

Takes --per-class images of each of the 10 classes from the END of Fashion-MNIST's training file
(Debian's dataset-fashion-mnist, read through scripts/fashion_mnist.py), so the corpus is held
out from the subsets that fashion_mnist.py --per-class N writes (those take each class's first N).
Per class, in file order, the first 80% are `train`, the next 10% `val`, the rest `test`.
Then it plants, deterministically given --seed:
  - 20 relabelled images: a corpus image listed under another (random) class;
  - 15 conflicts: a byte-identical copy of a corpus image, listed under another class, same split;
  - 15 leaks: a byte-identical copy of a `train` image, same class, listed in `test` or `val`;
  - 15 off-distribution images, each under a random class and split: 5 uniform noise, 5 stripe
    patterns (random orientation, period and phase), 5 fixture shapes (fixtures/corpus, grey,
    resized to 28x28).
Every planted defect uses its own corpus image, and every file's pixels are unique except for the
planted copies. Files are named images/NNNNN.pgm (28x28 grey PGM) in a seeded random order, so
neither names nor manifest order give a defect away.

Writes OUT_DIR/planted.json and, last, OUT_DIR/manifest.csv (path,label,split; paths relative to
OUT_DIR). planted.json:
{"relabelled": [path, ...], "conflict": [{"copy": path, "original": path}, ...],
 "leak": [{"copy": path, "original": path}, ...],
 "off_distribution": [{"path": path, "sort": "noise" | "stripes" | "shapes"}, ...]}
"""
import argparse
import csv
import json
import os
import sys

import numpy as np
from PIL import Image

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, SCRIPTS)
import fashion_mnist as fm  # noqa: E402

SHAPES_DIR = os.path.join(os.path.dirname(SCRIPTS), "fixtures", "corpus")
SIZE = 28
SPLITS = ["train", "val", "test"]
SPLIT_SHARES = [0.8, 0.1, 0.1]
RELABELLED, CONFLICTS, LEAKS = 20, 15, 15
OFF_DISTRIBUTION = {"noise": 5, "stripes": 5, "shapes": 5}


def held_out(per_class):
    """The last `per_class` training images of each class, as sample dicts with splits, in file order."""
    fm.ensure_installed()
    images, (h, w) = fm.read_idx("train-images-idx3-ubyte.gz")
    labels, _ = fm.read_idx("train-labels-idx1-ubyte.gz")
    assert (h, w) == (SIZE, SIZE), (h, w)
    chosen = {label: [] for label in range(len(fm.LABELS))}
    for i in reversed(range(len(images))):
        if len(chosen[labels[i]]) < per_class:
            chosen[labels[i]].append(i)
    samples = []
    for label, indices in chosen.items():
        n_val = n_test = round(len(indices) * SPLIT_SHARES[1])
        n_train = len(indices) - n_val - n_test
        for rank, i in enumerate(sorted(indices)):
            split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            samples.append({"pixels": images[i], "label": fm.LABELS[label], "split": split})
    return samples


def other_label(rng, label):
    return str(rng.choice([name for name in fm.LABELS if name != label]))


def noise(rng):
    return rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8).tobytes()


def stripes(rng):
    """A sinusoidal grating with random orientation, period (3-10 px) and phase."""
    angle, period, phase = rng.uniform(0, np.pi), rng.uniform(3, 10), rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
    return np.round(127.5 + 127.5 * wave).astype(np.uint8).tobytes()


def shapes(rng, count):
    """`count` fixture shapes from distinct fixture classes, grey and resized to 28x28."""
    classes = rng.choice(sorted(os.listdir(SHAPES_DIR)), size=count, replace=False)
    out = []
    for name in classes:
        folder = os.path.join(SHAPES_DIR, name)
        file = rng.choice(sorted(f for f in os.listdir(folder) if f.endswith(".png")))
        with Image.open(os.path.join(folder, file)) as image:
            out.append(image.convert("L").resize((SIZE, SIZE), Image.LANCZOS).tobytes())
    return out


def off_distribution(rng):
    """Off-distribution samples, each under a random class and a random split."""
    pixels = [("noise", noise(rng)) for _ in range(OFF_DISTRIBUTION["noise"])]
    pixels += [("stripes", stripes(rng)) for _ in range(OFF_DISTRIBUTION["stripes"])]
    pixels += [("shapes", p) for p in shapes(rng, OFF_DISTRIBUTION["shapes"])]
    return [{"pixels": p, "label": str(rng.choice(fm.LABELS)), "split": str(rng.choice(SPLITS, p=SPLIT_SHARES)),
             "sort": sort} for sort, p in pixels]


def plant(samples, rng):
    """Plants the defects among `samples` (relabels in place); returns (new samples, planted records)."""
    order = rng.permutation(len(samples))
    relabelled = [samples[i] for i in order[:RELABELLED]]
    conflict_originals = [samples[i] for i in order[RELABELLED:RELABELLED + CONFLICTS]]
    leak_originals = [samples[i] for i in order[RELABELLED + CONFLICTS:] if samples[i]["split"] == "train"][:LEAKS]
    if len(leak_originals) < LEAKS:
        sys.exit("--per-class is too small to plant every defect")
    for sample in relabelled:
        sample["label"] = other_label(rng, sample["label"])
    conflicts = [(dict(s, label=other_label(rng, s["label"])), s) for s in conflict_originals]
    leaks = [(dict(s, split=str(rng.choice(["test", "val"]))), s) for s in leak_originals]
    odd = off_distribution(rng)
    added = [copy for copy, _ in conflicts + leaks] + odd
    return added, {"relabelled": relabelled, "conflict": conflicts, "leak": leaks, "off_distribution": odd}


def check_unique(samples, copies):
    """Every file's pixels are unique, except that each planted copy equals its original."""
    distinct = len({s["pixels"] for s in samples})
    if distinct != len(samples) - copies:
        sys.exit(f"planting went wrong: {len(samples) - copies - distinct} accidental duplicate(s)")


def write_images(out_dir, samples, rng):
    """Names the samples images/NNNNN.pgm in a random order and writes them; returns them in that order."""
    samples = [samples[i] for i in rng.permutation(len(samples))]
    for serial, sample in enumerate(samples):
        sample["path"] = f"images/{serial:05d}.pgm"
        fm.write_pgm(os.path.join(out_dir, sample["path"]), sample["pixels"], SIZE, SIZE)
    return samples


def write_atomic(path, fill):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        fill(f)
    os.replace(tmp, path)


def pairs(copies):
    return [{"copy": copy["path"], "original": original["path"]} for copy, original in copies]


def planted_json(planted):
    return {
        "relabelled": [s["path"] for s in planted["relabelled"]],
        "conflict": pairs(planted["conflict"]),
        "leak": pairs(planted["leak"]),
        "off_distribution": [{"path": s["path"], "sort": s["sort"]} for s in planted["off_distribution"]],
    }


def make_corpus(out_dir, per_class=200, seed=1):
    """Writes the corpus into out_dir; returns the planted.json object."""
    rng = np.random.default_rng(seed)
    base = held_out(per_class)
    added, planted = plant(base, rng)
    samples = base + added
    check_unique(samples, CONFLICTS + LEAKS)
    os.makedirs(out_dir, exist_ok=True)
    samples = write_images(out_dir, samples, rng)
    result = planted_json(planted)
    write_atomic(os.path.join(out_dir, "planted.json"), lambda f: json.dump(result, f, indent=1))
    rows = [("path", "label", "split")] + [(s["path"], s["label"], s["split"]) for s in samples]
    write_atomic(os.path.join(out_dir, "manifest.csv"), lambda f: csv.writer(f).writerows(rows))
    counts = {split: sum(s["split"] == split for s in samples) for split in SPLITS}
    print(f"wrote {len(samples)} images ({', '.join(f'{n} {s}' for s, n in counts.items())}) with "
          f"{RELABELLED} relabelled, {CONFLICTS} conflicts, {LEAKS} leaks, {len(planted['off_distribution'])} "
          f"off-distribution into {out_dir}", file=sys.stderr)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    make_corpus(args.out, args.per_class, args.seed)


if __name__ == "__main__":
    main()
