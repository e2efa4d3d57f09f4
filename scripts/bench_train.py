#!/usr/bin/env python3
"""`make bench-train`: which training regime should be tripmine's default?

Usage: scripts/bench_train.py [--bin target/release/tripmine] [--out out/bench-train]
           [--quick] [--corpora manyclass,fashion] [--contenders a,b,...] [--epochs E]
           [--seeds 1,2,3] [--pml-python .venv-bench/bin/python] [--data out/corpora]
           [--threads 2]

For each corpus, each contender and each seed: train with the same network (tripmine's
built-in ResNet, 64-d), input size, epochs, P x K = 16 x 4 (P is capped at the number of
training classes by both tripmine and the pml script: 10 on Fashion-MNIST), Adam lr 1e-3
(0.5 warm-up epochs, cosine), margin 0.2, no augmentation, 2 threads, CPU; then evaluate the
last checkpoint on the corpus's `test` split (never used for training or model selection)
with exact neighbours. Contenders:

  batch-hard, batch-semihard, global,     tripmine train --mining <that>
  neighbour-batches-hard,                 tripmine train --mining neighbour-batches --batch-miner hard
  neighbour-batches-semihard,             ... --batch-miner semihard
  neighbour-batches-semihard-mem4         ... --batch-miner semihard --memory-negatives 4
  pml-batch-hard, pml-batch-semihard      scripts/bench_pml.py (PyTorch + pytorch-metric-learning)

Corpora (generated under --data when their manifest is missing):
  manyclass  scripts/make_manyclass.py, 300 classes x 20 images, 32x32 RGB, seed 0: 200
             training classes (3,400 train, 600 val), 100 unseen test classes (2,000 test).
  fashion    scripts/fashion_mnist.py --per-class 200: 180 train + 20 val per class, 40 test
             per class (Fashion-MNIST's test set, same 10 classes), 28x28 grey.
Full run: 4 epochs each (13,600 and 7,200 training images per run), 3 seeds, 8 contenders:
48 runs, estimated 50 minutes on a 2-core machine (assuming about 180 images/s for the
in-batch regimes and half that for global mining, plus start-up and evaluation; pml measured
106 images/s on one thread while the other core was busy). --epochs or fewer --contenders
shorten it; the progress lines on stderr estimate the time left.
--quick: manyclass 60 x 20 (680 train, 20 test classes), fashion --per-class 60 (540 train),
3 epochs, 3 seeds: about 12 minutes (estimated: mostly start-up and evaluation, 15-25 s a run).

Every finished run is appended to OUT/results.jsonl; a run already there for the same
(corpus, contender, seed, epochs) is reused, so an interrupted benchmark resumes where it
stopped (delete the file, or lines of it, to measure again). Failed runs are reported and
not recorded. Prints one markdown table per corpus and its best contender by mean MAP@R.

train images/s = training-split images x epochs / seconds of the training process (start-up,
decoding, training, and for tripmine its per-epoch validation and checkpoints); wall s =
training plus the test evaluation, as seen from here; peak RSS MiB = the largest peak resident
memory of the training process over the seeds (for pml the one process also evaluates).
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COMMON = {"dim": 64, "P": 16, "K": 4, "threads": 2, "lr": 1e-3}

# name -> (generator argv after the output folder, input size, channels, default epochs)
CORPORA = {
    "manyclass": {
        "full": ("manyclass-300x20", ["make_manyclass.py", "--classes", "300", "--per-class", "20", "--seed", "0"], 4),
        "quick": ("manyclass-60x20", ["make_manyclass.py", "--classes", "60", "--per-class", "20", "--seed", "0"], 3),
        "input_size": 32,
        "channels": 3,
    },
    "fashion": {
        "full": ("fashion-200", ["fashion_mnist.py", "--per-class", "200"], 4),
        "quick": ("fashion-60", ["fashion_mnist.py", "--per-class", "60"], 3),
        "input_size": 28,
        "channels": 1,
    },
}

# name -> ("tripmine", extra train flags) or ("pml", miner)
CONTENDERS = {
    "batch-hard": ("tripmine", ["--mining", "batch-hard"]),
    "batch-semihard": ("tripmine", ["--mining", "batch-semihard"]),
    "global": ("tripmine", ["--mining", "global"]),
    "neighbour-batches-hard": ("tripmine", ["--mining", "neighbour-batches", "--batch-miner", "hard"]),
    "neighbour-batches-semihard": ("tripmine", ["--mining", "neighbour-batches", "--batch-miner", "semihard"]),
    "neighbour-batches-semihard-mem4": ("tripmine", ["--mining", "neighbour-batches", "--batch-miner", "semihard",
                                                     "--memory-negatives", "4"]),
    "pml-batch-hard": ("pml", "batch-hard"),
    "pml-batch-semihard": ("pml", "batch-semihard"),
}


class RunFailed(Exception):
    pass


def run_cmd(cmd, log):
    """Runs cmd, logging both outputs; returns stdout and the process's peak resident memory
    in MiB (wait4's ru_maxrss: that process alone); raises RunFailed."""
    with open(log, "a") as err:
        err.write("$ " + " ".join(cmd) + "\n")
        err.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.write(stdout)
    if proc.returncode != 0:
        raise RunFailed(f"exit {proc.returncode}: {' '.join(cmd)} (see {log})")
    return stdout, usage.ru_maxrss / 1024


def last_json(stdout, what):
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RunFailed(f"{what} printed no JSON line")


def ensure_corpus(data, spec):
    folder, generator, _ = spec
    out = os.path.join(data, folder)
    manifest = os.path.join(out, "manifest.csv")
    if not os.path.exists(manifest):
        print(f"generating {out}", file=sys.stderr)
        subprocess.run([sys.executable, os.path.join(HERE, generator[0]), out] + generator[1:], check=True)
    return manifest


def split_counts(manifest):
    counts = {}
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            counts[row.get("split", "")] = counts.get(row.get("split", ""), 0) + 1
    return counts


def run_tripmine(args, flags, manifest, corpus, seed, epochs, run_dir, n_train, log):
    subprocess.run(["rm", "-rf", run_dir], check=True)
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    train = [args.bin, "train", "--corpus", manifest, "--out", run_dir] + flags + [
        "--epochs", str(epochs), "--input-size", str(corpus["input_size"]), "--channels", str(corpus["channels"]),
        "--dim", str(COMMON["dim"]), "--seed", str(seed), "--threads", str(COMMON["threads"]),
        "--classes-per-batch", str(COMMON["P"]), "--samples-per-class", str(COMMON["K"]),
        "--triplets-per-step", "64", "--lr", str(COMMON["lr"]), "--no-augment", "--device", "cpu"]
    t0 = time.time()
    _, peak_mib = run_cmd(train, log)
    train_s = time.time() - t0
    evaluate = [args.bin, "eval", "--corpus", manifest, "--model", os.path.join(run_dir, "last"),
                "--split", "test", "--json", "--threads", str(COMMON["threads"]), "--device", "cpu"]
    metrics = last_json(run_cmd(evaluate, log)[0], "tripmine eval")
    wall = time.time() - t0
    return {"map_at_r": metrics["map_at_r"], "p_at_1": metrics["p_at_1"],
            "train_images_per_s": n_train * epochs / train_s, "wall_s": wall, "train_s": train_s,
            "peak_rss_mib": peak_mib, "test_queries": metrics.get("queries")}


def run_pml(args, miner, manifest, corpus, seed, epochs, log):
    cmd = [args.pml_python, os.path.join(HERE, "bench_pml.py"), "--manifest", manifest, "--miner", miner,
           "--epochs", str(epochs), "--input-size", str(corpus["input_size"]), "--channels", str(corpus["channels"]),
           "--dim", str(COMMON["dim"]), "--seed", str(seed), "--classes-per-batch", str(COMMON["P"]),
           "--samples-per-class", str(COMMON["K"]), "--lr", str(COMMON["lr"]), "--threads", str(COMMON["threads"])]
    t0 = time.time()
    stdout, peak_mib = run_cmd(cmd, log)
    out = last_json(stdout, "bench_pml.py")
    wall = time.time() - t0
    # Count interpreter start-up and imports as training time, as a process start counts for tripmine.
    train_s = wall - (out["wall_s"] - out["train_s"])
    return {"map_at_r": out["map_at_r"], "p_at_1": out["p_at_1"],
            "train_images_per_s": out["train_images"] * epochs / train_s, "wall_s": wall, "train_s": train_s,
            "peak_rss_mib": peak_mib, "test_queries": out["test_queries"]}


def load_results(path):
    """Finished runs by key; a last line cut short by an interruption is ignored and ended."""
    results = {}
    if os.path.exists(path):
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                results[(r["corpus"], r["contender"], r["seed"], r["epochs"])] = r
    return results


def mean_sd(values):
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def peak_rss(runs):
    """The largest training-process peak among runs that recorded one (older ones did not)."""
    peaks = [r["peak_rss_mib"] for r in runs if "peak_rss_mib" in r]
    return f"{max(peaks):.0f}" if peaks else "—"


def print_table(title, contenders, rows, seeds, failed):
    print(f"\n### {title}\n")
    print("| contender | test MAP@R mean ± sd | P@1 mean ± sd | train images/s mean | peak RSS MiB | wall s mean | seeds |")
    print("|---|---|---|---|---|---|---|")
    best = None
    for name in contenders:
        rs = rows.get(name, [])
        if not rs:
            note = "failed" if name in failed else "not run"
            print(f"| {name} | {note} | | | | | 0/{len(seeds)} |")
            continue
        maps = [r["map_at_r"] for r in rs]
        print(f"| {name} | {mean_sd(maps)} | {mean_sd([r['p_at_1'] for r in rs])} | "
              f"{statistics.mean(r['train_images_per_s'] for r in rs):.0f} | {peak_rss(rs)} | "
              f"{statistics.mean(r['wall_s'] for r in rs):.0f} | {len(rs)}/{len(seeds)} |")
        if len(rs) == len(seeds) and (best is None or statistics.mean(maps) > best[1]):
            best = (name, statistics.mean(maps), statistics.stdev(maps) if len(maps) > 1 else 0.0)
    if best:
        spread = f" ± {best[2]:.4f}" if len(seeds) > 1 else ""
        print(f"\nbest contender: **{best[0]}** (test MAP@R {best[1]:.4f}{spread}, among contenders "
              f"with all {len(seeds)} seeds)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/tripmine")
    ap.add_argument("--out", default=None, help="default: out/bench-train (out/bench-train-quick with --quick)")
    ap.add_argument("--data", default="out/corpora", help="where the corpora are (generated when missing)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--epochs", type=int, default=None, help="override every corpus's epochs")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--pml-python", default=".venv-bench/bin/python")
    ap.add_argument("--threads", type=int, default=COMMON["threads"], help="for every contender")
    args = ap.parse_args()
    COMMON["threads"] = args.threads
    variant = "quick" if args.quick else "full"
    out = args.out or ("out/bench-train-quick" if args.quick else "out/bench-train")
    corpora = [c for c in args.corpora.split(",") if c]
    contenders = [c for c in args.contenders.split(",") if c]
    unknown = [c for c in corpora if c not in CORPORA] + [c for c in contenders if c not in CONTENDERS]
    if unknown:
        sys.exit(f"unknown corpus or contender: {', '.join(unknown)} "
                 f"(corpora: {', '.join(CORPORA)}; contenders: {', '.join(CONTENDERS)})")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if any(CONTENDERS[c][0] == "tripmine" for c in contenders) and not os.access(args.bin, os.X_OK):
        sys.exit(f"{args.bin}: not an executable (cargo build --release)")
    if any(CONTENDERS[c][0] == "pml" for c in contenders) and not os.path.exists(args.pml_python):
        sys.exit(f"{args.pml_python}: missing (make bench-venv)")
    os.makedirs(out, exist_ok=True)
    results_path = os.path.join(out, "results.jsonl")
    log = os.path.join(out, "log.txt")
    done = load_results(results_path)

    plan = []
    for cname in corpora:
        corpus = CORPORA[cname]
        folder, _, default_epochs = corpus[variant]
        manifest = ensure_corpus(args.data, corpus[variant])
        epochs = args.epochs or default_epochs
        for seed in seeds:
            for contender in contenders:
                plan.append((cname, folder, corpus, manifest, epochs, seed, contender))

    failed = set()
    spent, measured = 0.0, 0
    for i, (cname, folder, corpus, manifest, epochs, seed, contender) in enumerate(plan, 1):
        key = (folder, contender, seed, epochs)
        if key in done:
            continue
        counts = split_counts(manifest)
        label = f"[{i}/{len(plan)}] {folder} {contender} seed {seed}, {epochs} epochs"
        print(label + " ...", file=sys.stderr, flush=True)
        kind, how = CONTENDERS[contender]
        try:
            if kind == "tripmine":
                run_dir = os.path.join(out, "runs", folder, contender, f"seed{seed}-e{epochs}")
                r = run_tripmine(args, how, manifest, corpus, seed, epochs, run_dir, counts.get("train", 0), log)
            else:
                r = run_pml(args, how, manifest, corpus, seed, epochs, log)
        except RunFailed as e:
            print(f"{label}: FAILED {e}", file=sys.stderr, flush=True)
            failed.add((folder, contender))
            continue
        record = {"corpus": folder, "contender": contender, "seed": seed, "epochs": epochs,
                  "input_size": corpus["input_size"], "channels": corpus["channels"], **COMMON,
                  "train_images": counts.get("train", 0), **r}
        with open(results_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        done[key] = record
        spent += r["wall_s"]
        measured += 1
        left = sum(1 for p in plan[i:] if (p[1], p[6], p[5], p[4]) not in done)
        print(f"{label}: MAP@R {r['map_at_r']:.4f}, P@1 {r['p_at_1']:.4f}, {r['train_images_per_s']:.0f} images/s, "
              f"{r['wall_s']:.0f} s; about {spent / measured * left / 60:.0f} min left", file=sys.stderr, flush=True)

    print(f"\n## Training benchmark ({variant}): test split, last checkpoint, dim {COMMON['dim']}, "
          f"P×K {COMMON['P']}×{COMMON['K']}, lr {COMMON['lr']}, no augmentation, {COMMON['threads']} threads, "
          f"seeds {','.join(map(str, seeds))}")
    for cname in corpora:
        corpus = CORPORA[cname]
        folder, _, default_epochs = corpus[variant]
        epochs = args.epochs or default_epochs
        counts = split_counts(os.path.join(args.data, folder, "manifest.csv"))
        rows = {}
        for contender in contenders:
            rows[contender] = [done[(folder, contender, s, epochs)] for s in seeds if (folder, contender, s, epochs) in done]
        title = (f"{folder}: {counts.get('train', 0)} train / {counts.get('val', 0)} val / {counts.get('test', 0)} test "
                 f"images, {corpus['input_size']}×{corpus['input_size']}×{corpus['channels']}, {epochs} epochs")
        print_table(title, contenders, rows, seeds, {c for f, c in failed if f == folder})
    print(f"\nraw results: {results_path}; logs: {log}")


if __name__ == "__main__":
    main()
