#!/usr/bin/env python3
"""Side by side: `tripmine mine` and a numpy + faiss-cpu reference miner with the same rules,
plus a float64 check of every contender's triplets.

Usage: .venv-bench/bin/python scripts/bench_mine_faiss.py --bin target/release/tripmine \\
           --out out/bench-mine-faiss [--n 100000] [--per-class 100] [--seed 1] \\
           [--contenders faiss-flat,faiss-flat-native,faiss-hnsw,tripmine-exact,tripmine-classes,
                         tripmine-hnsw]

(`make bench-mine` runs it after `bench_mine`; the bench venv has numpy and faiss-cpu.)

Data: N synthetic clustered 128-d unit vectors (float32), written to OUT/data/X.npy with
OUT/data/labels.csv (one `label` column; tripmine names sample i by its row number). Class
sizes are drawn uniformly from 5..35 (about 20 per class; the last class takes the remainder,
merged into the one before when under 5), or all --per-class; class centres are standard
Gaussian, a sample is its centre plus Gaussian noise of 0.9 per dimension (as
examples/support/synthetic.rs), normalised. Rows are shuffled, so classes interleave.

Rules (those of `tripmine mine --strategy semihard --positives hardest --negatives-per-anchor 5`,
src/definitions.rs): d(a,b) = sqrt(max(0, 2 - 2 a.b)); every sample whose class has 2 or
more members is an anchor; its positive is the farthest same-label sample (exact, in its
class); its negatives are the K = 5 nearest other-label samples n with
0 < d(a,n) - d(a,p) <= margin (0.2): t <= 0 is hard, 0 < t <= m semi-hard, t > m easy.

Contenders (--contenders picks some; each one's result is kept in OUT/<name>/ and reused by a
later run over the same data and settings, unless --rerun; a reused row is marked * in the
table):
  faiss-flat      IndexFlatIP (exact inner product). Positives by numpy, class by class.
                  Negatives: search the nearest 64 + (largest class) neighbours, keep the
                  other-label ones in the band (by faiss's float32 scores), and widen x4 for the
                  anchors whose band is not answered yet (fewer than K found and the list has not
                  yet gone past the band's far edge), up to the whole corpus: exact.
  faiss-flat-native  the same as faiss-flat, in a child process of this Python (this script,
                  run with a hidden flag) whose environment lacks OPENBLAS_CORETYPE and
                  OPENBLAS_L2_SIZE, so OpenBLAS picks its own kernel for this CPU (SkylakeX with
                  AVX-512; the environment here pins Haswell, as older OpenBLAS misbehaves on
                  this CPU). Its triplets are checked against faiss-flat's (vs flat, pair
                  recall); the faster of the two is printed as faiss flat at its best.
  faiss-hnsw      IndexHNSWFlat(M=16, efConstruction=200, inner product), efSearch
                  max(64, depth) per round; the same widening, up to 4096 (tripmine's default
                  --max-search-depth); anchors still unanswered there keep what they have.
  tripmine-exact  BIN mine --knn exact ... --device cpu; the command timed by the wall clock.
  tripmine-classes BIN mine --knn classes ...: each anchor's bands searched in the members
                  of its nearest classes (--candidate-classes, default 500).
  tripmine-hnsw   BIN mine --knn hnsw --hnsw-m 16 --ef-construction 200 --ef-search 64 ...
                  (the same graph settings as faiss-hnsw).
tripmine's times: build = the sidecar's backend.build_seconds (HNSW; none for exact), mining =
the sidecar's wall_seconds - build (reading the files, mining, writing the CSV), total = the
command's wall clock (process start and libtorch loading included). faiss's: build = index
construction, mining = positives + band search, total = reading the files + build + mining +
writing the same CSV (for faiss-flat-native timed inside the child: its process start and
`import faiss` are not counted, as they are not for faiss-flat). Each faiss contender records
the OpenBLAS libraries loaded (threadpoolctl: version, kernel, threads, file) and those two
variables, printed after the table.

Checks (all in float64 from X.npy, with d = sqrt(max(0, 2 - 2 a.b)) and m = 0.2):
  kinds        every row of every contender: its kind recomputed (rows not semi-hard are
               counted); for tripmine also its CSV `kind` column and d_ap/d_an columns compared
               with the recomputation.
  positives    the share of mined anchors whose positive is the float64 farthest same-label
               sample.
  exact-K      on a seeded sample of 200 anchors: the K nearest in-band negatives by float64
               brute force (ties by lower index) against the contender's; the share of anchors
               with exactly that set, and the share of the truth's negatives returned. Each
               mismatch is classified (see mismatch_kind; results.json keeps examples):
               positive, hard_in_edge_slack, edge, tie (float32 rounding at a band edge or at
               the K-th place), missed (a real miss).
  vs flat      over the whole corpus: the anchors whose negatives differ from faiss-flat's
               (up to 2,000 of them, seeded), each judged against the float64 truth: which of
               the two is exact, and why the other is not. This finds rare errors that a
               200-anchor sample misses.
  short        anchors the contender returned fewer than K negatives for, checked against the
               float64 truth (up to 2,000 of them, seeded): how many could have had more.
  pair recall  |contender's (anchor, negative) pairs & faiss-flat's| / |faiss-flat's|.
Prints one markdown table on stdout and writes OUT/results.json; progress goes to stderr.
Timings are wall clock on a shared machine: other load (see results.json's load_average)
slows every contender.
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

DIM = 128
NOISE = 0.9
K = 5
MARGIN = 0.2
START_DEPTH = 64
MAX_DEPTH = 4096
HNSW_M = 16
EF_CONSTRUCTION = 200
EF_SEARCH = 64
SAMPLE_ANCHORS = 200
SHORT_CHECK = 2000
EDGE = 1e-5
# Slack of tripmine's band edges (src/mine/miner.rs, EDGE_SLACK), in dot-product units: used only
# to explain mismatches.
TRIPMINE_EDGE_SLACK = 1e-5
CONTENDERS = ["faiss-flat", "faiss-flat-native", "faiss-hnsw", "tripmine-exact", "tripmine-classes",
              "tripmine-hnsw"]
# The variables that pin OpenBLAS's kernel; faiss-flat-native runs with both removed.
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# What the child of faiss-flat-native leaves in its OUT/<name>/ for the parent.
CHILD_NPZ, CHILD_JSON = "child_triplets.npz", "child_info.json"
HEADER = ["anchor", "positive", "negative", "anchor_label", "negative_label", "d_ap", "d_an", "kind"]


def log(message):
    print(message, file=sys.stderr, flush=True)


def write_json(path, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------- data

def class_sizes(n, per_class, rng):
    if per_class:
        sizes = [per_class] * (n // per_class)
        rest = n - sum(sizes)
        if rest >= 2 or not sizes:
            sizes.append(rest)
        elif rest:
            sizes[-1] += rest
        return sizes
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(5, 36)))
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] < 5 and len(sizes) > 1:
        sizes[-2] += sizes.pop()
    return sizes


def generate(n, per_class, seed):
    rng = np.random.default_rng(seed)
    sizes = class_sizes(n, per_class, rng)
    centres = rng.standard_normal((len(sizes), DIM))
    labels = np.repeat(np.arange(len(sizes)), sizes)[rng.permutation(n)]
    x = centres[labels] + NOISE * rng.standard_normal((n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.int64), sizes


def prepare_data(args):
    """OUT/data/{X.npy,labels.csv,data.json}; regenerated when the parameters changed."""
    folder = os.path.join(args.out, "data")
    key = {"n": args.n, "per_class": args.per_class, "seed": args.seed, "dim": DIM, "noise": NOISE}
    meta = read_json(os.path.join(folder, "data.json"))
    if meta and meta.get("key") == key and all(
            os.path.exists(os.path.join(folder, f)) for f in ("X.npy", "labels.csv")):
        log(f"data: kept {folder} ({meta['classes']} classes)")
        return folder, meta
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    start = time.perf_counter()
    x, labels, sizes = generate(args.n, args.per_class, args.seed)
    np.save(os.path.join(folder, "X.npy"), x)
    with open(os.path.join(folder, "labels.csv"), "w") as f:
        f.write("label\n")
        f.write("\n".join(map(str, labels.tolist())))
        f.write("\n")
    meta = {"key": key, "classes": len(sizes), "mean_class_size": float(np.mean(sizes)),
            "min_class_size": int(min(sizes)), "max_class_size": int(max(sizes)),
            "seconds": time.perf_counter() - start}
    write_json(os.path.join(folder, "data.json"), meta)
    log(f"data: {args.n} x {DIM} in {len(sizes)} classes (sizes {min(sizes)}..{max(sizes)}), "
        f"{meta['seconds']:.1f} s")
    return folder, meta


def load_data(folder):
    x = np.load(os.path.join(folder, "X.npy"))
    with open(os.path.join(folder, "labels.csv")) as f:
        next(f)
        labels = np.array([int(line) for line in f], dtype=np.int64)
    return x, labels


def class_groups(labels):
    """(members sorted by label, start offsets, end offsets) of every class."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    ends = np.r_[starts[1:], len(labels)]
    return order, starts, ends


