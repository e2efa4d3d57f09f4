#!/usr/bin/env python3
"""`make bench-torch`: tripmine's PyTorch parts against pytorch-metric-learning's in one loop.

Usage: scripts/bench_torch.py [--quick] [--settings scratch,finetune] [--contenders a,b,...]
           [--seeds 0,1,2] [--epochs N] [--threads 2] [--device cpu|cuda] [--out out/bench-torch]
           [--bin target/release/tripmine] [--data out/corpora]
       scripts/bench_torch.py --eval-rows 200000 [--eval-pml-max-rows 200000]

Training. The corpus is shaped like Stanford Online Products (scripts/make_sop.py, seed 0;
full: 5,000 training classes of 5-6 images, 1,000 unseen test classes; --quick: 600 / 200),
32 px. Every contender runs the same loop: bench_pml.py's network (tripmine's built-in ResNet,
tch's initialisation), Adam with tripmine's schedule (half an epoch of warm-up, then cosine),
TripletMarginLoss(margin=0.2), the same number of optimiser steps (epochs x training images /
64) of batches drawn by the contender, the last model scored on the unseen test classes with
tripmine's AccuracyCalculator (exact; MAP@R and P@1). Settings:

  scratch   from scratch, Adam 1e-3 (full: 7 epochs; quick: 7 epochs of the small corpus)
  finetune  from the in-domain ResNet that `make bench-regime` pretrains with tripmine on
            other classes of the same kind (make_sop.py seed 1, 4 epochs; made here when
            missing), Adam 1e-4, 3 epochs

Contenders (16 classes x 4 images a batch):
  pml-semihard       MPerClassSampler + TripletMarginMiner("semihard")
  pml-xbm            the same, then from the second epoch CrossBatchMemory with that miner
                     over a memory of 90% of the training split (XBM's recipe keeps 92%)
  tripmine-sampler   tripmine.torch.NeighbourBatchSampler (the graph of the bank, refreshed
                     every epoch; the bank is updated from each step) + the same pml miner
  tripmine-memory    pml-semihard's batches, then from the second epoch
                     tripmine.pml.CorpusMemory with the same rule (every semi-hard triplet,
                     every positive: pml's miner) over a bank of every training row, mining
                     the rows of the last 90% of an epoch's batches (max_age), filled from the
                     second epoch on as XBM's queue is (so both memories start empty)

Printed per setting: test MAP@R and P@1 (mean +- sd over seeds, and per seed), images/s,
images per step, tripmine's own milliseconds per step (its sampler's refreshes, composition
and bank updates, or its memory's mining and bank updates, amortised over the steps) with
their share of a step, and the seconds of the one pass of the network over the training split
that starts a tripmine bank (network work, not tripmine's, reported apart). Finished runs go to OUT/results.jsonl and are reused when it runs again.

Evaluation (--eval-rows N): N x 128 unit rows in N/10 classes (clustered, a fixed seed),
tripmine.pml.AccuracyCalculator against pml's (faiss CPU, IndexFlatL2), both with
k="max_bin_count", each in a process of its own: seconds, peak RSS and whether the metrics
agree to 1e-6 (pml only up to --eval-pml-max-rows).
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

P, K, DIM, MARGIN = 16, 4, 64, 0.2
SIZES = {"full": ("sop-5000", ["--train-classes", "5000", "--val-classes", "400", "--test-classes", "1000"]),
         "quick": ("sop-600", ["--train-classes", "600", "--val-classes", "100", "--test-classes", "200"])}
EPOCHS = {"scratch": 7, "finetune": 3}
LR = {"scratch": 1e-3, "finetune": 1e-4}
CONTENDERS = ["pml-semihard", "pml-xbm", "tripmine-sampler", "tripmine-memory"]
XBM_SHARE = 0.9


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ensure_corpus(args, variant, seed_suffix="", seed=0):
    folder, sizes = SIZES[variant]
    corpus = os.path.join(args.data, folder + seed_suffix)
    if not os.path.exists(os.path.join(corpus, "manifest.csv")):
        log(f"preparing {corpus} ...")
        subprocess.run([sys.executable, os.path.join(HERE, "make_sop.py"), corpus, "--seed", str(seed)] + sizes,
                       check=True)
    return corpus


def pretrained(args, variant):
    """bench_regime.py's in-domain ResNet: tripmine trained on other classes of the same kind."""
    folder, _ = SIZES[variant]
    other = ensure_corpus(args, variant, "-other", seed=1)
    run = os.path.join(args.out, "pretrain", folder + "-indomain-run")
    state = os.path.join(run, "last", "state.json")
    if not (os.path.exists(state) and json.load(open(state))["epoch"] >= 4):
        log("pretraining the in-domain ResNet (tripmine, batch-semihard, 4 epochs) ...")
        subprocess.run(["rm", "-rf", run], check=True)
        subprocess.run([args.bin, "train", "--corpus", os.path.join(other, "manifest.csv"), "--out", run,
                        "--mining", "batch-semihard", "--epochs", "4", "--input-size", "32", "--dim", str(DIM),
                        "--classes-per-batch", str(P), "--samples-per-class", str(K), "--no-augment",
                        "--threads", str(args.threads), "--device", "cpu"], check=True,
                       stdout=subprocess.DEVNULL)
    return os.path.join(run, "last")


