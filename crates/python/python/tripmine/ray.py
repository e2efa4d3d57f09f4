"""tripmine on a Ray cluster: whole-corpus mining and retrieval metrics over a shard
directory, block by block.

The corpus is cut into a grid: *anchor blocks* (consecutive shards, so whole classes) by
*corpus blocks* (consecutive shards). Ray runs the steps of ``tripmine_core``'s blocked miner
as tasks, each reading its shards from the directory (memory-mapped) and passing numpy
arrays through Ray's object store:

    questions(anchor block)                     the bands each anchor asks (d(a,p) known)
    [classes path: summaries(anchor block)      each class's mean and radius, broadcast
                   pick(anchor block, questions, every summary)  the classes each band searches]
    answer(anchor block, questions, corpus block)  each band's k nearest there, exact d(a,n)
    finalise(anchor block, questions, answers…)    merge (by row id) and assemble triplets

The driver holds object references, not rows. The output equals ``tripmine.mine(...,
knn=knn)`` on the same rows (tests/test_ray.py checks every grid and strategy). Ray does
the scheduling, transport, retries (``max_retries``) and lost-object rebuilding; a finished
anchor block is written to ``checkpoint`` so that a restarted driver resumes.
"""

import argparse
import json
import os
import sys

import numpy as np

from . import MiningResult, _count, _tripmine
from .shards import read_shards

__all__ = ["mine", "evaluate", "main"]

# A test hook: the answer task of the grid's last block exits its worker once (the marker
# file records that it did), so the tests see Ray retry it.
EXIT_ONCE = "TRIPMINE_RAY_EXIT_ONCE"


def _split(names, count):
    """``count`` consecutive groups of ``names`` (at most one per name)."""
    count = max(1, min(int(count), len(names)))
    bounds = np.linspace(0, len(names), count + 1).round().astype(int)
    return [names[bounds[g] : bounds[g + 1]] for g in range(count)]


def _load(directory, names):
    """Rows, label codes and corpus rows of shards ``names`` (memory-mapped, then one copy)."""
    parts = []
    for name in names:
        at = lambda suffix: os.path.join(directory, name + suffix)  # noqa: E731
        parts.append((np.load(at(".npy"), mmap_mode="r"), np.load(at(".labels.npy")), np.load(at(".rows.npy"))))
    return tuple(np.ascontiguousarray(np.concatenate([p[i] for p in parts])) for i in range(3))


def _questions(directory, anchors, rules, corpus_rows, normalise):
    x, codes, ids = _load(directory, anchors)
    return _tripmine.block_questions(x, codes, ids, rules=rules, corpus_rows=corpus_rows, normalise=normalise)


def _summaries(directory, names, normalise):
    return _tripmine.class_summaries(*_load(directory, names), normalise=normalise)


def _pick(directory, anchors, questions, rules, normalise, classes, candidate_classes, *summaries):
    x, codes, ids = _load(directory, anchors)
    return _tripmine.block_pick(
        x, codes, ids, questions, list(summaries),
        classes=classes, candidate_classes=candidate_classes, rules=rules, normalise=normalise,
    )


def _answer(directory, anchors, questions, picks, corpus, rules, normalise, exit_once):
    import ray

    retried = False
    if exit_once:
        if not os.path.exists(exit_once):
            open(exit_once, "w").close()
            os._exit(1)
        retried = True
    a = _load(directory, anchors)
    c = _load(directory, corpus)
    if picks is None:
        out = _tripmine.block_answer(*a, questions, *c, rules=rules, normalise=normalise)
    else:
        out = _tripmine.block_answer_picked(*a, questions, picks, *c, rules=rules, normalise=normalise)
    out["retried"] = retried
    out["node"] = ray.get_runtime_context().get_node_id()
    return out


def _finalise(directory, anchors, questions, rules, corpus_rows, normalise, candidate_classes, *answers):
    merged = _tripmine.block_merge(questions, list(answers))
    x, codes, ids = _load(directory, anchors)
    columns = _tripmine.block_finalise(
        x, codes, ids, questions, merged,
        rules=rules, corpus_rows=corpus_rows, normalise=normalise, candidate_classes=candidate_classes,
    )
    columns["retried"] = [j for j, a in enumerate(answers) if a["retried"]]
    columns["nodes"] = sorted({a["node"] for a in answers})
    return columns


_COLUMNS = ("anchor", "positive", "negative", "d_ap", "d_an")


