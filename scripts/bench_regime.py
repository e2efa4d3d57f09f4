#!/usr/bin/env python3
"""`make bench-regime`: which mining regime wins where whole-corpus mining should pay?

Usage: scripts/bench_regime.py [--bin target/release/tripmine] [--out out/bench-regime] [--quick]
           [--settings scratch,effnet,indomain,finetune] [--contenders a,b,...] [--seeds 0,1,2]
           [--pml-python .venv-bench/bin/python] [--data out/corpora] [--threads 2]

The corpus is shaped like Stanford Online Products (scripts/make_sop.py, seed 0): full, 5,000+
training classes of 5-6 images at 32 px, 400+ validation classes and 1,000+ unseen test classes,
in families that share parts (the structured confusions); quick, 600 / 100 / 200 classes.
Settings, each with the same network, steps, data and P x K = 16 x 4 for every contender,
test classes never used for training or model selection, last checkpoint, seeds 0-2:

  scratch   images, tripmine's built-in ResNet from scratch, 64-d, Adam 1e-3, no augmentation,
            7 epochs (about 3,000 steps; quick: 3 epochs)
  effnet    a linear head (64-d) over frozen ImageNet EfficientNet-Lite0 features of the images at
            64 px (scripts/extract_features.py over `make bench-finetune`'s exported trunk),
            Adam 0.01, 20 epochs (quick: 10)
  indomain  the same head over the 64-d embeddings of a ResNet that tripmine trained on other
            classes of the same kind (make_sop.py seed 1, batch-semihard, 4 epochs): pretrained
            in-domain, as many users' models are
  finetune  that pretrained ResNet fine-tuned whole on the images (`train --model`; pml loads the
            same checkpoint), Adam 1e-4, 3 epochs (about 1,400 steps; quick: 2): the slow drift
            under which XBM's memory stays valid

Contenders (tripmine train unless named pml):
  auto                    no --mining option: the default, whatever it picks (config.json says)
  batch-semihard, batch-hard
  neighbour-batches       index-guided P x K batches, semi-hard inside, refreshed every epoch
  memory                  neighbour-batches + 4 memory negatives per anchor after 1 epoch (train's
                          --strategy: half semi-hard, half hard)
  memory-semihard         the same with semi-hard memory negatives only
  global                  heads only: whole-split rounds every epoch through the current head,
                          hardest positive, nearest semi-hard negative, 64 triplets a step (as
                          many steps as P x K gives), after a 1-epoch in-batch warm-up
  pml-batch-semihard, pml-batch-hard, pml-xbm
                          PyTorch + pytorch-metric-learning on the same network (bench_pml.py,
                          bench_pml_head.py); xbm = CrossBatchMemory(semi-hard miner), memory of
                          1,024 rows (XBM_ROWS: pml mines all of it every step), on after 1 epoch

Every finished run goes to OUT/results.jsonl and is reused when the benchmark runs again.
Prints one markdown table per setting.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import RunFailed, last_json, load_results, print_table, run_cmd, split_counts  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
P, K, DIM = 16, 4, 64
TRUNK = "out/bench-finetune/effnet_lite0_64.pt"
# pml's CrossBatchMemory mines every (anchor, positive, negative) of a batch against the whole
# memory: 64 x 5 x 25,000 triplets a step at XBM's 90% of SOP-sized data, hours per run on 2
# cores. 1,024 rows (16 batches) keeps a run within minutes.
XBM_ROWS = 1024

SIZES = {"full": ("sop-5000", ["--train-classes", "5000", "--val-classes", "400", "--test-classes", "1000"]),
         "quick": ("sop-600", ["--train-classes", "600", "--val-classes", "100", "--test-classes", "200"])}
EPOCHS = {"scratch": {"full": 7, "quick": 3}, "effnet": {"full": 20, "quick": 10}, "indomain": {"full": 20, "quick": 10},
          "finetune": {"full": 3, "quick": 2}}
LR = {"scratch": 1e-3, "effnet": 0.01, "indomain": 0.01, "finetune": 1e-4}
IMAGE_SETTINGS = {"scratch", "finetune"}

CONTENDERS = {
    "auto": [],
    "batch-semihard": ["--mining", "batch-semihard"],
    "batch-hard": ["--mining", "batch-hard"],
    "neighbour-batches": ["--mining", "neighbour-batches"],
    "memory": ["--mining", "neighbour-batches", "--memory-negatives", "4", "--memory-warmup", "1"],
    "memory-semihard": ["--mining", "neighbour-batches", "--memory-negatives", "4", "--memory-warmup", "1",
                        "--strategy", "semihard"],
    "global": ["--mining", "global", "--positives", "hardest", "--strategy", "semihard",
               "--negatives-per-anchor", "1", "--global-warmup", "1"],
    "pml-batch-semihard": "batch-semihard",
    "pml-batch-hard": "batch-hard",
    "pml-xbm": "xbm",
}
HEADS_ONLY = {"global"}


def ensure(cmd, marker, what):
    if not os.path.exists(marker):
        print(f"preparing {what} ...", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)


def pretrain_indomain(args, folder, sizes, log):
    """The in-domain pretrained ResNet: trained by tripmine on other classes of the same kind."""
    other = os.path.join(args.data, folder + "-other")
    ensure([sys.executable, os.path.join(HERE, "make_sop.py"), other, "--seed", "1"] + sizes,
           os.path.join(other, "manifest.csv"), "the in-domain pretraining corpus")
    trunk_run = os.path.join(args.out, "features", folder + "-indomain-run")
    state = os.path.join(trunk_run, "last", "state.json")
    epochs = 4
    if not (os.path.exists(state) and json.load(open(state))["epoch"] >= epochs):
        subprocess.run(["rm", "-rf", trunk_run], check=True)
        run_cmd([args.bin, "train", "--corpus", os.path.join(other, "manifest.csv"), "--out", trunk_run,
                 "--mining", "batch-semihard", "--epochs", str(epochs), "--input-size", "32", "--dim", str(DIM),
                 "--classes-per-batch", str(P), "--samples-per-class", str(K), "--no-augment",
                 "--threads", str(args.threads), "--device", "cpu"], log)
    return trunk_run


def prepare(args, variant, log):
    folder, sizes = SIZES[variant]
    corpus = os.path.join(args.data, folder)
    ensure([sys.executable, os.path.join(HERE, "make_sop.py"), corpus, "--seed", "0"] + sizes,
           os.path.join(corpus, "manifest.csv"), corpus)
    features = {}
    if "effnet" in args.settings:
        out = os.path.join(args.out, "features", folder + "-effnet")
        if not os.path.exists(TRUNK):
            sys.exit(f"{TRUNK}: missing; `make bench-finetune-quick` exports it")
        ensure([args.pml_python, os.path.join(HERE, "extract_features.py"), "--manifest",
                os.path.join(corpus, "manifest.csv"), "--trunk", TRUNK, "--out", out, "--input-size", "64",
                "--threads", str(args.threads)], os.path.join(out, "embeddings.npy"), "EfficientNet-Lite0 features")
        features["effnet"] = out
    if "indomain" in args.settings or "finetune" in args.settings:
        trunk_run = pretrain_indomain(args, folder, sizes, log)
        features["finetune"] = os.path.join(trunk_run, "last")
    if "indomain" in args.settings:
        out = os.path.join(args.out, "features", folder + "-indomain")
        if not os.path.exists(os.path.join(out, "embeddings.npy")):
            run_cmd([args.bin, "embed", "--corpus", os.path.join(corpus, "manifest.csv"), "--model",
                     os.path.join(trunk_run, "last"), "--out", out, "--threads", str(args.threads),
                     "--device", "cpu"], log)
        features["indomain"] = out
    return folder, os.path.join(corpus, "manifest.csv"), features


def tripmine_run(args, setting, flags, manifest, features, seed, epochs, run_dir, log):
    subprocess.run(["rm", "-rf", run_dir], check=True)
    # 64 triplets a step where steps are triplets (global): as many steps as P x K batches.
    # A fine-tuned checkpoint brings its own network (64-d): --dim beside --model is refused.
    dim = [] if setting == "finetune" else ["--dim", str(DIM)]
    common = dim + ["--epochs", str(epochs), "--seed", str(seed), "--threads", str(args.threads),
              "--classes-per-batch", str(P), "--samples-per-class", str(K), "--triplets-per-step", str(P * K),
              "--lr", str(LR[setting]), "--device", "cpu"]
    if setting == "scratch":
        source = ["--corpus", manifest, "--input-size", "32", "--channels", "3", "--no-augment"]
    elif setting == "finetune":
        source = ["--corpus", manifest, "--model", features, "--no-augment"]
    else:
        source = ["--embeddings", features, "--head", "linear"]
    t0 = time.time()
    _, peak = run_cmd([args.bin, "train", "--out", run_dir] + source + flags + common, log)
    train_s = time.time() - t0
    model = os.path.join(run_dir, "last")
    if setting in IMAGE_SETTINGS:
        evaluate = [args.bin, "eval", "--corpus", manifest, "--model", model]
    else:
        emb = os.path.join(run_dir, "test-embeddings")
        run_cmd([args.bin, "embed", "--model", model, "--embeddings", features, "--out", emb,
                 "--threads", str(args.threads), "--device", "cpu"], log)
        evaluate = [args.bin, "eval", "--embeddings", emb]
    metrics = last_json(run_cmd(evaluate + ["--split", "test", "--json", "--threads", str(args.threads),
                                            "--device", "cpu"], log)[0], "tripmine eval")
    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        steps = int(f.read().strip().splitlines()[-1].split(",")[1])
    return {"map_at_r": metrics["map_at_r"], "p_at_1": metrics["p_at_1"], "train_s": train_s,
            "wall_s": time.time() - t0, "peak_rss_mib": peak, "steps": steps,
            "mining": cfg["mining"] if isinstance(cfg["mining"], str) else json.dumps(cfg["mining"]),
            "choice": (cfg.get("mining_choice") or {}).get("reason")}


def pml_run(args, setting, miner, manifest, features, seed, epochs, train_rows, log):
    steps_per_epoch = train_rows // (P * K)
    common = ["--miner", miner, "--epochs", str(epochs), "--dim", str(DIM), "--seed", str(seed),
              "--classes-per-batch", str(P), "--samples-per-class", str(K), "--lr", str(LR[setting]),
              "--threads", str(args.threads), "--xbm-warmup", str(steps_per_epoch), "--xbm-memory", str(XBM_ROWS)]
    if setting in IMAGE_SETTINGS:
        cmd = [args.pml_python, os.path.join(HERE, "bench_pml.py"), "--manifest", manifest, "--input-size", "32",
               "--channels", "3"] + common
        if setting == "finetune":
            cmd += ["--init", features]
    else:
        cmd = [args.pml_python, os.path.join(HERE, "bench_pml_head.py"), "--features", features] + common
    t0 = time.time()
    stdout, peak = run_cmd(cmd, log)
    out = last_json(stdout, cmd[1])
    return {"map_at_r": out["map_at_r"], "p_at_1": out["p_at_1"], "train_s": out["train_s"],
            "wall_s": time.time() - t0, "peak_rss_mib": peak, "steps": out["steps"], "mining": "pml " + miner}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/tripmine")
    ap.add_argument("--out", default=None)
    ap.add_argument("--data", default="out/corpora")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--settings", default="scratch,effnet,indomain,finetune")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--pml-python", default=".venv-bench/bin/python")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    variant = "quick" if args.quick else "full"
    args.out = args.out or ("out/bench-regime-quick" if args.quick else "out/bench-regime")
    args.settings = [s for s in args.settings.split(",") if s]
    contenders = [c for c in args.contenders.split(",") if c]
    bad = [s for s in args.settings if s not in EPOCHS] + [c for c in contenders if c not in CONTENDERS]
    if bad:
        sys.exit(f"unknown setting or contender: {', '.join(bad)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, "log.txt")
    results_path = os.path.join(args.out, "results.jsonl")
    done = load_results(results_path)
    folder, manifest, features = prepare(args, variant, log)
    train_rows = split_counts(manifest).get("train", 0)
    failed = set()
    for setting in args.settings:
        epochs = EPOCHS[setting][variant]
        for seed in seeds:
            for c in contenders:
                if setting in IMAGE_SETTINGS and c in HEADS_ONLY:
                    continue
                key = (f"{folder}/{setting}", c, seed, epochs)
                if key in done:
                    continue
                label = f"{setting} {c} seed {seed}"
                print(label + " ...", file=sys.stderr, flush=True)
                how = CONTENDERS[c]
                try:
                    if isinstance(how, list):
                        run_dir = os.path.join(args.out, "runs", folder, setting, c, f"seed{seed}")
                        r = tripmine_run(args, setting, how, manifest, features.get(setting), seed, epochs,
                                         run_dir, log)
                    else:
                        r = pml_run(args, setting, how, manifest, features.get(setting), seed, epochs,
                                    train_rows, log)
                except RunFailed as e:
                    print(f"{label}: FAILED {e}", file=sys.stderr, flush=True)
                    failed.add((setting, c))
                    continue
                r["train_images_per_s"] = train_rows * epochs / r["train_s"]
                record = {"corpus": key[0], "contender": c, "seed": seed, "epochs": epochs, **r}
                with open(results_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                done[key] = record
                print(f"{label}: MAP@R {r['map_at_r']:.4f}, P@1 {r['p_at_1']:.4f}, {r['steps']} steps, "
                      f"{r['wall_s']:.0f} s ({r['mining']})", file=sys.stderr, flush=True)
    counts = split_counts(manifest)
    print(f"\n## Regime benchmark ({variant}): {folder}, {counts.get('train', 0)} train / {counts.get('val', 0)} val / "
          f"{counts.get('test', 0)} test images; test split, last checkpoint, P×K {P}×{K}, dim {DIM}, "
          f"{args.threads} threads, seeds {','.join(map(str, seeds))}")
    for setting in args.settings:
        epochs = EPOCHS[setting][variant]
        names = [c for c in contenders if not (setting in IMAGE_SETTINGS and c in HEADS_ONLY)]
        rows = {c: [done[(f"{folder}/{setting}", c, s, epochs)] for s in seeds
                    if (f"{folder}/{setting}", c, s, epochs) in done] for c in names}
        steps = sorted({r["steps"] for rs in rows.values() for r in rs})
        print_table(f"{setting}: {epochs} epochs, lr {LR[setting]}, steps {steps}", names, rows, seeds,
                    {c for s, c in failed if s == setting})
        if setting == "finetune":
            start = last_json(run_cmd([args.bin, "eval", "--corpus", manifest, "--model", features["finetune"],
                                       "--split", "test", "--json", "--threads", str(args.threads),
                                       "--device", "cpu"], log)[0], "tripmine eval")
            print(f"\nbefore fine-tuning (the in-domain pretrained network): MAP@R {start['map_at_r']:.4f}, "
                  f"P@1 {start['p_at_1']:.4f}")
        auto = rows.get("auto") or []
        if auto:
            print(f"\nauto chose: {auto[0]['mining']} ({auto[0].get('choice')})")
    print(f"\nraw results: {results_path}; logs: {log}")


if __name__ == "__main__":
    main()
