#!/usr/bin/env python3
"""`make bench-finetune`: does fine-tuning a pretrained backbone pay, and is tripmine's
fine-tuning as good and as fast as PyTorch + pytorch-metric-learning's?

Usage: scripts/bench_finetune.py [--bin target/release/tripmine] [--out out/bench-finetune]
           [--quick] [--corpora manyclass,fashion] [--contenders a,b,...] [--epochs E]
           [--seeds 1,2,3] [--pml-python .venv-bench/bin/python] [--data out/corpora]

The backbone is the ImageNet EfficientNet-Lite0 (1,280-d features), exported by
scripts/export_backbone.py (traced in evaluation mode, so its batch norm keeps the ImageNet
statistics) to OUT/effnet_lite0_64.pt when missing. Every contender trains at 64 px, RGB
(grey images are repeated over three channels), ImageNet mean/std, aspect-preserving resize
and centre crop, 128-d embeddings, triplet margin loss (margin 0.2) over in-batch semi-hard
triplets (tripmine's batch-semihard, pml's TripletMarginMiner "semihard"), P x K = 8 x 4
class-balanced batches (one pass over the training split per epoch), Adam with lr 1e-3 for the
head (trunk: 1e-4, --backbone-lr-scale 0.1), cosine schedule to 0 without warm-up, no
augmentation, 2 threads, CPU; then the last checkpoint is scored on the corpus's `test` split
(unseen classes for manyclass), never used for training or model selection. Contenders:

  scratch        tripmine train, its built-in ResNet from random initialisation
  frozen         tripmine train --backbone effnet.pt --freeze-backbone (features cached once)
  finetune       tripmine train --backbone effnet.pt
  pml-finetune   scripts/bench_finetune_pml.py: the same backbone, head, loss, miner, sampler,
                 optimiser, learning rates, schedule, epochs and input size in PyTorch + pml

Corpora (made by scripts/bench_train.py's generators under --data when missing):
  manyclass  scripts/make_manyclass.py glyphs, 32 px upsampled to 64: full 300 classes x 20
             (200 training classes: 3,400 train + 600 val; 100 unseen test classes, 2,000
             test), quick 60 x 20 (680 train, 400 test).
  fashion    Fashion-MNIST (Debian's dataset-fashion-mnist), 28 px upsampled: full 200 per
             class (1,800 train), quick 60 per class (test: Fashion-MNIST's test set, same 10
             classes). The same corpora as `make bench-train`'s.
Full: 3 epochs, 3 seeds, 4 contenders, 2 corpora (24 runs, about 25 minutes on 2 cores);
quick: 2 epochs (about 3 minutes). Results
accumulate in OUT/results.jsonl (an interrupted run resumes); the table columns are those of
`make bench-train` (train images/s counts the whole training process, start-up included).
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_train as bt  # noqa: E402  (the shared runner, timing and table code)

SETTINGS = {"dim": 128, "P": 8, "K": 4, "threads": 2, "lr": 1e-3, "backbone_lr_scale": 0.1,
            "input_size": 64, "margin": 0.2}
CORPORA = {
    "manyclass": {
        "full": ("manyclass-300x20", ["make_manyclass.py", "--classes", "300", "--per-class", "20", "--seed", "0"], 3),
        "quick": ("manyclass-60x20", ["make_manyclass.py", "--classes", "60", "--per-class", "20", "--seed", "0"], 2),
    },
    "fashion": {
        "full": ("fashion-200", ["fashion_mnist.py", "--per-class", "200"], 3),
        "quick": ("fashion-60", ["fashion_mnist.py", "--per-class", "60"], 2),
    },
}
CONTENDERS = {
    "scratch": ("tripmine", []),
    "frozen": ("tripmine", ["--backbone", "{backbone}", "--freeze-backbone"]),
    "finetune": ("tripmine", ["--backbone", "{backbone}", "--backbone-lr-scale", str(SETTINGS["backbone_lr_scale"])]),
    "pml-finetune": ("pml", []),
}


def run_tripmine(args, flags, manifest, seed, epochs, run_dir, n_train, log):
    bt.subprocess.run(["rm", "-rf", run_dir], check=True)
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    s = SETTINGS
    train = [args.bin, "train", "--corpus", manifest, "--out", run_dir] + flags + [
        "--mining", "batch-semihard", "--epochs", str(epochs), "--input-size", str(s["input_size"]),
        "--channels", "3", "--preprocess", "imagenet", "--dim", str(s["dim"]), "--seed", str(seed),
        "--threads", str(s["threads"]), "--classes-per-batch", str(s["P"]), "--samples-per-class", str(s["K"]),
        "--lr", str(s["lr"]), "--margin", str(s["margin"]), "--warmup-epochs", "0", "--no-augment",
        "--device", "cpu"]
    t0 = bt.time.time()
    _, peak_mib = bt.run_cmd(train, log)
    train_s = bt.time.time() - t0
    evaluate = [args.bin, "eval", "--corpus", manifest, "--model", os.path.join(run_dir, "last"),
                "--split", "test", "--json", "--threads", str(s["threads"]), "--device", "cpu"]
    metrics = bt.last_json(bt.run_cmd(evaluate, log)[0], "tripmine eval")
    return {"map_at_r": metrics["map_at_r"], "p_at_1": metrics["p_at_1"],
            "train_images_per_s": n_train * epochs / train_s, "wall_s": bt.time.time() - t0,
            "train_s": train_s, "peak_rss_mib": peak_mib, "test_queries": metrics.get("queries")}


def run_pml(args, backbone, manifest, seed, epochs, log):
    s = SETTINGS
    cmd = [args.pml_python, os.path.join(HERE, "bench_finetune_pml.py"), "--manifest", manifest,
           "--backbone", backbone, "--epochs", str(epochs), "--input-size", str(s["input_size"]),
           "--dim", str(s["dim"]), "--seed", str(seed), "--classes-per-batch", str(s["P"]),
           "--samples-per-class", str(s["K"]), "--lr", str(s["lr"]),
           "--backbone-lr-scale", str(s["backbone_lr_scale"]), "--margin", str(s["margin"]),
           "--threads", str(s["threads"])]
    t0 = bt.time.time()
    stdout, peak_mib = bt.run_cmd(cmd, log)
    out = bt.last_json(stdout, "bench_finetune_pml.py")
    wall = bt.time.time() - t0
    # Interpreter start-up and imports count as training time, as a process start does for tripmine.
    train_s = wall - (out["wall_s"] - out["train_s"])
    return {"map_at_r": out["map_at_r"], "p_at_1": out["p_at_1"],
            "train_images_per_s": out["train_images"] * epochs / train_s, "wall_s": wall, "train_s": train_s,
            "peak_rss_mib": peak_mib, "test_queries": out["test_queries"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/tripmine")
    ap.add_argument("--out", default=None, help="default: out/bench-finetune (out/bench-finetune-quick with --quick)")
    ap.add_argument("--data", default="out/corpora")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--pml-python", default=".venv-bench/bin/python")
    args = ap.parse_args()
    variant = "quick" if args.quick else "full"
    out = args.out or ("out/bench-finetune-quick" if args.quick else "out/bench-finetune")
    corpora = [c for c in args.corpora.split(",") if c]
    contenders = [c for c in args.contenders.split(",") if c]
    unknown = [c for c in corpora if c not in CORPORA] + [c for c in contenders if c not in CONTENDERS]
    if unknown:
        sys.exit(f"unknown corpus or contender: {', '.join(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    os.makedirs(out, exist_ok=True)
    backbone = os.path.abspath(os.path.join(out, f"effnet_lite0_{SETTINGS['input_size']}.pt"))
    if not os.path.exists(backbone):
        bt.subprocess.run([args.pml_python, os.path.join(HERE, "export_backbone.py"), "--out", backbone,
                           "--input-size", str(SETTINGS["input_size"])], check=True, stdout=sys.stderr)
    results_path = os.path.join(out, "results.jsonl")
    log = os.path.join(out, "log.txt")
    done = bt.load_results(results_path)
    plan = [(cname, CORPORA[cname][variant], seed, contender)
            for cname in corpora for seed in seeds for contender in contenders]
    failed = set()
    for i, (cname, spec, seed, contender) in enumerate(plan, 1):
        folder, _, default_epochs = spec
        epochs = args.epochs or default_epochs
        manifest = bt.ensure_corpus(args.data, spec)
        if (folder, contender, seed, epochs) in done:
            continue
        n_train = bt.split_counts(manifest).get("train", 0)
        label = f"[{i}/{len(plan)}] {folder} {contender} seed {seed}, {epochs} epochs"
        print(label + " ...", file=sys.stderr, flush=True)
        kind, flags = CONTENDERS[contender]
        try:
            if kind == "tripmine":
                run_dir = os.path.join(out, "runs", folder, contender, f"seed{seed}-e{epochs}")
                flags = [f.format(backbone=backbone) for f in flags]
                r = run_tripmine(args, flags, manifest, seed, epochs, run_dir, n_train, log)
            else:
                r = run_pml(args, backbone, manifest, seed, epochs, log)
        except bt.RunFailed as e:
            print(f"{label}: FAILED {e}", file=sys.stderr, flush=True)
            failed.add((folder, contender))
            continue
        record = {"corpus": folder, "contender": contender, "seed": seed, "epochs": epochs, **SETTINGS,
                  "train_images": n_train, **r}
        with open(results_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        done[(folder, contender, seed, epochs)] = record
        print(f"{label}: MAP@R {r['map_at_r']:.4f}, P@1 {r['p_at_1']:.4f}, "
              f"{r['train_images_per_s']:.1f} images/s, {r['wall_s']:.0f} s", file=sys.stderr, flush=True)

    s = SETTINGS
    print(f"\n## Fine-tuning benchmark ({variant}): ImageNet EfficientNet-Lite0, {s['input_size']} px, "
          f"dim {s['dim']}, semi-hard in P×K {s['P']}×{s['K']}, Adam {s['lr']} (trunk ×{s['backbone_lr_scale']}), "
          f"cosine, no augmentation, {s['threads']} threads, seeds {','.join(map(str, seeds))}")
    for cname in corpora:
        folder, _, default_epochs = CORPORA[cname][variant]
        epochs = args.epochs or default_epochs
        counts = bt.split_counts(os.path.join(args.data, folder, "manifest.csv"))
        rows = {c: [done[(folder, c, sd, epochs)] for sd in seeds if (folder, c, sd, epochs) in done]
                for c in contenders}
        title = (f"{folder}: {counts.get('train', 0)} train / {counts.get('test', 0)} test images, "
                 f"{epochs} epochs")
        bt.print_table(title, contenders, rows, seeds, {c for f, c in failed if f == folder})
    print(f"\nraw results: {results_path}; logs: {log}")


if __name__ == "__main__":
    main()