class _Checkpoint:
    """Finished anchor blocks of one run (same shards, rules and grid), one file each."""

    def __init__(self, directory, key):
        self.directory = directory
        if directory is None:
            return
        os.makedirs(directory, exist_ok=True)
        run = os.path.join(directory, "run.json")
        if os.path.exists(run):
            with open(run) as f:
                recorded = json.load(f)
            if recorded != key:
                raise ValueError(
                    f"checkpoint {directory} belongs to another run (other shards, rules or grid); "
                    "remove it or pass another checkpoint directory"
                )
        else:
            self._write(run, lambda f: f.write(json.dumps(key).encode()))

    def _write(self, path, write):
        staging = f"{path}.writing-{os.getpid()}"
        with open(staging, "wb") as f:
            write(f)
        os.replace(staging, path)

    def _path(self, block):
        return os.path.join(self.directory, f"block-{block:05d}.npz")

    def load(self, block):
        if self.directory is None or not os.path.exists(self._path(block)):
            return None
        with np.load(self._path(block)) as z:
            columns = {c: z[c] for c in _COLUMNS}
            columns["kind"] = z["kind"].tolist()
            columns["stats"] = str(z["stats"])
        return columns

    def save(self, block, columns):
        if self.directory is None:
            return
        arrays = {c: columns[c] for c in _COLUMNS}
        arrays["kind"] = np.asarray(columns["kind"], dtype=str)
        arrays["stats"] = np.asarray(columns["stats"])
        self._write(self._path(block), lambda f: np.savez(f, **arrays))


def _task_options(num_cpus, max_retries):
    """Every task's Ray options: its CPUs, and as many Rust threads."""
    num_cpus = _count("num_cpus", num_cpus, 1)
    return dict(
        num_cpus=num_cpus,
        max_retries=_count("max_retries", max_retries),
        runtime_env={"env_vars": {"RAYON_NUM_THREADS": str(num_cpus)}},
    )


def _progress(done, total):
    if sys.stderr.isatty():
        end = "\n" if done == total else ""
        print(f"\rmining: {done}/{total} anchor blocks", end=end, file=sys.stderr, flush=True)