def train_one(args, setting, contender, seed, manifest, init):
    """One run of the shared loop; returns its record."""
    import numpy as np
    import torch
    from pytorch_metric_learning import losses, miners, samplers

    from bench_pml import Net, embed, learning_rate, load_checkpoint, load_split
    from tripmine.pml import AccuracyCalculator, CorpusMemory
    from tripmine.torch import NeighbourBatchSampler

    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.time()
    if init:
        model, pre, _ = load_checkpoint(init)
        stats = (pre["mean"], pre["std"])
    else:
        model, stats = Net(3, 32, DIM), None
    x, y = load_split(manifest, "train", 32, 3, stats)
    xt, yt = load_split(manifest, "test", 32, 3, stats)
    model = model.to(device)
    epochs = args.epochs or EPOCHS[setting]
    steps_per_epoch = len(x) // (P * K)
    total = epochs * steps_per_epoch
    optimiser = torch.optim.Adam(model.parameters(), lr=LR[setting])
    miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
    loss_fn = losses.TripletMarginLoss(margin=MARGIN)
    own = 0.0  # seconds inside tripmine
    first_pass = 0.0  # seconds of the network's one pass over the training split, to start a bank
    memory = xbm = None
    if contender.startswith("tripmine"):
        t = time.time()
        with torch.no_grad():
            corpus = embed(model, x.to(device)).cpu()
        first_pass = time.time() - t
    if contender == "tripmine-sampler":
        t = time.time()
        sampler = NeighbourBatchSampler(corpus, y, classes_per_batch=P, samples_per_class=K, seed=seed)
        own += time.time() - t
    else:
        sampler = samplers.MPerClassSampler(y, m=K, batch_size=P * K, length_before_new_iter=len(x))
    if contender == "pml-xbm":
        xbm = losses.CrossBatchMemory(losses.TripletMarginLoss(margin=MARGIN), DIM,
                                      memory_size=int(XBM_SHARE * len(x)), miner=miner).to(device)
    if contender == "tripmine-memory":
        # XBM's rule over a bank of every row: the rows of the last 90% of an epoch's batches.
        memory = CorpusMemory(losses.TripletMarginLoss(margin=MARGIN), corpus, y, type_of_triplets="semihard",
                              positives="all", negatives_per_anchor=None, seed=seed,
                              max_age=max(1, int(XBM_SHARE * steps_per_epoch)))

    def batches():
        nonlocal own
        epoch = 0
        while True:
            if contender == "tripmine-sampler":
                sampler.set_epoch(epoch)
                t = time.time()
                plan = list(sampler)  # the graph is rebuilt from the bank here
                own += time.time() - t
            else:
                plan = list(torch.utils.data.BatchSampler(sampler, P * K, drop_last=True))
            for b in plan:
                yield epoch, torch.as_tensor(b, dtype=torch.long)
            epoch += 1

    images = triplets = 0
    train_started = time.time()
    model.train()
    for step, (epoch, rows) in zip(range(total), batches()):
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(LR[setting], step, total, steps_per_epoch)
        inputs, labels = x[rows].to(device), y[rows].to(device)
        emb = model(inputs)
        warm = step >= steps_per_epoch
        if contender == "pml-xbm" and warm:
            loss = xbm(emb, labels)
        elif contender == "tripmine-memory" and warm:
            loss = memory(emb, labels, rows)
        else:
            mined = miner(emb, labels)
            triplets += len(mined[0])
            loss = loss_fn(emb, labels, mined)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if contender == "tripmine-sampler":
            t = time.time()
            sampler.update(rows, emb.detach().cpu())
            own += time.time() - t
        images += len(rows)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.time() - train_started
    if memory is not None:
        own += memory.miner.mining_seconds  # its bank updates and mining; the loss is pml's
    test = embed(model, xt.to(device))
    m = AccuracyCalculator(include=("mean_average_precision_at_r", "precision_at_1")).get_accuracy(test, yt)
    return {"setting": setting, "contender": contender, "seed": seed, "epochs": epochs, "steps": total,
            "images": images, "map_at_r": m["mean_average_precision_at_r"], "p_at_1": m["precision_at_1"],
            "train_s": train_s, "images_per_s": images / train_s, "own_ms_per_step": 1000 * own / total, "first_pass_s": first_pass,
            "step_ms": 1000 * train_s / total, "device": str(device), "wall_s": time.time() - started,
            "torch": torch.__version__}


