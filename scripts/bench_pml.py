#!/usr/bin/env python3
"""The reference contender for `make bench-train`: PyTorch + pytorch-metric-learning.

Usage: scripts/bench_pml.py --manifest manifest.csv [--miner batch-hard|batch-semihard]
           [--epochs 5] [--input-size 32] [--channels 3] [--dim 64] [--seed 0]
           [--classes-per-batch 16] [--samples-per-class 4] [--lr 1e-3] [--threads 2]
           [--eval-untrained] [--init RUN/last]
       scripts/bench_pml.py --manifest manifest.csv --check-checkpoint RUN/last [--split test]

Runs in the bench venv (`make bench-venv`: pytorch-metric-learning and Pillow over .venv's
torch). Rebuilds tripmine's built-in network (src/model/net.rs, mod.rs) with the same
initialisation as tch's defaults:
  stem 3x3 conv (no bias; stride 2 above 64 px) + BN + ReLU (+ 3x3/2 max-pool from 128 px),
  one basic block per width [32, 64, 128, 256] (stride 1, then 2), global average pool,
  linear to --dim, a batch-norm "neck" without affine parameters, then L2 normalisation.
Inputs as src/corpus/decode.rs makes them: resized to --input-size (triangle filter, in the
file's own colour type), then converted to grey (Rec. 709 luma, as the image crate does) or
RGB, scaled to [0, 1] and normalised with ImageNet mean/std (RGB) or 0.5/0.25 (grey).

Trains on the manifest's `train` split with TripletMarginLoss(margin=0.2) and BatchHardMiner
or TripletMarginMiner(margin=0.2, type_of_triplets="semihard"), MPerClassSampler(m=K,
batch_size=P*K, length_before_new_iter=len(train)) with P capped at the number of training
classes (as tripmine's sampler does), Adam with tripmine's schedule (linear
warm-up of 0.5 epochs, then cosine to 0, set every step), no augmentation; then evaluates
the last model on the `test` split with exact neighbours (DESIGN.md: the query excluded,
R = other samples of its label, queries with R = 0 skipped; scores in query blocks).
Prints one JSON line: map_at_r, p_at_1, train_images_per_s (training images x epochs /
seconds from the start of loading to the end of the last epoch, so decoding counts as it
does in `tripmine train`), wall_s (the whole script), and a few counts.
"""
import argparse
import csv
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from pytorch_metric_learning import losses, miners, samplers

WIDTHS = [32, 64, 128, 256]
MARGIN = 0.2
WARMUP_EPOCHS = 0.5
# image crate's Rgb -> Luma (integer arithmetic, floor).
LUMA = np.array([2126, 7152, 722], dtype=np.uint32)


# ---- the network (tch defaults: conv/linear weights Kaiming-uniform for ReLU on fan-in,
# linear bias U(+-1/sqrt(fan_in)), batch-norm weight U(0, 1) and bias 0, momentum 0.1, eps 1e-5).
# Parameter names are tch's (stem, stem_bn, block<i>.conv1, block<i>.down_bn, head, neck), so a
# tripmine checkpoint loads as it is (--check-checkpoint).

def conv(cin, cout, k, stride):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, 3, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = self.down_bn = None
        if stride != 1 or cin != cout:
            self.down = conv(cin, cout, 1, stride)
            self.down_bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        skip = x if self.down is None else self.down_bn(self.down(x))
        return F.relu(y + skip)


class Net(nn.Module):
    def __init__(self, channels, input_size, dim, widths=WIDTHS):
        super().__init__()
        self.stem = conv(channels, widths[0], 3, 2 if input_size > 64 else 1)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.stem_pool = input_size >= 128
        self.blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            block = BasicBlock(cin, w, 1 if i == 0 else 2)
            self.add_module(f"block{i}", block)
            self.blocks.append(block)
            cin = w
        self.head = nn.Linear(cin, dim)
        self.neck = nn.BatchNorm1d(dim, affine=False)
        self.init_like_tch()

    def init_like_tch(self):
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=0.0, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(m.weight.shape[1])
                    nn.init.uniform_(m.bias, -bound, bound)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.0, 1.0)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        if self.stem_pool:
            x = F.max_pool2d(x, 3, 2, 1)
        for block in self.blocks:
            x = block(x)
        x = self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        x = self.neck(x)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


# ---- data

