#!/usr/bin/env python3
"""Frozen features of a corpus through a TorchScript trunk, for `make bench-regime` (bench venv).

Usage: scripts/extract_features.py --manifest manifest.csv --trunk trunk.pt --out DIR
           [--input-size 64] [--threads 2] [--batch 256]

Every image of the manifest (all splits), resized to --input-size (bilinear; the corpora are
square), scaled to [0, 1] and normalised with ImageNet's mean and std, as `tripmine train
--preprocess imagenet` does, through the trunk in evaluation mode. Writes DIR/embeddings.npy
(float32 N x F) and DIR/samples.csv (path,label,split), the layout `tripmine train
--embeddings DIR` reads, renamed into place last.
"""
import argparse
import csv
import os

import numpy as np
import torch
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--trunk", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = os.path.dirname(os.path.abspath(args.manifest))
    with open(args.manifest, newline="") as f:
        rows = [(r["path"], r["label"], r.get("split", "")) for r in csv.DictReader(f)]
    trunk = torch.jit.load(args.trunk).eval()
    chunks = []
    with torch.no_grad():
        for at in range(0, len(rows), args.batch):
            pixels = []
            for path, _, _ in rows[at:at + args.batch]:
                img = Image.open(os.path.join(root, path)).convert("RGB")
                img = img.resize((args.input_size, args.input_size), Image.BILINEAR)
                pixels.append((np.asarray(img, np.float32) / 255.0 - MEAN) / STD)
            x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
            chunks.append(trunk(x).flatten(1).float().numpy())
    os.makedirs(args.out, exist_ok=True)
    tmp = os.path.join(args.out, ".embeddings.npy.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.concatenate(chunks))
    with open(os.path.join(args.out, "samples.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    os.replace(tmp, os.path.join(args.out, "embeddings.npy"))
    print(f"{len(rows)} x {chunks[0].shape[1]} features in {args.out}")


if __name__ == "__main__":
    main()