def hardest_positives(x, labels, dtype=np.float32):
    """Per sample: the farthest same-label sample and its distance (-1 / nan: no positive)."""
    order, starts, ends = class_groups(labels)
    positive = np.full(len(labels), -1, dtype=np.int64)
    d_ap = np.full(len(labels), np.nan, dtype=dtype)
    for s, e in zip(starts, ends):
        members = order[s:e]
        if len(members) < 2:
            continue
        v = x[members].astype(dtype, copy=False)
        d = np.sqrt(np.maximum(0, 2 - 2 * (v @ v.T)))
        np.fill_diagonal(d, -1)
        j = d.argmax(axis=1)
        positive[members] = members[j]
        d_ap[members] = d[np.arange(len(members)), j]
    return positive, d_ap


# --------------------------------------------------------------------------------------- faiss

def band_mine(search, x, labels, anchors, d_ap, max_depth, extra):
    """The K nearest other-label negatives in each anchor's semi-hard band, by widening k-NN
    searches (search(queries, k) -> (scores, ids), nearest first). Returns (negatives, d_an) as
    anchors x K arrays (-1 / nan where short), the anchors still unanswered at max_depth and
    the number of anchors searched per round."""
    n = len(labels)
    negatives = np.full((len(anchors), K), -1, dtype=np.int64)
    d_an = np.full((len(anchors), K), np.nan, dtype=np.float32)
    pending = np.arange(len(anchors))
    depth = min(START_DEPTH, max_depth)
    rounds, unanswered = [], 0
    while pending.size:
        k = min(depth + extra, n)
        last = depth >= max_depth or k >= n
        rounds.append({"depth": depth, "k": k, "anchors": int(pending.size)})
        still = []
        chunk = max(1, (1 << 22) // k)
        for lo in range(0, pending.size, chunk):
            rows = pending[lo:lo + chunk]
            q = anchors[rows]
            scores, ids = search(x[q], k)
            valid = ids >= 0
            other = valid & (labels[np.where(valid, ids, 0)] != labels[q][:, None])
            d = np.sqrt(np.maximum(np.float32(0), 2 - 2 * scores))
            near = d_ap[rows][:, None]
            far = near + np.float32(MARGIN)
            inband = other & (d > near) & (d <= far)
            count = inband.sum(axis=1)
            exhausted = ~valid[:, -1] | (k >= n)
            passed = valid[:, -1] & (d[:, -1] > far[:, 0])
            complete = (count >= K) | exhausted | passed
            done = complete | last
            unanswered += int((done & ~complete).sum())
            rank = np.cumsum(inband, axis=1)
            r, c = np.nonzero(inband & (rank <= K) & done[:, None])
            negatives[rows[r], rank[r, c] - 1] = ids[r, c]
            d_an[rows[r], rank[r, c] - 1] = d[r, c]
            still.append(rows[~done])
        pending = np.concatenate(still)
        depth *= 4
        if max_depth < n:
            depth = min(depth, max_depth)
    return negatives, d_an, unanswered, rounds


def run_faiss(name, args, data_dir, out_dir):
    import faiss
    start_all = time.perf_counter()
    x, labels = load_data(data_dir)
    load_s = time.perf_counter() - start_all
    n = len(labels)
    start = time.perf_counter()
    if name.startswith("faiss-flat"):
        index = faiss.IndexFlatIP(DIM)
        index.add(x)
        max_depth = n

        def search(q, k):
            return index.search(q, k)
    else:
        index = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        index.add(x)
        max_depth = MAX_DEPTH

        def search(q, k):
            index.hnsw.efSearch = max(EF_SEARCH, k)
            return index.search(q, k)
    build_s = time.perf_counter() - start
    log(f"{name}: index built in {build_s:.1f} s")

    start = time.perf_counter()
    positive, d_ap = hardest_positives(x, labels)
    positives_s = time.perf_counter() - start
    anchors = np.flatnonzero(positive >= 0)
    extra = int(np.bincount(labels).max())
    negatives, d_an, unanswered, rounds = band_mine(search, x, labels, anchors, d_ap[anchors],
                                                    max_depth, extra)
    mining_s = time.perf_counter() - start
    log(f"{name}: mined in {mining_s:.1f} s (positives {positives_s:.1f} s); rounds "
        + ", ".join(f"{r['anchors']} at k={r['k']}" for r in rounds))

    start = time.perf_counter()
    r, c = np.nonzero(negatives >= 0)
    a = anchors[r]
    triplets = {"anchor": a, "positive": positive[a], "negative": negatives[r, c]}
    with open(os.path.join(out_dir, "triplets.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(zip(a.tolist(), positive[a].tolist(), negatives[r, c].tolist(),
                        labels[a].tolist(), labels[negatives[r, c]].tolist(),
                        d_ap[a].tolist(), d_an[r, c].tolist(), ["semihard"] * len(a)))
    write_s = time.perf_counter() - start
    return triplets, {
        "build_s": build_s, "mining_s": mining_s, "positives_s": positives_s, "load_s": load_s,
        "write_csv_s": write_s, "total_s": time.perf_counter() - start_all,
        "anchors_unanswered_at_max_depth": unanswered, "max_depth": max_depth, "rounds": rounds,
        "faiss_version": faiss.__version__, "threads": faiss.omp_get_max_threads(),
        "blas": openblas_info(),
        "index": {"type": type(index).__name__} | (
            {"m": HNSW_M, "ef_construction": EF_CONSTRUCTION, "ef_search": f"max({EF_SEARCH}, k)"}
            if name == "faiss-hnsw" else {})}


def openblas_info():
    """The OpenBLAS libraries loaded in this process (faiss's, and numpy's when it bundles one),
    by threadpoolctl: call after importing faiss and numpy. With the variables that pin the
    kernel, as this process sees them (None: unset)."""
    env = {v: os.environ.get(v) for v in OPENBLAS_VARS}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"error": "threadpoolctl not installed", "env": env}
    libs = [{k: lib.get(k) for k in ("architecture", "version", "num_threads", "filepath")}
            for lib in threadpool_info() if lib.get("internal_api") == "openblas"]
    return {"openblas": libs, "env": env}