def fmt(values, digits=4):
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def load_done(path):
    done = {}
    if os.path.exists(path):
        for line in open(path):
            r = json.loads(line)
            done[(r["corpus"], r["setting"], r["contender"], r["seed"], r["epochs"])] = r
    return done


def training(args):
    variant = "quick" if args.quick else "full"
    corpus = ensure_corpus(args, variant)
    manifest = os.path.join(corpus, "manifest.csv")
    results = os.path.join(args.out, "results.jsonl")
    done = load_done(results)
    for setting in args.settings:
        init = pretrained(args, variant) if setting == "finetune" else None
        epochs = args.epochs or EPOCHS[setting]
        for seed in args.seeds:
            for c in args.contenders:
                key = (corpus, setting, c, seed, epochs)
                if key in done:
                    continue
                log(f"{setting} {c} seed {seed} ...")
                # Each run in a process of its own: no state shared between contenders.
                out = subprocess.run([sys.executable, __file__, "--one", json.dumps(
                    {"setting": setting, "contender": c, "seed": seed, "manifest": manifest, "init": init})]
                    + sys.argv[1:], capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"{setting} {c} seed {seed} failed:\n{out.stderr[-3000:]}")
                record = {"corpus": corpus, **json.loads(out.stdout.strip().splitlines()[-1])}
                with open(results, "a") as f:
                    f.write(json.dumps(record) + "\n")
                done[key] = record
                log(f"  test MAP@R {record['map_at_r']:.4f}, {record['images_per_s']:.0f} images/s, "
                    f"tripmine {record['own_ms_per_step']:.1f} ms/step")
        print(f"\n### {setting}: {os.path.basename(corpus)}, {epochs} epochs, lr {LR[setting]}, "
              f"P x K {P} x {K}, seeds {','.join(map(str, args.seeds))}\n")
        print("| contender | test MAP@R | test P@1 | per seed (MAP@R) | images/s | images/step | "
              "tripmine ms/step (share) | first embedding pass s |")
        print("|---|---|---|---|---|---|---|---|")
        for c in args.contenders:
            runs = [done[k] for k in done if k[1:3] == (setting, c) and k[0] == corpus and k[4] == epochs
                    and k[3] in args.seeds]
            if not runs:
                continue
            maps = [r["map_at_r"] for r in runs]
            own = statistics.mean(r["own_ms_per_step"] for r in runs)
            step = statistics.mean(r["step_ms"] for r in runs)
            ours = c.startswith("tripmine")
            share = f"{own:.1f} ({100 * own / step:.1f}%)" if ours else "—"
            first = f"{statistics.mean(r['first_pass_s'] for r in runs):.1f}" if ours else "—"
            print(f"| {c} | {fmt(maps)} | {fmt([r['p_at_1'] for r in runs])} | "
                  f"{', '.join(f'{v:.4f}' for v in maps)} | {statistics.mean(r['images_per_s'] for r in runs):.0f} | "
                  f"{statistics.mean(r['images'] / r['steps'] for r in runs):.1f} | {share} | {first} |")