def mine(
    directory,
    *,
    out=None,
    strategy="semihard",
    negatives_per_anchor=1,
    positives="hardest",
    margin=0.2,
    distance="euclidean",
    seed=0,
    skip_nearest=0,
    negative_floor=0.0,
    max_search_depth=4096,
    knn="exact",
    candidate_classes=500,
    normalise=False,
    anchor_blocks=None,
    corpus_blocks=None,
    num_cpus=1,
    max_retries=3,
    checkpoint=None,
    verify=True,
):
    """Mines a shard directory on Ray, as ``tripmine.mine`` mines the same rows with the same
    ``knn`` (same options, same triplets). Uses the cluster of the ``ray.init`` the caller
    made, else starts a local one.

    knn: "exact", or "classes" (each anchor block picks its ``candidate_classes`` nearest
    classes from every class's mean and radius, which tasks compute per anchor block and Ray
    broadcasts; each corpus block then scores only their members).

    anchor_blocks, corpus_blocks: the grid (default: one block per shard each way).
    num_cpus: CPUs per task (and its Rust threads). max_retries: Ray's, per task.
    checkpoint: a directory where finished anchor blocks are kept; a run with the same shards,
    rules and grid resumes from it. out: a triplet CSV written with its sidecar, as
    ``tripmine mine --out`` writes them. verify: check every shard's SHA-256 first.
    Returns a ``MiningResult`` whose rows are the corpus's (input order of ``write_shards``).
    """
    import ray

    shards = read_shards(directory, verify=verify)
    directory = os.path.abspath(os.fspath(directory))
    n = shards.rows
    if negatives_per_anchor is not None:
        negatives_per_anchor = _count("negatives_per_anchor (or None for every negative)", negatives_per_anchor, 1)
    rules = _tripmine.mining_rules(
        corpus_rows=n,
        strategy=str(strategy),
        negatives_per_anchor=negatives_per_anchor,
        positives=str(positives),
        margin=float(margin),
        distance=str(distance),
        seed=_count("seed", seed),
        skip_nearest=_count("skip_nearest", skip_nearest),
        negative_floor=float(negative_floor),
        max_search_depth=_count("max_search_depth", max_search_depth, 1),
    )
    if knn not in ("exact", "classes"):
        raise ValueError(f"knn={knn!r}: on Ray, 'exact' or 'classes' (HNSW is built over a corpus in memory)")
    classes = len(shards.manifest["labels"])
    # The level searches at most every class, as in memory.
    candidates = min(_count("candidate_classes", candidate_classes, 1), max(classes, 1)) if knn == "classes" else None
    names = shards.names
    anchor_groups = _split(names, anchor_blocks or len(names))
    corpus_groups = _split(names, corpus_blocks or len(names))
    grid = [len(anchor_groups), len(corpus_groups)]
    key = {"shards": shards.digest(), "rules": json.loads(rules), "grid": grid, "normalise": bool(normalise)}
    if candidates is not None:
        key.update(knn="classes", candidate_classes=candidates)
    saved = _Checkpoint(checkpoint and os.fspath(checkpoint), key)
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    options = _task_options(num_cpus, max_retries)
    questions_task = ray.remote(_questions).options(**options)
    # Blocks are compute-bound: spread over the nodes rather than packed on the driver's.
    answer_task = ray.remote(_answer).options(scheduling_strategy="SPREAD", **options)
    finalise_task = ray.remote(_finalise).options(**options)
    exit_once = os.environ.get(EXIT_ONCE)
    blocks, pending, nodes = {}, {}, set()
    summaries = None
    for i, anchors in enumerate(anchor_groups):
        blocks[i] = saved.load(i)
        if blocks[i] is not None:
            continue
        questions = questions_task.remote(directory, anchors, rules, n, normalise)
        picks = None
        if candidates is not None:
            if summaries is None:
                # Anchor blocks hold whole classes: their summaries are every class's, once.
                summary_task = ray.remote(_summaries).options(scheduling_strategy="SPREAD", **options)
                summaries = [summary_task.remote(directory, group, normalise) for group in anchor_groups]
            picks = ray.remote(_pick).options(**options).remote(
                directory, anchors, questions, rules, normalise, classes, candidates, *summaries
            )
        answers = [
            answer_task.remote(
                directory,
                anchors,
                questions,
                picks,
                corpus,
                rules,
                normalise,
                exit_once if (i, j) == (grid[0] - 1, grid[1] - 1) else None,
            )
            for j, corpus in enumerate(corpus_groups)
        ]
        pending[finalise_task.remote(directory, anchors, questions, rules, n, normalise, candidates, *answers)] = i
    resumed = grid[0] - len(pending)
    if resumed:
        print(f"tripmine.ray: {resumed} of {grid[0]} anchor blocks resumed from {checkpoint}", file=sys.stderr)
    _progress(resumed, grid[0])
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            i = pending.pop(ref)
            columns = ray.get(ref)
            nodes.update(columns.pop("nodes"))
            for j in columns.pop("retried"):
                print(f"tripmine.ray: block ({i}, {j}) ran again after its worker died", file=sys.stderr)
            saved.save(i, columns)
            blocks[i] = columns
            _progress(grid[0] - len(pending), grid[0])
    parts = [blocks[i] for i in range(grid[0])]
    merged = {c: np.concatenate([p[c] for p in parts]) for c in _COLUMNS}
    kinds = np.concatenate([np.asarray(p["kind"], dtype=str) for p in parts])
    order = np.argsort(merged["anchor"], kind="stable")
    columns = {c: merged[c][order] for c in _COLUMNS}
    columns["kind"] = kinds[order].tolist()
    stats = json.loads(_tripmine.merge_stats([p["stats"] for p in parts]))
    backend = {
        "name": knn,
        "engine": "ray",
        "anchor_blocks": grid[0],
        "corpus_blocks": grid[1],
        "shards": len(names),
        # Nodes that answered blocks in this call (blocks resumed from a checkpoint not counted).
        "nodes": len(nodes),
    }
    if candidates is not None:
        backend.update(classes=classes, candidate_classes=candidates)
    stats.update(backend=backend, excluded=0, margin=float(margin), distance=str(distance))
    columns["stats"] = json.dumps(stats)
    if out is not None:
        paths, labels = shards.paths()
        _tripmine.write_triplets(
            os.fspath(out),
            columns,
            paths=paths,
            labels=labels,
            rules=rules,
            stats=_tripmine.merge_stats([p["stats"] for p in parts]),
            backend=json.dumps(backend),
            extra=json.dumps({"embeddings": {"shards": directory, "manifest_sha256": shards.digest(), "rows": n}}),
        )
    return MiningResult(columns)


def _eval_relevant(directory, anchors, normalise):
    x, codes, ids = _load(directory, anchors)
    return _tripmine.eval_relevant(x, codes, ids, normalise=normalise)


def _eval_count(directory, anchors, relevant, corpus, normalise):
    return _tripmine.eval_count(*_load(directory, anchors), relevant, *_load(directory, corpus), normalise=normalise)


def _eval_tally(relevant, *counts):
    return _tripmine.eval_tally(relevant, list(counts))