def blas_line(name, blas):
    """One line: the OpenBLAS kernel(s) a faiss contender ran, and the pinning variables."""
    if not blas:
        return f"{name}: OpenBLAS kernel not recorded"
    env = ", ".join(f"{k}={v}" if v is not None else f"{k} unset" for k, v in blas["env"].items())
    if "error" in blas:
        return f"{name}: OpenBLAS kernel unknown, {blas['error']} ({env})"
    libs = "; ".join(f"OpenBLAS {lib['version']} kernel {lib['architecture']} "
                     f"[{os.path.basename(os.path.dirname(lib['filepath'] or ''))}, "
                     f"{lib['num_threads']} threads]" for lib in blas["openblas"])
    return f"{name}: {libs or 'no OpenBLAS library found by threadpoolctl'} ({env})"


def run_faiss_native(name, args, data_dir, out_dir):
    """faiss-flat in a child process of this Python, without the variables that pin OpenBLAS's
    kernel (removed in the child alone): this script with --_faiss-child runs run_faiss there
    and leaves its triplets and record in out_dir."""
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_VARS}
    cmd = [sys.executable, os.path.abspath(__file__), "--_faiss-child", name, data_dir, out_dir]
    log(f"$ env -u {' -u '.join(OPENBLAS_VARS)} " + " ".join(cmd))
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{name} failed (exit status {proc.returncode}; its messages are above)")
    with np.load(os.path.join(out_dir, CHILD_NPZ)) as z:
        triplets = {k: z[k] for k in z.files}
    info = read_json(os.path.join(out_dir, CHILD_JSON))
    os.remove(os.path.join(out_dir, CHILD_NPZ))
    os.remove(os.path.join(out_dir, CHILD_JSON))
    return triplets, info | {"child_process_wall_s": wall, "command": cmd,
                             "removed_env": list(OPENBLAS_VARS)}


