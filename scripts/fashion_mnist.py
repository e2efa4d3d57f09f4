#!/usr/bin/env python3
"""Convert Debian's dataset-fashion-mnist (IDX files) into a tripmine corpus.

Usage: scripts/fashion_mnist.py OUT_DIR [--per-class N]

Installs the Debian package with apt-get when it is missing, then writes
OUT_DIR/images/<label>/<split>_<index>.pgm (28x28 grey, PNM, which tripmine decodes) and
OUT_DIR/manifest.csv with columns path,label,split (split: train or test). --per-class N keeps
the first N training and N/5 test images of each class, for quicker runs.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=None)
    args = parser.parse_args()
    ensure_installed()
    rows_out = []
    for split, prefix in [("train", "train"), ("test", "t10k")]:
        images, (h, w) = read_idx(f"{prefix}-images-idx3-ubyte.gz")
        labels, _ = read_idx(f"{prefix}-labels-idx1-ubyte.gz")
        kept = {}
        limit = None if args.per_class is None else (args.per_class if split == "train" else args.per_class // 5)
        for i, (pixels, label) in enumerate(zip(images, labels)):
            if limit is not None and kept.get(label, 0) >= limit:
                continue
            kept[label] = kept.get(label, 0) + 1
            rel = f"images/{LABELS[label]}/{split}_{i:05d}.pgm"
            path = os.path.join(args.out, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(b"P5\n%d %d\n255\n" % (w, h) + pixels)
            rows_out.append((rel, LABELS[label], split))
    tmp = os.path.join(args.out, ".manifest.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows_out)
    os.replace(tmp, os.path.join(args.out, "manifest.csv"))
    print(f"wrote {len(rows_out)} images and {os.path.join(args.out, 'manifest.csv')}")


if __name__ == "__main__":
    main()