def preprocess_stats(channels):
    if channels == 1:
        return [0.5], [0.25]
    return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def load_image(path, size, channels):
    """C x S x S float32, as tripmine's Preprocess::apply makes it."""
    with Image.open(path) as img:
        img.load()
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            if img.mode == "RGBA":
                img = img.convert("RGB")  # the image crate drops alpha too
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        arr = np.asarray(img)
    if channels == 1:
        if arr.ndim == 3:
            arr = ((arr.astype(np.uint32) * LUMA).sum(axis=2) // 10000).astype(np.uint8)
        arr = arr[None]
    else:
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        arr = arr.transpose(2, 0, 1)
    return arr.astype(np.float32) / 255.0


def load_split(manifest, split, size, channels, stats=None):
    root = os.path.dirname(os.path.abspath(manifest))
    with open(manifest, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split", "") == split]
    if not rows:
        sys.exit(f"{manifest}: no rows with split {split!r}")
    mean, std = stats or preprocess_stats(channels)
    mean = np.array(mean, np.float32)[:, None, None]
    std = np.array(std, np.float32)[:, None, None]
    images = np.stack([(load_image(os.path.join(root, r["path"]), size, channels) - mean) / std for r in rows])
    names = sorted({r["label"] for r in rows})
    ids = {n: i for i, n in enumerate(names)}
    labels = np.array([ids[r["label"]] for r in rows], dtype=np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)


# ---- metrics (DESIGN.md), exact, one query block at a time

@torch.no_grad()
def embed(model, images, batch=256):
    model.eval()
    return torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def retrieval_metrics(emb, labels, block=512):
    counts = torch.bincount(labels)
    r_all = counts[labels] - 1
    p1_sum, map_sum, queries = 0.0, 0.0, 0
    for start in range(0, len(emb), block):
        q = emb[start:start + block]
        r = r_all[start:start + block]
        keep = r > 0
        if not keep.any():
            continue
        # Ranking by dot product on unit vectors = ranking by Euclidean distance.
        scores = q @ emb.T
        rows = torch.arange(len(q))
        scores[rows, start + rows] = -float("inf")  # the query itself
        scores, r, qlabels = scores[keep], r[keep], labels[start:start + block][keep]
        k = int(r.max())
        nn_idx = scores.topk(k, dim=1).indices
        rel = (labels[nn_idx] == qlabels[:, None]).float()
        ranks = torch.arange(1, k + 1, dtype=torch.float32)
        within = (ranks[None, :] <= r[:, None]).float()
        rel = rel * within
        precision_at_i = rel.cumsum(1) / ranks[None, :]
        map_sum += float(((precision_at_i * rel).sum(1) / r.float()).sum())
        p1_sum += float(rel[:, 0].sum())
        queries += len(r)
    return {"map_at_r": map_sum / max(queries, 1), "p_at_1": p1_sum / max(queries, 1), "queries": queries}


# ---- training

def learning_rate(base, step, total, steps_per_epoch):
    """tripmine's src/train/optim.rs: linear warm-up, then cosine to 0."""
    warmup = round(WARMUP_EPOCHS * steps_per_epoch)
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return 0.5 * base * (1.0 + math.cos(math.pi * progress))


def load_checkpoint(folder):
    """The network of tripmine's checkpoint `folder` with its weights, its preprocessing and the
    number of tensors loaded."""
    from safetensors.torch import load_file

    with open(os.path.join(folder, "model.json")) as f:
        spec = json.load(f)
    arch, pre = spec["architecture"], spec["preprocess"]
    if arch.get("kind") != "resnet":
        sys.exit(f"{folder}: architecture {arch.get('kind')!r}, not the built-in resnet")
    model = Net(pre["channels"], pre["input_size"], spec["dim"], arch["widths"])
    weights = load_file(os.path.join(folder, "model.safetensors"))
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(ours) - set(weights))
    extra = sorted(set(weights) - set(ours))
    shapes = [k for k in ours if k in weights and tuple(weights[k].shape) != tuple(ours[k].shape)]
    if missing or extra or shapes:
        sys.exit(f"{folder}: checkpoint does not fit: missing {missing}, unexpected {extra}, other shapes {shapes}")
    model.load_state_dict({k: weights[k].float() for k in ours}, strict=False)
    return model, pre, len(ours)


def check_checkpoint(args):
    """Loads a tripmine checkpoint into this network and prints its metrics on --split: equal to
    `tripmine eval --json` (up to float rounding) when the network and inputs are the same."""
    model, pre, tensors = load_checkpoint(args.check_checkpoint)
    x, y = load_split(args.manifest, args.split, pre["input_size"], pre["channels"], (pre["mean"], pre["std"]))
    metrics = retrieval_metrics(embed(model, x), y)
    print(json.dumps({**metrics, "checkpoint": args.check_checkpoint, "tensors": tensors}))


def main():
    start = time.time()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--miner", choices=["batch-hard", "batch-semihard", "xbm"], default="batch-hard",
                    help="xbm: CrossBatchMemory over TripletMarginLoss with the semi-hard TripletMarginMiner, "
                         "a memory of --xbm-memory of the training set, switched on after --xbm-warmup steps "
                         "(plain in-batch semi-hard before), as XBM's released recipe")
    ap.add_argument("--xbm-memory", type=float, default=0.9, help="memory size: a share of the training set (up to 1) or rows")
    ap.add_argument("--xbm-warmup", type=int, default=1000, help="steps before the memory is used")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--channels", type=int, choices=[1, 3], default=3)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes-per-batch", type=int, default=16)
    ap.add_argument("--samples-per-class", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-untrained", action="store_true", help="also report test metrics before training")
    ap.add_argument("--check-checkpoint", metavar="DIR",
                    help="no training: load tripmine's checkpoint DIR into this network and print its "
                         "metrics on --split, to compare with `tripmine eval --json`")
    ap.add_argument("--split", default="test", help="with --check-checkpoint")
    ap.add_argument("--init", metavar="DIR",
                    help="start from tripmine's checkpoint DIR (as `tripmine train --model DIR`): its "
                         "network and weights; --input-size, --channels and --dim must match it")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.check_checkpoint:
        check_checkpoint(args)
        return
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # pml's samplers draw from numpy's global generator
    random.seed(args.seed)

    train_x, train_y = load_split(args.manifest, "train", args.input_size, args.channels)
    if args.init:
        model, pre, _ = load_checkpoint(args.init)
        if (pre["input_size"], pre["channels"]) != (args.input_size, args.channels) or model.head.out_features != args.dim:
            sys.exit(f"{args.init}: the checkpoint's input or dim differs from --input-size/--channels/--dim")
    else:
        model = Net(args.channels, args.input_size, args.dim)
    untrained = None
    if args.eval_untrained:
        t0 = time.time()
        test_x, test_y = load_split(args.manifest, "test", args.input_size, args.channels)
        untrained = retrieval_metrics(embed(model, test_x), test_y)
        start += time.time() - t0  # not part of the training time

    # Like tripmine's P x K sampler, a batch holds every class when there are fewer than P.
    classes = len(torch.unique(train_y))
    batch = min(args.classes_per_batch, classes) * args.samples_per_class
    sampler = samplers.MPerClassSampler(train_y.tolist(), m=args.samples_per_class, batch_size=batch,
                                        length_before_new_iter=len(train_y))
    steps_per_epoch = len(sampler) // batch
    total = steps_per_epoch * args.epochs
    loss_fn = losses.TripletMarginLoss(margin=MARGIN)
    if args.miner == "batch-hard":
        miner = miners.BatchHardMiner()
    else:
        miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
    xbm = None
    if args.miner == "xbm":
        xbm = losses.CrossBatchMemory(loss=losses.TripletMarginLoss(margin=MARGIN), embedding_size=args.dim,
                                      memory_size=max(batch, int(args.xbm_memory if args.xbm_memory > 1 else args.xbm_memory * len(train_y))), miner=miner)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    step, losses_seen = 0, []
    for _ in range(args.epochs):
        model.train()
        order = list(iter(sampler))
        for i in range(steps_per_epoch):
            idx = torch.tensor(order[i * batch:(i + 1) * batch])
            x, y = train_x[idx], train_y[idx]
            for g in opt.param_groups:
                g["lr"] = learning_rate(args.lr, step, total, steps_per_epoch)
            emb = model(x)
            if xbm is not None and step >= args.xbm_warmup:
                loss = xbm(emb, y)
            else:
                loss = loss_fn(emb, y, miner(emb, y))
                if xbm is not None:
                    # The memory fills during the warm-up too, so it is full when it starts.
                    xbm.add_to_memory(emb.detach(), y, len(y))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses_seen.append(loss.item())
            step += 1
    train_s = time.time() - start

    test_x, test_y = load_split(args.manifest, "test", args.input_size, args.channels)
    metrics = retrieval_metrics(embed(model, test_x), test_y)
    out = {
        "map_at_r": metrics["map_at_r"],
        "p_at_1": metrics["p_at_1"],
        "train_images_per_s": len(train_y) * args.epochs / train_s,
        "wall_s": time.time() - start,
        "train_s": train_s,
        "train_images": len(train_y),
        "batch": batch,
        "steps": step,
        "test_queries": metrics["queries"],
        "final_loss": float(np.mean(losses_seen[-steps_per_epoch:])) if losses_seen else None,
    }
    if untrained is not None:
        out["untrained_map_at_r"] = untrained["map_at_r"]
        out["untrained_p_at_1"] = untrained["p_at_1"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