def faiss_child(name, data_dir, out_dir):
    """The child of run_faiss_native: run_faiss, its result left in out_dir for the parent."""
    triplets, info = run_faiss(name, None, data_dir, out_dir)
    np.savez(os.path.join(out_dir, CHILD_NPZ), **triplets)
    write_json(os.path.join(out_dir, CHILD_JSON), info)


# ------------------------------------------------------------------------------------ tripmine

def read_triplet_csv(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header != HEADER:
            sys.exit(f"{path}: header is {','.join(header)}; expected {','.join(HEADER)}")
        rows = list(reader)
    col = {h: i for i, h in enumerate(HEADER)}
    get = lambda name, kind: np.array([kind(r[col[name]]) for r in rows])  # noqa: E731
    return {"anchor": get("anchor", int).astype(np.int64),
            "positive": get("positive", int).astype(np.int64),
            "negative": get("negative", int).astype(np.int64),
            "d_ap": get("d_ap", float), "d_an": get("d_an", float),
            "kind": np.array([r[col["kind"]] for r in rows])}


def run_tripmine(name, args, data_dir, out_dir):
    out_csv = os.path.join(out_dir, "triplets.csv")
    backend = name.split("-", 1)[1]
    cmd = [args.bin, "mine", "--embeddings", os.path.join(data_dir, "X.npy"),
           "--labels", os.path.join(data_dir, "labels.csv"), "--strategy", "semihard",
           "--negatives-per-anchor", str(K), "--positives", "hardest", "--margin", str(MARGIN),
           "--knn", backend, "--device", "cpu", "--out", out_csv]
    if backend == "hnsw":
        cmd += ["--hnsw-m", str(HNSW_M), "--ef-construction", str(EF_CONSTRUCTION),
                "--ef-search", str(EF_SEARCH), "--max-search-depth", str(MAX_DEPTH)]
    log("$ " + " ".join(cmd))
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=args.timeout or None)
    except subprocess.TimeoutExpired:
        log(f"{name}: stopped after {args.timeout} s (--timeout)")
        return None, {"timed_out_s": args.timeout}
    total = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{name} failed (exit status {proc.returncode}):\n{proc.stderr[-3000:]}")
    sidecar = read_json(os.path.join(out_dir, "triplets.json")) or {}
    build = sidecar.get("backend", {}).get("build_seconds")
    wall = sidecar.get("wall_seconds")
    rows = read_triplet_csv(out_csv)
    log(f"{name}: {len(rows['anchor'])} triplets in {total:.1f} s")
    return rows, {"build_s": build, "mining_s": None if wall is None else wall - (build or 0),
                  "total_s": total, "sidecar_wall_seconds": wall, "command": cmd,
                  "sidecar": {k: sidecar.get(k) for k in ("backend", "counts", "anchors",
                                                          "search_depth", "tripmine_version")}}


# ------------------------------------------------------------------------------------- checks

def dots64(x, a, b, chunk=1 << 16):
    out = np.empty(len(a))
    for lo in range(0, len(a), chunk):
        xa = x[a[lo:lo + chunk]].astype(np.float64)
        xb = x[b[lo:lo + chunk]].astype(np.float64)
        out[lo:lo + chunk] = np.einsum("ij,ij->i", xa, xb)
    return out


def dist64(dot):
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * dot))


def kind_of(t):
    return np.where(t <= 0, "hard", np.where(t <= MARGIN, "semihard", "easy"))