def eval_data(args, n):
    import numpy as np

    path = os.path.join(args.out, f"eval-{n}.npz")
    if not os.path.exists(path):
        rng = np.random.default_rng(0)
        classes = n // 10
        labels = rng.integers(0, classes, n)
        centres = rng.standard_normal((classes, 128)).astype(np.float32)
        x = centres[labels] + 1.6 * rng.standard_normal((n, 128)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.savez(path, x=x, labels=labels)
    return path


def eval_one(which, path):
    import numpy as np

    data = np.load(path)
    x, labels = data["x"], data["labels"]
    include = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
    started = time.time()
    if which == "tripmine":
        from tripmine.pml import AccuracyCalculator

        m = AccuracyCalculator(include=include, k="max_bin_count").get_accuracy(x, labels)
    else:
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        m = AccuracyCalculator(include=include, k="max_bin_count", device=torch.device("cpu")).get_accuracy(
            x, labels)
    seconds = time.time() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"which": which, "seconds": seconds, "peak_rss_mib": peak, **m}))


def evaluation(args):
    print(f"\n### AccuracyCalculator at {args.eval_rows:,} x 128 rows ({args.eval_rows // 10:,} classes), "
          f"k=\"max_bin_count\"\n")
    print("| calculator | seconds | peak RSS MiB | MAP@R | R-Precision | P@1 |")
    print("|---|---|---|---|---|---|")
    path = eval_data(args, args.eval_rows)
    got = {}
    for which in ("tripmine", "pml"):
        if which == "pml" and args.eval_rows > args.eval_pml_max_rows:
            print(f"| pml (faiss CPU) | not run above {args.eval_pml_max_rows:,} rows | | | | |")
            continue
        log(f"evaluating with {which} ...")
        out = subprocess.run([sys.executable, __file__, "--eval-one", which, path], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {which} | failed: {out.stderr.strip().splitlines()[-1][:80]} | | | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        got[which] = r
        name = "tripmine.pml" if which == "tripmine" else "pml (faiss CPU)"
        print(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r['mean_average_precision_at_r']:.6f} | "
              f"{r['r_precision']:.6f} | {r['precision_at_1']:.6f} |")
    if len(got) == 2:
        worst = max(abs(got["tripmine"][k] - got["pml"][k])
                    for k in ("precision_at_1", "r_precision", "mean_average_precision_at_r"))
        print(f"\nlargest difference between the two: {worst:.2e} ({'equal to 1e-6' if worst <= 1e-6 else 'DIFFERENT'})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--settings", default="scratch,finetune")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=0, help="override every setting's epochs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--bin", default="target/release/tripmine")
    ap.add_argument("--data", default="out/corpora")
    ap.add_argument("--eval-rows", type=int, default=0, help="run the evaluation comparison at this many rows")
    ap.add_argument("--eval-pml-max-rows", type=int, default=200_000)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--eval-one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out = args.out or ("out/bench-torch-quick" if args.quick else "out/bench-torch")
    os.makedirs(args.out, exist_ok=True)
    args.settings = [s for s in args.settings.split(",") if s]
    args.contenders = [c for c in args.contenders.split(",") if c]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    for s in args.settings:
        if s not in EPOCHS:
            sys.exit(f"--settings: unknown setting {s!r} (scratch, finetune)")
    for c in args.contenders:
        if c not in CONTENDERS:
            sys.exit(f"--contenders: unknown contender {c!r} ({', '.join(CONTENDERS)})")
    if args.eval_one:
        return eval_one(*args.eval_one)
    if args.one:
        job = json.loads(args.one)
        record = train_one(args, job["setting"], job["contender"], job["seed"], job["manifest"], job["init"])
        print(json.dumps(record))
        return
    if args.eval_rows:
        return evaluation(args)
    training(args)


if __name__ == "__main__":
    main()
