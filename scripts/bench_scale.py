"""make bench-scale: whole-corpus mining past one process, side by side on one machine.

A synthetic corpus (a generator, no download: --rows x --dim unit rows, --per-class rows per
class around random centres) is mined with semihard, 1 negative per anchor, by:

  tripmine-exact      tripmine.mine(knn="exact") in memory, one process (all cores)
  tripmine-classes    tripmine.mine(knn="classes") in memory (approximate: recall below)
  tripmine-cli-shards `tripmine mine --embeddings SHARDS/ --knn exact` (out of core, one process)
  tripmine-cli-shards-classes
                      the same with --knn classes --candidate-classes N (out of core,
                      approximate: recall below)
  ray-1, ray-2        tripmine.ray.mine on a local Ray cluster of 1 and 2 worker CPUs, start-up
                      included (grid: one anchor block per worker x 4 corpus blocks; with
                      --ray-knn classes, the classes path on 8 x 4 blocks)
  faiss-flat          faiss IndexFlatIP.search(x, 64) of every row, what a faiss user runs
                      before filtering negatives (no mining: a lower bound on exact search)

Each runs in a child process of its own: seconds, and the peak resident memory (VmHWM) of
its largest process (the Python driver, the tripmine CLI, or the largest Ray worker). tripmine's exact contenders must give the
same triplets (checked), and so must the classes path in memory and out of core. The classes
path's recall is measured against a float64 numpy miner on --sample anchors (the corpus
scanned a chunk at a time, so 10^7 rows fit). From ray-1's block times the 100M / 1B plan is printed.

    .venv-bench/bin/python scripts/bench_scale.py --rows 100000 --out out/bench-scale
    .venv-bench/bin/python scripts/bench_scale.py --rows 10000000 --shard-rows 250000 \
        --contenders tripmine-cli-shards-classes --out out/bench-scale
"""

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np


def corpus(rows, dim, per_class, seed=0, out=None, chunk=1_000_000):
    """Rows around random class centres (noise 0.9 per coordinate), in random order, made a
    chunk at a time into `out` (an array, or a float32 .npy memmap at 10^7 rows) so that the
    generator's peak stays near one chunk's."""
    rng = np.random.default_rng(seed)
    classes = rows // per_class
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    labels = rng.permutation(np.repeat(np.arange(classes), per_class)[:rows])
    x = np.empty((rows, dim), np.float32) if out is None else out
    for start in range(0, rows, chunk):
        part = centres[labels[start:start + chunk]]
        part += 0.9 * rng.standard_normal(part.shape, dtype=np.float32)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        x[start:start + chunk] = part
    return x, labels


def vm_hwm_mb(pid="self"):
    """A process's peak resident memory (Linux VmHWM), MB; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next(l for l in f if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return None


def ray_workers_peak_mb():
    """The largest VmHWM among this machine's Ray worker processes (named ray::...)."""
    peaks = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if cmd.startswith(b"ray::"):
            peaks.append(vm_hwm_mb(pid) or 0)
    return max(peaks, default=None)


def run_child(args):
    """One contender, in this process; prints its JSON result on the last line."""
    import tripmine

    data = np.load(os.path.join(args.work, "x.npy"), mmap_mode="r")
    labels = np.load(os.path.join(args.work, "labels.npy"))
    shards = os.path.join(args.work, "shards")
    out = {}
    t = time.perf_counter()
    if args.child in ("tripmine-exact", "tripmine-classes"):
        r = tripmine.mine(np.ascontiguousarray(data), labels, knn=args.child.split("-")[1], candidate_classes=args.candidate_classes)
        out["triplets"] = len(r)
        np.save(os.path.join(args.work, f"{args.child}.npy"), np.stack([r.anchor, r.negative]))
    elif args.child in ("tripmine-cli-shards", "tripmine-cli-shards-classes"):
        knn = "classes" if args.child.endswith("classes") else "exact"
        csv_path = os.path.join(args.work, f"{args.child}.csv")
        command = [args.bin, "mine", "--embeddings", shards, "--out", csv_path, "--knn", knn]
        if knn == "classes":
            command += ["--candidate-classes", str(args.candidate_classes)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr)
        # No paths in the shards: the CSV names rows by their corpus row.
        anchor, negative = [], []
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                anchor.append(int(row["anchor"]))
                negative.append(int(row["negative"]))
        out["triplets"] = len(anchor)
        np.save(os.path.join(args.work, f"{args.child}.npy"), np.stack([np.array(anchor), np.array(negative)]))
        # The CLI's summary says its own peak ("... (peak memory N MB) ...").
        out["peak_mb"] = float(done.stdout.split("peak memory ")[1].split(" MB")[0])
    elif args.child.startswith("ray-"):
        import ray
        import tripmine.ray

        workers = int(args.child.split("-")[1])
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        if args.ray_knn == "classes":
            # Eight anchor blocks keep each block's class picks (rows x candidates) small.
            r = tripmine.ray.mine(shards, knn="classes", candidate_classes=args.candidate_classes, anchor_blocks=8, corpus_blocks=4, verify=False)
        else:
            r = tripmine.ray.mine(shards, anchor_blocks=workers, corpus_blocks=4, verify=False)
        out["triplets"] = len(r)
        np.save(os.path.join(args.work, f"{args.child}.npy"), np.stack([r.anchor, r.negative]))
        out["peak_mb"] = max(ray_workers_peak_mb() or 0, vm_hwm_mb() or 0)
        ray.shutdown()
    elif args.child == "faiss-flat":
        import faiss

        index = faiss.IndexFlatIP(data.shape[1])
        index.add(np.ascontiguousarray(data))
        index.search(np.ascontiguousarray(data), 64)
        out["triplets"] = 0
        out["threads"] = faiss.omp_get_max_threads()
    out["seconds"] = time.perf_counter() - t
    out.setdefault("peak_mb", vm_hwm_mb())
    print(json.dumps(out))