def check_kinds(x, t):
    d_ap = dist64(dots64(x, t["anchor"], t["positive"]))
    d_an = dist64(dots64(x, t["anchor"], t["negative"]))
    tt = d_an - d_ap
    kinds = kind_of(tt)
    out = {"rows": int(len(tt)),
           "not_semihard_float64": {k: int((kinds == k).sum()) for k in ("hard", "easy")}}
    bad = np.flatnonzero(kinds != "semihard")
    out["examples_not_semihard"] = [
        {"anchor": int(t["anchor"][i]), "positive": int(t["positive"][i]),
         "negative": int(t["negative"][i]), "t_float64": float(tt[i]),
         **({"d_ap_csv": float(t["d_ap"][i]), "d_an_csv": float(t["d_an"][i]),
             "t_csv_float32": float(np.float32(t["d_an"][i]) - np.float32(t["d_ap"][i]))}
            if "d_ap" in t else {})} for i in bad[:20]]
    if "kind" in t:
        out["csv_kind_differs_from_float64"] = int((t["kind"] != kinds).sum())
        out["csv_kinds"] = {k: int(v) for k, v in zip(*np.unique(t["kind"], return_counts=True))}
        out["max_abs_d_ap_error"] = float(np.abs(t["d_ap"] - d_ap).max(initial=0))
        out["max_abs_d_an_error"] = float(np.abs(t["d_an"] - d_an).max(initial=0))
    return out


class Truth:
    """float64 brute force for chosen anchors: positive, d_ap and the band's members."""

    def __init__(self, x, labels, positive64, d_ap64):
        self.x, self.labels = x, labels
        self.x64 = x.astype(np.float64)
        self.positive, self.d_ap = positive64, d_ap64
        self.cache = {}

    def negatives(self, anchors):
        """anchor -> (truth negatives: the K nearest in the band, ties by lower index; how many
        are in the band; how many other-label samples are hard yet within tripmine's edge slack,
        dot in (to_dot(d_ap), to_dot(d_ap) + slack])."""
        todo = [a for a in anchors if a not in self.cache]
        for lo in range(0, len(todo), 256):
            block = np.array(todo[lo:lo + 256])
            dots = self.x64[block] @ self.x64.T
            for a, row in zip(block.tolist(), dots):
                other = self.labels != self.labels[a]
                t = dist64(row) - self.d_ap[a]
                idx = np.flatnonzero(other & (t > 0) & (t <= MARGIN))
                order = np.lexsort((idx, t[idx]))
                edge_dot = 1 - self.d_ap[a] ** 2 / 2
                near_edge = int((other & (row <= edge_dot + TRIPMINE_EDGE_SLACK) & (t <= 0)).sum())
                self.cache[a] = (idx[order[:K]], len(idx), near_edge)
        return {a: self.cache[a] for a in anchors}

    def t(self, a, js):
        """float64 t = d(a,n) - d(a,p*) for negatives js of anchor a (p* the float64 positive)."""
        js = np.asarray(js, dtype=np.int64)
        return dist64(self.x64[js] @ self.x64[a]) - self.d_ap[a]


def by_anchor(t):
    order = np.argsort(t["anchor"], kind="stable")
    a = t["anchor"][order]
    starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]]) if len(a) else np.array([], int)
    ends = np.r_[starts[1:], len(a)]
    return {int(a[s]): (int(t["positive"][order[s]]), t["negative"][order[s:e]])
            for s, e in zip(starts, ends)}


MISMATCH_KINDS = ["positive", "hard_in_edge_slack", "edge", "tie", "missed"]


def mismatch_kind(a, got_p, got, want, truth, near_edge):
    """Why an anchor's negatives `got` (positive got_p) differ from the float64 truth `want`:
    positive            another positive was chosen (got_p is -1 when the anchor has no triplet);
    hard_in_edge_slack  fewer negatives, all of them right, while an other-label sample lies
                        hard (t <= 0) yet within tripmine's 1e-5 edge slack of the band's
                        near edge: that sample took a place among the K and was then
                        dropped as hard (src/mine/miner.rs EDGE_SLACK, AnchorPlan::assemble);
    edge                every differing negative has |t| or |t - m| under 1e-5 (float32 rounding
                        at a band edge);
    tie                 every differing negative is within 1e-6 of the K-th truth negative
                        (a near-tie for the last place, decided by float32 rounding);
    missed              anything else (a real miss, as an approximate index makes)."""
    if got_p >= 0 and got_p != truth.positive[a]:
        return "positive"
    if len(got) < len(want) and near_edge > 0 and set(got.tolist()) <= set(want.tolist()):
        return "hard_in_edge_slack"
    td = truth.t(a, np.setxor1d(want, got))
    if np.all((np.abs(td) < EDGE) | (np.abs(td - MARGIN) < EDGE)):
        return "edge"
    if len(want) == K and np.all(np.abs(td - truth.t(a, want).max()) < 1e-6):
        return "tie"
    return "missed"


