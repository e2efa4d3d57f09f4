#!/usr/bin/env python3
"""`make bench-train`: global mining vs batch-hard on Fashion-MNIST, same epochs and settings.

Usage: scripts/bench_train.py BIN DATA_DIR OUT_DIR [EPOCHS] [MODES]
MODES is a comma-separated subset of global,batch-hard (default: both).
Trains on the manifest's train split and validates on its test split (unseen samples of the
same 10 classes), then prints one table row per mining regime.
"""
import csv
import os
import subprocess
import sys
import time


def main():
    binary, data, out = sys.argv[1:4]
    epochs = sys.argv[4] if len(sys.argv) > 4 else "5"
    manifest = os.path.join(data, "manifest.csv")
    with open(manifest) as f:
        train_images = sum(1 for row in csv.DictReader(f) if row["split"] == "train")
    modes = sys.argv[5].split(",") if len(sys.argv) > 5 else ["global", "batch-hard"]
    rows = []
    for mining in modes:
        run = os.path.join(out, mining)
        subprocess.run(["rm", "-rf", run], check=True)
        cmd = [binary, "train", "--corpus", manifest, "--out", run, "--mining", mining, "--epochs", epochs,
               "--input-size", "28", "--channels", "1", "--dim", "64", "--seed", "1", "--threads", "2",
               "--batch-size", "64", "--classes-per-batch", "16", "--samples-per-class", "4", "--no-augment"]
        start = time.time()
        subprocess.run(cmd, check=True)
        wall = time.time() - start
        with open(os.path.join(run, "metrics.csv")) as f:
            metrics = list(csv.DictReader(f))
        first, last = metrics[0], metrics[-1]
        rows.append((mining, float(first["map_at_r"]), float(last["map_at_r"]), float(last["p_at_1"]),
                     train_images * int(epochs) / wall, wall))
    print(f"Fashion-MNIST subset: {train_images} training images, {epochs} epochs, 64-d, 28x28 grey, CPU, 2 threads")
    print("| mining | MAP@R untrained | MAP@R | P@1 | train images/s | wall s |")
    print("|---|---|---|---|---|---|")
    for mining, before, after, p1, rate, wall in rows:
        print(f"| {mining} | {before:.4f} | {after:.4f} | {p1:.4f} | {rate:.0f} | {wall:.0f} |")
    if len(rows) == 2:
        print(f"global / batch-hard MAP@R: {rows[0][2] / rows[1][2]:.3f}x")


if __name__ == "__main__":
    main()
