#!/usr/bin/env python3
"""The pytorch-metric-learning contender for heads over feature rows (`make bench-regime`).

Usage: scripts/bench_pml_head.py --features DIR --miner batch-semihard|batch-hard|xbm
           [--epochs 20] [--dim 64] [--seed 0] [--classes-per-batch 16] [--samples-per-class 4]
           [--lr 0.01] [--threads 2] [--xbm-memory 0.9] [--xbm-warmup 1000]

The same head as `tripmine train --embeddings DIR --head linear`: rows standardised with the
training rows' mean and std, one linear layer to --dim, a batch norm without affine
parameters, L2 normalisation. Trains on the `train` rows with TripletMarginLoss(0.2) and
BatchHardMiner, TripletMarginMiner(semihard), or CrossBatchMemory over the semi-hard miner
(XBM: memory of --xbm-memory of the training rows, used after --xbm-warmup steps), P x K batches
from MPerClassSampler, Adam with tripmine's schedule (0.5 warm-up epochs, cosine); evaluates
the last head on the `test` rows (exact neighbours, MAP@R and P@1 as bench_pml.py). Prints one
JSON line.
"""
import argparse
import csv
import json
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners, samplers

from bench_pml import MARGIN, learning_rate, retrieval_metrics


def load(features):
    x = np.load(os.path.join(features, "embeddings.npy")).astype(np.float32)
    with open(os.path.join(features, "samples.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    labels = {l: i for i, l in enumerate(sorted({r["label"] for r in rows}))}
    y = np.array([labels[r["label"]] for r in rows])
    split = np.array([r["split"].lower() for r in rows])
    return x, y, split


class Head(nn.Module):
    def __init__(self, mean, std, dim):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))
        self.linear = nn.Linear(len(mean), dim)
        self.neck = nn.BatchNorm1d(dim, affine=False)

    def forward(self, x):
        return F.normalize(self.neck(self.linear((x - self.mean) / self.std)), dim=1)


def main():
    start = time.time()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", required=True)
    ap.add_argument("--miner", choices=["batch-hard", "batch-semihard", "xbm"], default="batch-semihard")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes-per-batch", type=int, default=16)
    ap.add_argument("--samples-per-class", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--xbm-memory", type=float, default=0.9, help="memory size: a share of the training set (up to 1) or rows")
    ap.add_argument("--xbm-warmup", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    x, y, split = load(args.features)
    train = split == "train"
    train_x, train_y = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    mean = x[train].mean(0)
    std = np.maximum(x[train].std(0), 1e-6).astype(np.float32)
    head = Head(mean.astype(np.float32), std, args.dim)
    batch = min(args.classes_per_batch, len(torch.unique(train_y))) * args.samples_per_class
    sampler = samplers.MPerClassSampler(train_y.tolist(), m=args.samples_per_class, batch_size=batch,
                                        length_before_new_iter=len(train_y))
    steps_per_epoch = len(sampler) // batch
    total = steps_per_epoch * args.epochs
    loss_fn = losses.TripletMarginLoss(margin=MARGIN)
    miner = (miners.BatchHardMiner() if args.miner == "batch-hard"
             else miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard"))
    xbm = None
    if args.miner == "xbm":
        xbm = losses.CrossBatchMemory(loss=losses.TripletMarginLoss(margin=MARGIN), embedding_size=args.dim,
                                      memory_size=max(batch, int(args.xbm_memory if args.xbm_memory > 1 else args.xbm_memory * len(train_y))), miner=miner)
    opt = torch.optim.Adam(head.parameters(), lr=args.lr)
    step = 0
    for _ in range(args.epochs):
        head.train()
        order = list(iter(sampler))
        for i in range(steps_per_epoch):
            idx = torch.tensor(order[i * batch:(i + 1) * batch])
            xb, yb = train_x[idx], train_y[idx]
            for g in opt.param_groups:
                g["lr"] = learning_rate(args.lr, step, total, steps_per_epoch)
            emb = head(xb)
            if xbm is not None and step >= args.xbm_warmup:
                loss = xbm(emb, yb)
            else:
                loss = loss_fn(emb, yb, miner(emb, yb))
                if xbm is not None:
                    xbm.add_to_memory(emb.detach(), yb, len(yb))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    train_s = time.time() - start
    head.eval()
    test = split == "test"
    with torch.no_grad():
        emb = head(torch.from_numpy(x[test]))
    metrics = retrieval_metrics(emb, torch.from_numpy(y[test]))
    print(json.dumps({"map_at_r": metrics["map_at_r"], "p_at_1": metrics["p_at_1"], "steps": step,
                      "train_images": int(train.sum()), "train_s": train_s, "wall_s": time.time() - start,
                      "test_queries": metrics["queries"]}))


if __name__ == "__main__":
    main()