def check_exact_k(t, truth, sample, mined):
    matched_anchors, matched_negatives, total_negatives = 0, 0, 0
    kinds = dict.fromkeys(MISMATCH_KINDS, 0)
    examples = []
    truths = truth.negatives(sample)
    for a in sample:
        want, _, near_edge = truths[a]
        got_p, got = mined.get(a, (-1, np.array([], dtype=np.int64)))
        total_negatives += len(want)
        matched_negatives += len(np.intersect1d(want, got))
        if set(want.tolist()) == set(got.tolist()):
            matched_anchors += 1
            continue
        why = mismatch_kind(a, got_p, got, want, truth, near_edge)
        kinds[why] += 1
        if len(examples) < 20:
            diff = np.setxor1d(want, got)
            examples.append({
                "anchor": a, "why": why, "positive": got_p, "positive_float64": int(truth.positive[a]),
                "truth": want.tolist(), "got": got.tolist(),
                "t_float64": {int(j): float(v) for j, v in zip(diff, truth.t(a, diff))},
                "missing": np.setdiff1d(want, got).tolist(),
                "extra": np.setdiff1d(got, want).tolist(),
                "hard_within_tripmine_edge_slack": near_edge})
    return {"anchors": len(sample), "exact_anchors": matched_anchors,
            "exact_share": matched_anchors / len(sample),
            "negatives_matched_share": matched_negatives / max(total_negatives, 1),
            "mismatch_kinds": kinds, "examples": examples}


def check_short(t, truth, mined, anchors_all, rng):
    short = [a for a in anchors_all.tolist() if len(mined.get(a, (0, ()))[1]) < K]
    checked = short if len(short) <= SHORT_CHECK else sorted(
        rng.choice(short, SHORT_CHECK, replace=False).tolist())
    truths = truth.negatives(checked)
    could_have_more = [a for a in checked
                       if len(truths[a][0]) > len(mined.get(a, (0, ()))[1])]
    with_slack = sum(1 for a in could_have_more if truths[a][2] > 0)
    return {"short_anchors": len(short), "checked": len(checked),
            "truth_has_more": len(could_have_more),
            "truth_has_more_and_hard_within_edge_slack": with_slack,
            "examples": [{"anchor": a, "got": len(mined.get(a, (0, ()))[1]),
                          "truth_in_band": truths[a][1], "hard_within_edge_slack": truths[a][2]}
                         for a in could_have_more[:10]]}


