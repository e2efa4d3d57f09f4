#!/usr/bin/env python3
"""Generate a corpus shaped like Stanford Online Products (numpy only, no download).

Usage: scripts/make_sop.py OUT_DIR [--train-classes 5000] [--val-classes 400]
                           [--test-classes 1000] [--size 32] [--seed 0]
       scripts/make_sop.py OUT_DIR --rows [--train-classes 200000] [--dim 128] ...

Images (the default): thousands of classes of 5 or 6 images each, as SOP has (11,318 training
classes of about 5). Classes come in families of 2-8, like products of one model line or
characters sharing a radical: a family shares its base glyph (1-2 primitives of
make_manyclass.py, with their colours and the family's orientation) and every class adds 1-2
details of its own and may recolour one base part. A class is most confusable with its
family-mates, which a random P x K batch almost never holds together. Whole families go to one
split: `train`, `val` (unseen classes for model selection) and `test` (unseen classes, for the
benchmark's figures only). Writes OUT_DIR/images/<class>/<n>.png and, last, OUT_DIR/manifest.csv
(path,label,split).

--rows writes feature rows instead, for head training at scale: OUT_DIR/embeddings.npy (float32
N x dim) and OUT_DIR/samples.csv (path,label,split), 5 rows per class. Each row mixes, by one
random rotation, an identity part (family centre + class offset + sample noise, the same family
structure) with a nuisance part twice as wide, so that raw rows retrieve poorly and a linear head
has something to learn.

The output depends only on the options (every class and image has its own generator).
"""
import argparse
import csv
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_manyclass import HUES, hsv_to_rgb, random_primitive, render, write_png  # noqa: E402

KINDS = ["polygon", "stroke", "ring", "ellipse", "bar"]


def colour(rng):
    hue = HUES[int(rng.integers(len(HUES)))] + rng.uniform(-0.02, 0.02)
    return hsv_to_rgb(hue % 1.0, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))


def family_base(seed, family):
    rng = np.random.default_rng([seed, family, 0xBA5E])
    prims = []
    for i in range(int(rng.integers(1, 3))):
        prim = random_primitive(rng, KINDS[int(rng.integers(len(KINDS)))], big=(i == 0))
        prim["colour"] = colour(rng)
        prims.append(prim)
    return {"prims": prims, "angle": rng.uniform(-np.pi, np.pi), "mirror": bool(rng.integers(2))}


def class_style(seed, base, cls):
    rng = np.random.default_rng([seed, cls, 0xC1A55])
    prims = [dict(p) for p in base["prims"]]
    if rng.uniform() < 0.4:
        prims[int(rng.integers(len(prims)))]["colour"] = colour(rng)
    for _ in range(int(rng.integers(1, 3))):
        prim = random_primitive(rng, KINDS[int(rng.integers(len(KINDS)))], big=False)
        prim["colour"] = colour(rng)
        prims.append(prim)
    return {"prims": prims, "angle": base["angle"], "mirror": base["mirror"]}


def split_plan(seed, args):
    """Family sizes (2-8) and the split of each: whole families per split, drawn in proportion
    to the classes each split still needs, until every split has at least its count."""
    rng = np.random.default_rng([seed, 0x5B117])
    want = {"train": args.train_classes, "val": args.val_classes, "test": args.test_classes}
    have = dict.fromkeys(want, 0)
    sizes, plan = [], []
    while any(have[s] < want[s] for s in want):
        need = np.array([max(want[s] - have[s], 0) for s in want], float)
        split = list(want)[int(rng.choice(3, p=need / need.sum()))]
        size = int(rng.integers(2, 9))
        sizes.append(size)
        plan.append(split)
        have[split] += size
    return sizes, plan


def write_manifest(path, header, rows):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def images(args):
    sizes, plan = split_plan(args.seed, args)
    total = sum(sizes)
    width = len(str(total - 1))
    rows, cls = [], 0
    for family, (size, split) in enumerate(zip(sizes, plan)):
        base = family_base(args.seed, family)
        for _ in range(size):
            label = f"p{cls:0{width}d}"
            style = class_style(args.seed, base, cls)
            count = 5 + int(np.random.default_rng([args.seed, cls, 0xC0]).integers(2))
            folder = os.path.join(args.out, "images", label)
            os.makedirs(folder, exist_ok=True)
            for item in range(count):
                rel = f"images/{label}/{item}.png"
                write_png(os.path.join(args.out, rel), render(style, args.seed, cls, item, args.size))
                rows.append((rel, label, split))
            cls += 1
            if sys.stderr.isatty() and cls % 200 == 0:
                print(f"\r{cls}/{total} classes", end="", file=sys.stderr)
    write_manifest(os.path.join(args.out, "manifest.csv"), ["path", "label", "split"], rows)
    return rows


def feature_rows(args):
    sizes, plan = split_plan(args.seed, args)
    total = sum(sizes)
    per_class, identity = 5, args.dim // 3
    nuisance = args.dim - identity
    rotation, _ = np.linalg.qr(np.random.default_rng([args.seed, 0x207]).normal(size=(args.dim, args.dim)))
    rotation = rotation.astype(np.float32)
    n = total * per_class
    out = np.lib.format.open_memmap(os.path.join(args.out, ".embeddings.npy.tmp"), mode="w+",
                                    dtype=np.float32, shape=(n, args.dim))
    width = len(str(total - 1))
    rows, cls, at = [], 0, 0
    for family, (size, split) in enumerate(zip(sizes, plan)):
        rng = np.random.default_rng([args.seed, family, 0xFEA7])
        centre = rng.normal(size=identity)
        offsets = centre + 0.6 * rng.normal(size=(size, identity))
        z = np.repeat(offsets, per_class, axis=0) + 0.45 * rng.normal(size=(size * per_class, identity))
        u = 2.0 * rng.normal(size=(size * per_class, nuisance))
        out[at:at + len(z)] = np.concatenate([z, u], axis=1).astype(np.float32) @ rotation
        for c in range(size):
            label = f"p{cls + c:0{width}d}"
            rows.extend((f"{label}/{i}", label, split) for i in range(per_class))
        at += len(z)
        cls += size
    out.flush()
    del out
    write_manifest(os.path.join(args.out, "samples.csv"), ["path", "label", "split"], rows)
    os.replace(os.path.join(args.out, ".embeddings.npy.tmp"), os.path.join(args.out, "embeddings.npy"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--train-classes", type=int, default=None)
    parser.add_argument("--val-classes", type=int, default=400)
    parser.add_argument("--test-classes", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", action="store_true", help="feature rows instead of images")
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    if args.train_classes is None:
        args.train_classes = 200_000 if args.rows else 5000
    if min(args.train_classes, args.val_classes, args.test_classes) < 8 or args.size < 8 or args.dim < 6:
        sys.exit("need at least 8 classes in every split, --size >= 8 and --dim >= 6")
    start = time.time()
    os.makedirs(args.out, exist_ok=True)
    rows = feature_rows(args) if args.rows else images(args)
    counts = {s: sum(1 for r in rows if r[2] == s) for s in ("train", "val", "test")}
    classes = {s: len({r[1] for r in rows if r[2] == s}) for s in ("train", "val", "test")}
    kind = "rows" if args.rows else "images"
    print(f"wrote {len(rows)} {kind}: " + ", ".join(f"{counts[s]} {s} of {classes[s]} classes" for s in counts)
          + f" to {args.out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