def float64_recall(x, labels, got, sample, margin=0.2, seed=1, chunk=100_000):
    """Share of sampled anchors whose mined semihard negative (hardest positive, the nearest
    row in the band) is a float64 numpy miner's; the corpus is scanned a chunk at a time."""
    rng = np.random.default_rng(seed)
    anchors = np.sort(rng.choice(len(x), size=min(sample, len(x)), replace=False))
    mined = dict(zip(got[0].tolist(), got[1].tolist()))
    a64 = np.asarray(x[anchors], np.float64)
    la = labels[anchors]
    # d(a, p) of the hardest positive, from each anchor's class members.
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], la, side="left")
    ends = np.searchsorted(labels[order], la, side="right")
    d_ap = np.full(len(anchors), np.nan)
    for i, (a, s, e) in enumerate(zip(anchors, starts, ends)):
        members = order[s:e]
        members = members[members != a]
        if len(members):
            dots = np.asarray(x[members], np.float64) @ a64[i]
            d_ap[i] = np.sqrt(np.clip(2 - 2 * dots, 0, None)).max()
    best = np.full(len(anchors), np.inf)
    want = np.full(len(anchors), -1)
    for start in range(0, len(x), chunk):
        rows = np.asarray(x[start:start + chunk], np.float64)
        d = np.sqrt(np.clip(2 - 2 * rows @ a64.T, 0, None))
        band = (labels[start:start + chunk, None] != la[None, :]) & (d > d_ap) & (d <= d_ap + margin)
        d[~band] = np.inf
        nearest = d.argmin(axis=0)
        closer = d[nearest, np.arange(len(anchors))] < best
        best[closer] = d[nearest, np.arange(len(anchors))][closer]
        want[closer] = start + nearest[closer]
    scored = want >= 0
    hits = sum(mined.get(int(a)) == int(w) for a, w in zip(anchors[scored], want[scored]))
    return hits / max(scored.sum(), 1), int(scored.sum())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--shard-rows", type=int, default=25_000)
    p.add_argument("--sample", type=int, default=1000)
    p.add_argument("--candidate-classes", type=int, default=500)
    p.add_argument("--ray-knn", default="exact", choices=["exact", "classes"], help="what ray-1 and ray-2 mine with")
    p.add_argument("--bin", default="target/release/tripmine")
    p.add_argument("--out", default="out/bench-scale")
    p.add_argument("--contenders", default="tripmine-exact,tripmine-classes,tripmine-cli-shards,ray-1,ray-2,faiss-flat")
    p.add_argument("--child")
    p.add_argument("--work")
    args = p.parse_args()
    if args.child:
        return run_child(args)
    import tripmine

    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-scale-", dir=args.out)
    # Made straight into x.npy, which every contender maps (10^7 rows are 5.1 GB).
    x = np.lib.format.open_memmap(os.path.join(work, "x.npy"), mode="w+", dtype=np.float32, shape=(args.rows, args.dim))
    x, labels = corpus(args.rows, args.dim, args.per_class, out=x)
    x.flush()
    np.save(os.path.join(work, "labels.npy"), labels)
    tripmine.write_shards(os.path.join(work, "shards"), x, labels, shard_rows=args.shard_rows)
    results = []
    for name in args.contenders.split(","):
        t = time.perf_counter()
        log = open(os.path.join(work, f"{name}.log"), "w+")
        child = subprocess.Popen([sys.executable, __file__, "--child", name, "--work", work, "--bin", os.path.abspath(args.bin), "--candidate-classes", str(args.candidate_classes), "--ray-knn", args.ray_knn], stdout=log, stderr=subprocess.STDOUT)
        _, status, _ = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t
        log.seek(0)
        output = log.read()
        if os.waitstatus_to_exitcode(status):
            print(f"{name} failed:\n{output[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(output.strip().splitlines()[-1])
        r.update(contender=name, wall_seconds=wall)
        results.append(r)
        print(f"{name:22s} {r['seconds']:8.1f} s (process {wall:6.1f} s)  peak {r['peak_mb']:7.0f} MB  {r['triplets']} triplets", file=sys.stderr)
    by = {r["contender"]: r for r in results}
    exact = os.path.join(work, "tripmine-exact.npy")
    for name in ("tripmine-cli-shards", "ray-1", "ray-2"):
        path = os.path.join(work, f"{name}.npy")
        if os.path.exists(exact) and os.path.exists(path):
            by[name]["equal_to_exact"] = bool(np.array_equal(np.load(exact), np.load(path)))
    if args.ray_knn == "classes":
        # Ray's classes path reads the shards' label codes (names in order), as the CLI does.
        for name in ("ray-1", "ray-2"):
            path = os.path.join(work, f"{name}.npy")
            if name in by and os.path.exists(path):
                by[name]["equal_to_exact"] = None
        if "ray-1" in by and "ray-2" in by:
            by["ray-2"]["equal_to_ray_1"] = bool(np.array_equal(np.load(os.path.join(work, "ray-1.npy")), np.load(os.path.join(work, "ray-2.npy"))))
    for name in ("tripmine-classes", "tripmine-cli-shards-classes", "ray-2" if args.ray_knn == "classes" else ""):
        path = os.path.join(work, f"{name}.npy")
        if name in by and os.path.exists(path):
            by[name]["recall_float64"], scored = float64_recall(x, labels, np.load(path), args.sample)
            by[name]["recall_anchors"] = scored
            by[name]["candidate_classes"] = args.candidate_classes
    if "tripmine-classes" in by and "tripmine-cli-shards-classes" in by:
        same = np.array_equal(np.load(os.path.join(work, "tripmine-classes.npy")), np.load(os.path.join(work, "tripmine-cli-shards-classes.npy")))
        by["tripmine-cli-shards-classes"]["equal_to_in_memory_classes"] = bool(same)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"\n{args.rows:,} x {args.dim} rows, {args.rows // args.per_class:,} classes; {machine}")
    print("| contender | seconds (process) | peak memory, largest process | triplets | note |")
    print("|---|---|---|---|---|")
    for r in results:
        note = []
        if r.get("equal_to_exact") is not None:
            note.append("same triplets as tripmine-exact" if r["equal_to_exact"] else "DIFFERS from tripmine-exact")
        if "equal_to_ray_1" in r:
            note.append("same triplets as ray-1" if r["equal_to_ray_1"] else "DIFFERS from ray-1")
        if "threads" in r:
            note.append(f"k=64 search only, {r['threads']} OpenMP threads")
        if "recall_float64" in r:
            note.append(f"{r['candidate_classes']} candidate classes: negative recall {r['recall_float64']:.4f} vs float64 on {r['recall_anchors']} anchors")
        if "equal_to_in_memory_classes" in r:
            note.append("same triplets as tripmine-classes" if r["equal_to_in_memory_classes"] else "DIFFERS from tripmine-classes")
        print(f"| {r['contender']} | {r['seconds']:.1f} ({r['wall_seconds']:.1f}) | {r['peak_mb']:.0f} MB | {r['triplets']:,} | {'; '.join(note)} |")
    if "ray-1" in by and "ray-2" in by:
        print(f"\nray-2 is {by['ray-1']['wall_seconds'] / by['ray-2']['wall_seconds']:.2f}x faster than ray-1 (process times)")
    single = "tripmine-classes" if args.ray_knn == "classes" else "tripmine-exact"
    if single in by and "ray-2" in by:
        print(f"ray-2 takes {by['ray-2']['wall_seconds'] / by[single]['wall_seconds']:.2f}x {single}'s process time")
    if "ray-1" in by and args.ray_knn == "exact":
        # Exact mining is 2 N^2 d multiply-adds; one worker CPU's measured rate plans the rest.
        rate = 2 * args.rows**2 * args.dim / by["ray-1"]["seconds"]
        print(f"\none worker CPU mined at {rate / 1e9:.0f} GFLOP/s (exact, whole run). Exact mining of")
        for n in (100_000_000, 1_000_000_000):
            cpu_hours = 2 * n**2 * args.dim / rate / 3600
            plans = ", ".join(f"{cpu_hours / c:,.0f} h on {c:,} CPUs" for c in (256, 4096))
            print(f"  {n:,} rows: {cpu_hours:,.0f} CPU-hours ({plans}); rows alone {n * args.dim * 4 / 1e9:,.0f} GB")
    with open(os.path.join(args.out, "results.jsonl"), "w") as f:
        for r in results:
            f.write(json.dumps(dict(r, rows=args.rows, dim=args.dim, machine=machine)) + "\n")


if __name__ == "__main__":
    main()