def check_vs_flat(t, flat, truth, n, rng):
    """Anchors whose negatives differ from faiss-flat's (over the whole corpus), judged by the
    float64 truth: up to SHORT_CHECK of them, seeded."""
    diff = np.setxor1d(pair_keys(t, n), pair_keys(flat, n), assume_unique=True)
    anchors = np.unique(diff // n)
    checked = anchors if len(anchors) <= SHORT_CHECK else np.sort(
        rng.choice(anchors, SHORT_CHECK, replace=False))
    ours, theirs = by_anchor(t), by_anchor(flat)
    truths = truth.negatives(checked.tolist())
    out = {"anchors_differing": int(len(anchors)), "checked": int(len(checked)),
           "contender_exact": 0, "faiss_flat_exact": 0, "neither_exact": 0,
           "contender_mismatch_kinds": dict.fromkeys(MISMATCH_KINDS, 0),
           "faiss_flat_mismatch_kinds": dict.fromkeys(MISMATCH_KINDS, 0), "examples": []}
    empty = (-1, np.array([], dtype=np.int64))
    for a in checked.tolist():
        want, _, near_edge = truths[a]
        for who, mined in (("contender", ours), ("faiss_flat", theirs)):
            got_p, got = mined.get(a, empty)
            if set(got.tolist()) == set(want.tolist()):
                out[f"{who}_exact"] += 1
                continue
            why = mismatch_kind(a, got_p, got, want, truth, near_edge)
            out[f"{who}_mismatch_kinds"][why] += 1
            if len(out["examples"]) < 20:
                out["examples"].append({"anchor": a, "who": who, "why": why, "got": got.tolist(),
                                        "truth": want.tolist()})
    out["neither_exact"] = out["checked"] - out["contender_exact"] - out["faiss_flat_exact"]
    return out


def pair_keys(t, n):
    return np.unique(t["anchor"] * n + t["negative"])


# ---------------------------------------------------------------------------------------- main

def settings_key(name, data_key):
    key = {"data": data_key, "k": K, "margin": MARGIN, "start_depth": START_DEPTH}
    if name.endswith("hnsw"):
        key |= {"m": HNSW_M, "ef_construction": EF_CONSTRUCTION, "ef_search": EF_SEARCH,
                "max_depth": MAX_DEPTH}
    return key


def run_contender(name, args, data_dir, data_key):
    """Runs one contender, or reuses its kept result (same data, settings and binary)."""
    out_dir = os.path.join(args.out, name)
    key = settings_key(name, data_key)
    if name.startswith("tripmine"):
        key["bin"] = os.path.abspath(args.bin)
    elif name.startswith("faiss"):
        key["openblas_env"] = {v: None if name == "faiss-flat-native" else os.environ.get(v)
                               for v in OPENBLAS_VARS}
    saved = read_json(os.path.join(out_dir, "result.json"))
    kept = os.path.join(out_dir, "triplets.npz")
    if not args.rerun and saved and saved.get("key") == key and os.path.exists(kept):
        log(f"{name}: kept the result of an earlier run in {out_dir} (--rerun runs it again)")
        with np.load(kept) as z:
            triplets = {k: z[k] for k in z.files}
        return triplets, saved["info"] | {"cached": True}
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    log(f"{name}: running")
    runner = (run_faiss_native if name == "faiss-flat-native"
              else run_faiss if name.startswith("faiss") else run_tripmine)
    triplets, info = runner(name, args, data_dir, out_dir)
    if triplets is None:
        return None, info | {"cached": False}
    np.savez(kept, **triplets)
    info["load_average_after"] = os.getloadavg()
    write_json(os.path.join(out_dir, "result.json"), {"key": key, "info": info})
    return triplets, info | {"cached": False}


def faiss_flat_best(report):
    """The faster (by total seconds) of faiss-flat and faiss-flat-native when both ran, with
    whether their triplets agree; None otherwise."""
    runs = {n: report[n] for n in ("faiss-flat", "faiss-flat-native")
            if "triplets" in report.get(n, {}) and report[n]["info"].get("total_s") is not None}
    if len(runs) < 2:
        return None
    name = min(runs, key=lambda n: runs[n]["info"]["total_s"])
    other = next(n for n in runs if n != name)
    v = runs["faiss-flat-native"].get("vs_faiss_flat", {})
    differing = v.get("anchors_differing")
    agreement = ("" if differing is None else
                 "; the two mined the same (anchor, negative) pairs" if differing == 0 else
                 f"; their negatives differ on {differing:,} anchors (vs flat, on stderr)")
    return {"name": name, "total_s": runs[name]["info"]["total_s"],
            "mining_s": runs[name]["info"].get("mining_s"), "other": other,
            "other_total_s": runs[other]["info"]["total_s"],
            "anchors_differing": differing, "agreement": agreement}


def fmt(x, digits=1):
    return "—" if x is None else f"{x:,.{digits}f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default="target/release/tripmine")
    p.add_argument("--out", default="out/bench-mine-faiss")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--per-class", type=int, default=0,
                   help="samples per class (default 0: sizes drawn from 5..35)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--rerun", action="store_true", help="run contenders whose result is kept")
    p.add_argument("--timeout", type=float, default=0,
                   help="stop a tripmine command after this many seconds (0: never)")
    p.add_argument("--_faiss-child", nargs=3, metavar=("NAME", "DATA_DIR", "OUT_DIR"),
                   help=argparse.SUPPRESS)  # internal: the child process of faiss-flat-native
    args = p.parse_args()
    if args._faiss_child:
        return faiss_child(*args._faiss_child)
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        sys.exit(f"unknown contender(s) {sorted(unknown)}; choose from {CONTENDERS}")
    if any(c.startswith("faiss") for c in names):
        try:
            import faiss  # noqa: F401
        except ImportError:
            sys.exit("faiss is not installed in this Python: `rm .venv-bench/.ready && make bench-venv` "
                     "(the Makefile's bench venv installs faiss-cpu), or leave out the faiss contenders")
    if any(c.startswith("tripmine") for c in names) and not os.access(args.bin, os.X_OK):
        sys.exit(f"{args.bin}: not an executable (build it: cargo build --release)")
    os.makedirs(args.out, exist_ok=True)
    load_before = os.getloadavg()
    data_dir, meta = prepare_data(args)
    results = {name: run_contender(name, args, data_dir, meta["key"]) for name in names}

    log("checks: float64 recomputation")
    x, labels = load_data(data_dir)
    n = len(labels)
    positive64, d_ap64 = hardest_positives(x, labels, np.float64)
    anchors_all = np.flatnonzero(positive64 >= 0)
    rng = np.random.default_rng(args.seed + 1000)
    sample = sorted(rng.choice(anchors_all, min(SAMPLE_ANCHORS, len(anchors_all)),
                               replace=False).tolist())
    truth = Truth(x, labels, positive64, d_ap64)
    flat = results.get("faiss-flat", (None,))[0]
    flat_pairs = pair_keys(flat, n) if flat is not None else None
    report = {}
    for name, (t, info) in results.items():
        entry = {"info": info}
        if t is not None:
            mined = by_anchor(t)
            got_positive = np.array([mined[a][0] for a in mined])
            want_positive = positive64[np.array(list(mined), dtype=np.int64)]
            entry |= {
                "triplets": int(len(t["anchor"])),
                "anchors_with_triplets": len(mined),
                "kinds": check_kinds(x, t),
                "positives_float64_share": float((got_positive == want_positive).mean())
                if len(mined) else None,
                "exact_k": check_exact_k(t, truth, sample, mined),
                "short": check_short(t, truth, mined, anchors_all,
                                     np.random.default_rng(args.seed + 2000)),
            }
            if flat_pairs is not None:
                pairs = pair_keys(t, n)
                entry["pair_recall_vs_faiss_flat"] = (
                    len(np.intersect1d(pairs, flat_pairs, assume_unique=True)) / len(flat_pairs))
                if name != "faiss-flat":
                    entry["vs_faiss_flat"] = check_vs_flat(
                        t, flat, truth, n, np.random.default_rng(args.seed + 3000))
        report[name] = entry
        log(f"checks: {name} done")

    print(f"\nN = {n:,}, {meta['classes']:,} classes "
          f"({'%d per class' % args.per_class if args.per_class else 'sizes 5..35'}), "
          f"{DIM}-d, semi-hard, hardest positive, K = {K}, margin {MARGIN}, seed {args.seed}, "
          f"{os.cpu_count()} cores\n")
    print("| contender | build s | mining s | total s | triplets | pair recall vs faiss flat "
          "| exact-K anchors (float64 check) | negatives matched (float64) "
          "| rows not semi-hard (float64) | positive = float64 hardest |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, e in report.items():
        i = e["info"]
        star = "*" if i.get("cached") else ""
        if "triplets" not in e:
            print(f"| {name} | | | stopped after {fmt(i.get('timed_out_s'), 0)} s | | | | | | |")
            continue
        ek = e["exact_k"]
        bad = e["kinds"]["not_semihard_float64"]
        recall = e.get("pair_recall_vs_faiss_flat")
        print(f"| {name}{star} | {fmt(i.get('build_s'), 2)} | {fmt(i.get('mining_s'))} "
              f"| {fmt(i.get('total_s'))} | {e['triplets']:,} "
              f"| {'—' if recall is None else f'{recall:.4f}'} "
              f"| {ek['exact_anchors']}/{ek['anchors']} ({100 * ek['exact_share']:.1f}%) "
              f"| {100 * ek['negatives_matched_share']:.2f}% "
              f"| {bad['hard'] + bad['easy']} (hard {bad['hard']}, easy {bad['easy']}) "
              f"| {100 * e['positives_float64_share']:.3f}% |")
    print()
    for name, e in report.items():
        if name.startswith("faiss") and "triplets" in e:
            print(blas_line(name, e["info"].get("blas")))
    best = faiss_flat_best(report)
    if best:
        print(f"faiss flat at its best here: {best['name']} ({fmt(best['total_s'])} s total, "
              f"{fmt(best['mining_s'])} s mining; the other "
              f"{fmt(best['other_total_s'])} s total){best['agreement']}")
    ratios = {}
    print()
    for ours, theirs in (("tripmine-exact", "faiss-flat"), ("tripmine-exact", "faiss-flat-native"),
                         ("tripmine-classes", "faiss-flat"),
                         ("tripmine-classes", "faiss-flat-native"),
                         ("tripmine-classes", "tripmine-exact"), ("tripmine-hnsw", "faiss-hnsw")):
        a, b = report.get(ours, {}).get("info", {}), report.get(theirs, {}).get("info", {})
        if "triplets" in report.get(ours, {}) and "triplets" in report.get(theirs, {}):
            r = {s: (a[s] / b[s] if a.get(s) is not None and b.get(s) else None)
                 for s in ("mining_s", "total_s")}
            ratios[f"{ours} / {theirs}"] = r
            print(f"{ours} / {theirs}: mining {fmt(r['mining_s'], 2)}×, "
                  f"total {fmt(r['total_s'], 2)}×")
    if any(e["info"].get("cached") for e in report.values()):
        print("\n* kept from an earlier run over the same data (its timing is from that run)")
    for name, e in report.items():
        if "triplets" not in e:
            continue
        k, ek, sh = e["kinds"], e["exact_k"], e["short"]
        notes = [f"mismatches {ek['mismatch_kinds']}",
                 f"short anchors {sh['short_anchors']:,} (of {sh['checked']:,} checked, "
                 f"{sh['truth_has_more']:,} could have had more in float64, "
                 f"{sh['truth_has_more_and_hard_within_edge_slack']:,} of them with a hard "
                 f"negative within tripmine's edge slack)"]
        if "vs_faiss_flat" in e:
            v = e["vs_faiss_flat"]
            nonzero = lambda d: {k: n for k, n in d.items() if n}  # noqa: E731
            notes.append(f"anchors whose negatives differ from faiss-flat's: "
                         f"{v['anchors_differing']:,} (checked {v['checked']:,} in float64: "
                         f"{name} exact on {v['contender_exact']:,}, faiss-flat on "
                         f"{v['faiss_flat_exact']:,}; {name} off by "
                         f"{nonzero(v['contender_mismatch_kinds'])}, faiss-flat off by "
                         f"{nonzero(v['faiss_flat_mismatch_kinds'])})")
        if "csv_kind_differs_from_float64" in k:
            notes.append(f"CSV kind differs from float64 on {k['csv_kind_differs_from_float64']} "
                         f"rows; max |d_ap error| {k['max_abs_d_ap_error']:.1e}, "
                         f"max |d_an error| {k['max_abs_d_an_error']:.1e}")
        log(f"{name}: " + "; ".join(notes))
    write_json(os.path.join(args.out, "results.json"), {
        "data": meta, "rules": {"k": K, "margin": MARGIN, "start_depth": START_DEPTH,
                                "hnsw": {"m": HNSW_M, "ef_construction": EF_CONSTRUCTION,
                                         "ef_search": EF_SEARCH, "max_depth": MAX_DEPTH}},
        "sample_anchors": sample, "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "cores": os.cpu_count(),
        "contenders": report, "ratios": ratios, "faiss_flat_best": best})
    log(f"wrote {os.path.join(args.out, 'results.json')}")


if __name__ == "__main__":
    main()
