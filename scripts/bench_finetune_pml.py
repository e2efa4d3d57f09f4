#!/usr/bin/env python3
"""Fine-tune a TorchScript trunk with pytorch-metric-learning: the PyTorch contender.

Usage: scripts/bench_finetune_pml.py --manifest manifest.csv --backbone trunk.pt
           [--input-size 64] [--dim 128] [--epochs 5] [--classes-per-batch 8]
           [--samples-per-class 4] [--lr 1e-3] [--backbone-lr-scale 0.1] [--margin 0.2]
           [--seed 0] [--threads 2] [--freeze-backbone]

Runs in the bench venv (`make bench-venv`). The trunk is any TorchScript module mapping
N x 3 x S x S (ImageNet-normalised RGB) to N x F, e.g. from scripts/export_backbone.py. The
model is trunk -> linear F -> dim -> BatchNorm1d(dim, affine=False) -> L2 normalisation.
A traced trunk keeps BatchNorm in the mode it was traced in (frozen, for an eval-mode trace)
whatever train() says; a scripted one follows train()/eval().

Images come from a CSV manifest `path,label,split` (paths relative to the manifest's folder):
RGB, shorter side resized to S (bilinear), centre-cropped to S x S, scaled to [0, 1] and
normalised with ImageNet mean/std, decoded once before training. Trains on split == train with
TripletMarginLoss(margin) over TripletMarginMiner(margin, "semihard") triplets, batches from
MPerClassSampler(m=K, batch_size=P*K, one pass over the training set per epoch; P is capped at
the number of training classes), Adam (head lr, trunk lr * backbone-lr-scale) with a cosine
schedule to 0 set every step, no augmentation. --freeze-backbone runs the trunk in eval mode
under no_grad and trains the head only. Then embeds split == test and scores it with pml's
AccuracyCalculator (each query against the other test images, itself excluded).

Prints one JSON line: map_at_r, p_at_1, train_images, test_queries, train_s (from the start of
decoding the training images to the end of the last epoch), wall_s (the whole run after the
imports), train_images_per_s (train_images x epochs / train_s), epochs.
"""
import argparse
import csv
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from pytorch_metric_learning import losses, miners, samplers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_image(path, size):
    """3 x S x S float32: shorter side to S, centre crop, ImageNet mean/std."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
        arr = np.asarray(img, dtype=np.float32) / 255.0
    return ((arr - MEAN) / STD).transpose(2, 0, 1)


def load_split(manifest, split, size):
    root = os.path.dirname(os.path.abspath(manifest))
    with open(manifest, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    names = sorted({r["label"] for r in rows})
    index = {name: i for i, name in enumerate(names)}
    images = np.stack([load_image(os.path.join(root, r["path"]), size) for r in rows])
    labels = np.array([index[r["label"]] for r in rows], dtype=np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--backbone", required=True, help="TorchScript trunk (.pt)")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--classes-per-batch", type=int, default=8)
    ap.add_argument("--samples-per-class", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--backbone-lr-scale", type=float, default=0.1)
    ap.add_argument("--margin", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--freeze-backbone", action="store_true")
    args = ap.parse_args()

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    trunk = torch.jit.load(args.backbone, map_location="cpu")
    with torch.no_grad():
        features = trunk.eval()(torch.zeros(2, 3, args.input_size, args.input_size)).shape[1]
    head = nn.Sequential(nn.Linear(features, args.dim), nn.BatchNorm1d(args.dim, affine=False))
    groups = [{"params": head.parameters(), "lr": args.lr}]
    if not args.freeze_backbone:
        groups.append({"params": trunk.parameters(), "lr": args.lr * args.backbone_lr_scale})
    optimizer = torch.optim.Adam(groups)

    def embed(x):
        if args.freeze_backbone:
            with torch.no_grad():
                f = trunk(x)
        else:
            f = trunk(x)
        return F.normalize(head(f), dim=1)

    train_start = time.perf_counter()
    images, labels = load_split(args.manifest, "train", args.input_size)
    k = args.samples_per_class
    p = min(args.classes_per_batch, len(torch.unique(labels)))
    batch = p * k
    sampler = samplers.MPerClassSampler(labels, m=k, batch_size=batch,
                                        length_before_new_iter=len(labels))
    steps_per_epoch = len(sampler) // batch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / (steps_per_epoch * args.epochs))))
    loss_fn = losses.TripletMarginLoss(margin=args.margin)
    miner = miners.TripletMarginMiner(margin=args.margin, type_of_triplets="semihard")

    head.train()
    trunk.train(not args.freeze_backbone)
    for _ in range(args.epochs):
        order = torch.tensor(list(iter(sampler)))
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            emb = embed(images[idx])
            loss = loss_fn(emb, labels[idx], miner(emb, labels[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    train_seconds = time.perf_counter() - train_start

    test_images, test_labels = load_split(args.manifest, "test", args.input_size)
    head.eval()
    trunk.eval()
    with torch.no_grad():
        test_emb = torch.cat([embed(x) for x in test_images.split(256)])
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"),
                              k="max_bin_count", device=torch.device("cpu"))
    acc = calc.get_accuracy(test_emb, test_labels)
    print(json.dumps({
        "map_at_r": acc["mean_average_precision_at_r"],
        "p_at_1": acc["precision_at_1"],
        "train_images": len(labels),
        "test_queries": len(test_labels),
        "train_s": train_seconds,
        "wall_s": time.perf_counter() - start,
        "train_images_per_s": len(labels) * args.epochs / train_seconds,
        "epochs": args.epochs,
    }))


if __name__ == "__main__":
    main()