def evaluate(directory, *, normalise=False, anchor_blocks=None, corpus_blocks=None, num_cpus=1, max_retries=3, verify=True):
    """Retrieval metrics of a shard directory on Ray: ``tripmine.evaluate``'s object (P@1,
    R-precision, MAP@R, Recall@K of every row against all others), exact. Each query's
    relevant rows are in its anchor block; each corpus block counts the other-label rows that
    rank above them, counts that add. Same cluster, grid and task options as ``mine``."""
    import ray

    shards = read_shards(directory, verify=verify)
    directory = os.path.abspath(os.fspath(directory))
    names = shards.names
    anchor_groups = _split(names, anchor_blocks or len(names))
    corpus_groups = _split(names, corpus_blocks or len(names))
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    options = _task_options(num_cpus, max_retries)
    relevant_task = ray.remote(_eval_relevant).options(**options)
    count_task = ray.remote(_eval_count).options(scheduling_strategy="SPREAD", **options)
    tally_task = ray.remote(_eval_tally).options(**options)
    tallies = []
    for anchors in anchor_groups:
        relevant = relevant_task.remote(directory, anchors, normalise)
        counts = [count_task.remote(directory, anchors, relevant, corpus, normalise) for corpus in corpus_groups]
        tallies.append(tally_task.remote(relevant, *counts))
    return json.loads(_tripmine.eval_metrics(ray.get(tallies)))


def main(argv=None):
    """``tripmine-ray mine|evaluate --embeddings SHARDS/ [options]``; exit 2 on bad input."""
    p = argparse.ArgumentParser(
        prog="tripmine-ray",
        description="tripmine's mining and retrieval metrics on a Ray cluster, over a shard directory (tripmine.write_shards).",
        epilog="example: tripmine-ray mine --embeddings shards/ --out triplets.csv --strategy semihard=0.7,hard=0.3",
    )
    grid = argparse.ArgumentParser(add_help=False)
    grid.add_argument("--embeddings", required=True, help="shard directory (manifest.json)")
    grid.add_argument("--normalise", action="store_true", help="L2-normalise rows that are not unit length")
    grid.add_argument("--anchor-blocks", type=int, help="anchor blocks (default: one per shard)")
    grid.add_argument("--corpus-blocks", type=int, help="corpus blocks (default: one per shard)")
    grid.add_argument("--cpus-per-task", type=int, default=1)
    grid.add_argument("--address", help="Ray cluster to join (`auto`: the one on this machine); default: a local one")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser(
        "mine",
        parents=[grid],
        help="mine triplets over every shard",
        description="Mines a shard directory on Ray with the same rules and output as `tripmine mine`.",
        epilog="example: tripmine-ray mine --embeddings shards/ --out t.csv --anchor-blocks 8 --corpus-blocks 2 --address auto",
    )
    m.add_argument("--out", required=True, help="triplet CSV to write (its sidecar .json beside it)")
    m.add_argument("--strategy", default="semihard")
    m.add_argument("--negatives-per-anchor", type=int, default=1)
    m.add_argument("--positives", default="hardest", choices=["hardest", "easiest", "random", "all"])
    m.add_argument("--margin", type=float, default=0.2)
    m.add_argument("--distance", default="euclidean", choices=["euclidean", "sqeuclidean", "cosine"])
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--skip-nearest", type=int, default=0)
    m.add_argument("--negative-floor", type=float, default=0.0)
    m.add_argument("--max-search-depth", type=int, default=4096)
    m.add_argument("--knn", default="exact", choices=["exact", "classes"], help="exact, or the classes path (approximate)")
    m.add_argument("--candidate-classes", type=int, default=500, help="classes each anchor searches on the classes path")
    m.add_argument("--checkpoint", help="directory of finished blocks; a restarted run resumes")
    sub.add_parser(
        "evaluate",
        parents=[grid],
        help="P@1, R-precision, MAP@R and Recall@K of every row (JSON, as `tripmine eval --json`)",
        description="Exact retrieval metrics of a shard directory on Ray, every row against all others.",
        epilog="example: tripmine-ray evaluate --embeddings shards/ --address auto",
    )
    args = p.parse_args(argv)
    import ray

    grid_options = dict(
        normalise=args.normalise,
        anchor_blocks=args.anchor_blocks,
        corpus_blocks=args.corpus_blocks,
        num_cpus=args.cpus_per_task,
    )
    try:
        read_shards(args.embeddings, verify=False)  # a bad directory is refused before Ray starts
        ray.init(address=args.address, include_dashboard=False)
        if args.command == "evaluate":
            print(json.dumps(evaluate(args.embeddings, **grid_options)))
            return 0
        result = mine(
            args.embeddings,
            out=args.out,
            strategy=args.strategy,
            negatives_per_anchor=args.negatives_per_anchor,
            positives=args.positives,
            margin=args.margin,
            distance=args.distance,
            seed=args.seed,
            skip_nearest=args.skip_nearest,
            negative_floor=args.negative_floor,
            max_search_depth=args.max_search_depth,
            knn=args.knn,
            candidate_classes=args.candidate_classes,
            checkpoint=args.checkpoint,
            **grid_options,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = result.stats
    print(f"{len(result)} triplets from {s['anchors_with_triplets']} of {s['anchors']} anchors -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
