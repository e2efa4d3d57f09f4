#!/usr/bin/env python3
"""Convert Debian's dataset-fashion-mnist (IDX files) into a tripmine corpus.

Usage: scripts/fashion_mnist.py OUT_DIR [--per-class N]

Installs the Debian package with apt-get when it is missing, then writes
OUT_DIR/images/<label>/<split>_<index>.pgm (28x28 grey, PNM, which tripmine decodes; <index> is
the image's position in its IDX file) and OUT_DIR/manifest.csv with columns path,label,split.
Splits: of the N training images kept per class, the last N/10 (in file order) are `val` and
the others `train`, so validation never sees a training image; `test` is Fashion-MNIST's own
test set (N/5 per class). --per-class N keeps the first N training images of each class
(default: all 6,000, of which 600 are `val`), for quicker runs. tripmine's trainer validates
on `val`; `test` is for the final evaluation only.
"""
import argparse
import csv
import gzip
import os
import struct
import subprocess
import sys

SOURCE = "/usr/share/datasets/fashion-mnist"
LABELS = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def ensure_installed():
    if os.path.isdir(SOURCE):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=True, env=env)


def read_idx(name):
    with gzip.open(os.path.join(SOURCE, name), "rb") as f:
        data = f.read()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        size = rows * cols
        return [data[16 + i * size:16 + (i + 1) * size] for i in range(count)], (rows, cols)
    if magic == 2049:
        return list(data[8:8 + count]), None
    sys.exit(f"{name}: not an IDX file (magic {magic})")


def write_pgm(path, pixels, width, height):
    """Writes 8-bit grey pixels (bytes, row-major) as a binary PGM, creating its folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"P5\n%d %d\n255\n" % (width, height) + pixels)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=None)
    args = parser.parse_args()
    ensure_installed()
    rows_out = []
    for source, prefix in [("train", "train"), ("test", "t10k")]:
        images, (h, w) = read_idx(f"{prefix}-images-idx3-ubyte.gz")
        labels, _ = read_idx(f"{prefix}-labels-idx1-ubyte.gz")
        per_class = {}
        for label in labels:
            per_class[label] = per_class.get(label, 0) + 1
        kept = {}
        for i, (pixels, label) in enumerate(zip(images, labels)):
            available = per_class[label]
            if args.per_class is not None:
                available = min(available, args.per_class if source == "train" else args.per_class // 5)
            rank = kept.get(label, 0)
            if rank >= available:
                continue
            kept[label] = rank + 1
            split = source
            if source == "train" and rank >= available - available // 10:
                split = "val"
            rel = f"images/{LABELS[label]}/{split}_{i:05d}.pgm"
            write_pgm(os.path.join(args.out, rel), pixels, w, h)
            rows_out.append((rel, LABELS[label], split))
    tmp = os.path.join(args.out, ".manifest.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows_out)
    os.replace(tmp, os.path.join(args.out, "manifest.csv"))
    counts = {s: sum(1 for r in rows_out if r[2] == s) for s in ("train", "val", "test")}
    print(f"wrote {len(rows_out)} images ({counts['train']} train, {counts['val']} val, {counts['test']} test) "
          f"and {os.path.join(args.out, 'manifest.csv')}")


if __name__ == "__main__":
    main()
