#!/usr/bin/env python3
"""Side by side: `tripmine audit` and cleanlab's Datalab on real images with planted defects.

Usage: .venv-bench/bin/python scripts/bench_audit_real.py --bin target/release/tripmine \\
           --out out/bench-audit [--corpus DIR] [--seed 1]

(`make bench-audit` runs it; the bench venv has cleanlab, numpy and Pillow.)

Steps, each skipped when it has finished before (OUT/timings.json records the finished ones with
their seconds; delete OUT to start over):
  corpus    scripts/make_audit_corpus.py's held-out Fashion-MNIST corpus with planted defects,
            written to --corpus DIR (default OUT/corpus) when DIR/manifest.csv is missing;
  train     BIN train --corpus DIR/manifest.csv --out OUT/run --seed SEED --input-size 32,
            defaults otherwise (about 10 minutes on 2 cores);
  embed     BIN embed --corpus DIR/manifest.csv --model OUT/run/best --out OUT/embeddings;
  audit     BIN audit --corpus DIR/manifest.csv --embeddings OUT/embeddings --out OUT/audit;
  datalab   cleanlab's Datalab with its label, outlier and near_duplicate checks at their
            defaults, once on tripmine's embeddings (OUT/datalab-embeddings) and once on raw
            pixels scaled to [0, 1] (OUT/datalab-pixels): issues.csv and near_duplicates.json.

Scores per defect kind, with a budget of twice the planted count where a ranking is read:
  relabelled        planted among the 40 first rows of label_issues.csv (tripmine) or the 40
                    lowest label_score (cleanlab); flagged = all rows / is_label_issue, and
                    precision = planted relabels among the flagged / flagged;
  off-distribution  the same with 30, outliers.csv order / lowest outlier_score, is_outlier_issue;
                    recall is also broken down by sort (noise, stripes, shapes);
  conflicts         found when a copy and its original share a group: a duplicates.csv group
                    (tripmine) or a connected component of Datalab's near_duplicate_sets;
                    flagged = groups with mixed labels, precision = those holding a planted pair;
  leaks             the same with leakage.csv groups (tripmine) or near-duplicate components,
                    flagged = groups spanning splits.
Where Datalab's scores tie at the cut (its kNN label scores are multiples of 1/10), the tied share
the remaining places: the count is the expectation over a random order, hence fractions.
Prints a markdown table on stdout and writes OUT/results.json; progress goes to stderr.
"""
import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_audit_corpus  # noqa: E402

# The contenders: each key names both its step (timed in OUT/timings.json) and its output folder.
COLUMNS = [("audit", "tripmine audit"), ("datalab-embeddings", "cleanlab on tripmine's embeddings"),
           ("datalab-pixels", "cleanlab on raw pixels")]
SORTS = ["noise", "stripes", "shapes"]


# Default settings but the input size: the images are 28 px, and the default 64 px would only
# upsample them at four times the cost (about an hour on 2 cores instead of 10 minutes).
TRAIN_ARGS = ["--input-size", "32"]


def log(message):
    print(message, file=sys.stderr, flush=True)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class Steps:
    """Runs each named step once: its seconds are kept in OUT/timings.json when it finishes."""

    def __init__(self, out):
        self.path = os.path.join(out, "timings.json")
        self.seconds = {}
        self.ran = set()
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.seconds = json.load(f)

    def run(self, name, output, action, after=()):
        """Runs action() unless `name` finished before, `output` exists and none of the steps
        it comes `after` ran now; a rerun first deletes `output`."""
        if name in self.seconds and os.path.exists(output) and not self.ran & set(after):
            log(f"{name}: done before ({self.seconds[name]:.1f} s), kept {output}")
            return
        if os.path.isdir(output):
            shutil.rmtree(output)
        log(f"{name}: running")
        start = time.perf_counter()
        action()
        self.ran.add(name)
        self.seconds[name] = time.perf_counter() - start
        log(f"{name}: {self.seconds[name]:.1f} s")
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.seconds, f, indent=1)
        os.replace(self.path + ".tmp", self.path)


def tripmine(binary, *args):
    log("$ " + " ".join([binary, *args]))
    status = subprocess.run([binary, *args], stdout=sys.stderr).returncode
    if status:
        sys.exit(f"tripmine {args[0]} failed (exit status {status})")


def run_tripmine(args, steps, manifest):
    run, embeddings, audit = (os.path.join(args.out, name) for name in ("run", "embeddings", "audit"))
    steps.run("train", run, lambda: tripmine(
        args.bin, "train", "--corpus", manifest, "--out", run, "--seed", str(args.seed), *TRAIN_ARGS),
        after=["corpus"])
    steps.run("embed", embeddings, lambda: tripmine(
        args.bin, "embed", "--corpus", manifest, "--model", os.path.join(run, "best"), "--out", embeddings),
        after=["train"])
    steps.run("audit", audit, lambda: tripmine(
        args.bin, "audit", "--corpus", manifest, "--embeddings", embeddings, "--out", audit), after=["embed"])


def best_validation(run_dir):
    """The metrics.csv row with the best validation MAP@R, or None without one."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.exists(path):
        return None
    rows = [r for r in read_csv(path) if r.get("map_at_r") not in (None, "", "NaN")]
    return max(rows, key=lambda r: float(r["map_at_r"]), default=None)


def embedding_features(embeddings_dir, paths):
    """Rows of embeddings.npy in the order of `paths`, matched through samples.csv."""
    vectors = np.load(os.path.join(embeddings_dir, "embeddings.npy"))
    row = {s["path"]: int(s["index"]) for s in read_csv(os.path.join(embeddings_dir, "samples.csv"))}
    missing = [p for p in paths if p not in row]
    if missing:
        sys.exit(f"{embeddings_dir}: no embedding for {len(missing)} sample(s), e.g. {missing[0]}")
    return vectors[[row[p] for p in paths]]


def pixel_features(corpus_dir, paths):
    """Flattened grey pixels / 255, one row per path."""
    def load(path):
        with Image.open(os.path.join(corpus_dir, path)) as image:
            return np.asarray(image.convert("L"), dtype=np.float32).ravel() / 255

    return np.stack([load(p) for p in paths])


def run_datalab(features, labels, paths, out_dir):
    """Datalab's label, outlier and near-duplicate checks; writes issues.csv and near_duplicates.json."""
    from cleanlab import Datalab
    with contextlib.redirect_stdout(sys.stderr):
        lab = Datalab(data={"label": labels}, label_name="label")
        lab.find_issues(features=features, issue_types={"label": {}, "outlier": {}, "near_duplicate": {}})
    issues = lab.get_issues()
    near = lab.get_info("near_duplicate")["near_duplicate_sets"]
    os.makedirs(out_dir + ".tmp", exist_ok=True)
    columns = ["label_score", "is_label_issue", "outlier_score", "is_outlier_issue"]
    with open(os.path.join(out_dir + ".tmp", "issues.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *columns])
        writer.writerows([p, *(issues[c].iloc[i] for c in columns)] for i, p in enumerate(paths))
    with open(os.path.join(out_dir + ".tmp", "near_duplicates.json"), "w") as f:
        json.dump({paths[i]: [paths[j] for j in js] for i, js in enumerate(near) if len(js)}, f, indent=1)
    os.replace(out_dir + ".tmp", out_dir)


def run_cleanlab(args, steps, corpus_dir, manifest_rows):
    paths = [r["path"] for r in manifest_rows]
    labels = [r["label"] for r in manifest_rows]
    embeddings = os.path.join(args.out, "embeddings")
    feature_sets = [("datalab-embeddings", "embed", lambda: embedding_features(embeddings, paths)),
                    ("datalab-pixels", "corpus", lambda: pixel_features(corpus_dir, paths))]
    for name, after, features in feature_sets:
        out_dir = os.path.join(args.out, name)
        steps.run(name, out_dir, lambda: run_datalab(features(), labels, paths, out_dir), after=[after])


def tripmine_findings(audit_dir):
    """Rankings, flags and groups from tripmine's audit outputs."""
    def groups(name):
        members = {}
        for row in read_csv(os.path.join(audit_dir, name)):
            members.setdefault(row["group"], set()).add(row["path"])
        return list(members.values())

    def positions(name):
        return {r["path"]: i for i, r in enumerate(read_csv(os.path.join(audit_dir, name)))}

    label_issues, outliers = positions("label_issues.csv"), positions("outliers.csv")
    return {"label_scores": label_issues, "label_flagged": set(label_issues),
            "outlier_scores": outliers, "outlier_flagged": set(outliers),
            "duplicate_groups": groups("duplicates.csv"), "leak_groups": groups("leakage.csv")}


def components(near_duplicates):
    """Connected components (2 members or more) of the near-duplicate relation, as sets of paths."""
    paths = sorted(set(near_duplicates) | {q for qs in near_duplicates.values() for q in qs})
    index = {p: i for i, p in enumerate(paths)}
    edges = [(index[p], index[q]) for p, qs in near_duplicates.items() for q in qs]
    graph = coo_matrix((np.ones(len(edges)), tuple(zip(*edges)) if edges else ([], [])), shape=(len(paths),) * 2)
    _, component = connected_components(graph, directed=False)
    found = {}
    for path, c in zip(paths, component):
        found.setdefault(c, set()).add(path)
    return [members for members in found.values() if len(members) > 1]


def flagged_paths(rows, flag):
    return {r["path"] for r in rows if r[flag] == "True"}


def datalab_findings(out_dir):
    """Rankings, flags and groups from Datalab's results."""
    rows = read_csv(os.path.join(out_dir, "issues.csv"))
    with open(os.path.join(out_dir, "near_duplicates.json")) as f:
        groups = components(json.load(f))
    return {"label_scores": {r["path"]: float(r["label_score"]) for r in rows},
            "label_flagged": flagged_paths(rows, "is_label_issue"),
            "outlier_scores": {r["path"]: float(r["outlier_score"]) for r in rows},
            "outlier_flagged": flagged_paths(rows, "is_outlier_issue"),
            "duplicate_groups": groups, "leak_groups": groups}


def expected_in_top(scores, paths, budget):
    """How many of `paths` are among the `budget` lowest scores (paths without a score never are).

    Samples tied at the cut share its remaining places: the count is the expectation over a random
    order of the tied (Datalab's kNN label scores are multiples of 1/k, so ties are many). Also
    returns how many samples share the cut's score."""
    ordered = sorted(scores.values())
    if len(ordered) <= budget:
        return len(paths & scores.keys()), 0
    cut = ordered[budget - 1]
    better, tied = sum(s < cut for s in ordered), sum(s == cut for s in ordered)
    scored = paths & scores.keys()
    return (sum(scores[p] < cut for p in scored)
            + sum(scores[p] == cut for p in scored) * (budget - better) / tied), tied


def ranked_score(scores, flagged, planted):
    """Planted among the 2x|planted| most suspicious (lowest scores); flagged count and precision."""
    budget = 2 * len(planted)
    found, tied = expected_in_top(scores, planted, budget)
    return {"found": found, "planted": len(planted), "budget": budget, "tied_at_cut": tied,
            "flagged": len(flagged), "precision": len(flagged & planted) / len(flagged) if flagged else None}


def group_score(groups, pairs, flags_group):
    """Pairs sharing a group; flagged = groups for which flags_group holds, precision = those holding a pair."""
    flagged = [g for g in groups if flags_group(g)]
    with_pair = [g for g in flagged if any(copy in g and original in g for copy, original in pairs)]
    return {"found": sum(any(copy in g and original in g for g in groups) for copy, original in pairs),
            "planted": len(pairs), "flagged": len(flagged),
            "precision": len(with_pair) / len(flagged) if flagged else None}


def planted_pairs(planted, kind):
    return [(p["copy"], p["original"]) for p in planted[kind]]


def score(findings, planted, manifest_rows):
    label = {r["path"]: r["label"] for r in manifest_rows}
    split = {r["path"]: r["split"] for r in manifest_rows}
    odd = {sort: {o["path"] for o in planted["off_distribution"] if o["sort"] == sort} for sort in SORTS}
    off = ranked_score(findings["outlier_scores"], findings["outlier_flagged"], set().union(*odd.values()))
    off["by_sort"] = {sort: {"found": expected_in_top(findings["outlier_scores"], paths, off["budget"])[0],
                             "planted": len(paths)} for sort, paths in odd.items()}
    return {
        "relabelled": ranked_score(findings["label_scores"], findings["label_flagged"], set(planted["relabelled"])),
        "off_distribution": off,
        "conflict": group_score(findings["duplicate_groups"], planted_pairs(planted, "conflict"),
                                lambda g: len({label[p] for p in g}) > 1),
        "leak": group_score(findings["leak_groups"], planted_pairs(planted, "leak"),
                            lambda g: len({split[p] for p in g}) > 1),
    }


def count(found):
    """A count, with one decimal where ties made it an expectation."""
    return f"{found:.0f}" if float(found).is_integer() else f"{found:.1f}"


def cell(result):
    precision = "n/a" if result["precision"] is None else f"{result['precision']:.2f}"
    return f"{count(result['found'])}/{result['planted']} (flagged {result['flagged']}, precision {precision})"


def by_sort(result):
    return ", ".join(f"{sort} {count(s['found'])}/{s['planted']}" for sort, s in result["by_sort"].items())


def table(scores, seconds):
    """The markdown table: one row per defect kind, one column per contender."""
    header = ["defect (planted)"] + [title for _, title in COLUMNS]
    budgets = {kind: scores["audit"][kind]["budget"] for kind in ("relabelled", "off_distribution")}
    rows = [
        [f"relabelled, top {budgets['relabelled']}"] + [cell(scores[c]["relabelled"]) for c, _ in COLUMNS],
        [f"off-distribution, top {budgets['off_distribution']}"]
        + [cell(scores[c]["off_distribution"]) for c, _ in COLUMNS],
        [f"off-distribution by sort, top {budgets['off_distribution']}"]
        + [by_sort(scores[c]["off_distribution"]) for c, _ in COLUMNS],
        ["conflicts (copy under another label)"] + [cell(scores[c]["conflict"]) for c, _ in COLUMNS],
        ["leaks (copy in another split)"] + [cell(scores[c]["leak"]) for c, _ in COLUMNS],
        ["time (s): audit / Datalab"] + [f"{seconds[c]:.1f}" for c, _ in COLUMNS],
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="the tripmine binary")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--corpus", help="corpus folder (default OUT/corpus), generated when it has no manifest.csv")
    parser.add_argument("--seed", type=int, default=1, help="seed of the corpus's defects and of training")
    args = parser.parse_args()
    corpus_dir = args.corpus or os.path.join(args.out, "corpus")
    manifest = os.path.join(corpus_dir, "manifest.csv")
    os.makedirs(args.out, exist_ok=True)
    steps = Steps(args.out)
    if not os.path.exists(manifest):
        log(f"corpus: generating {corpus_dir}")
        make_audit_corpus.make_corpus(corpus_dir, seed=args.seed)
        steps.ran.add("corpus")
    manifest_rows = read_csv(manifest)
    with open(os.path.join(corpus_dir, "planted.json")) as f:
        planted = json.load(f)
    run_tripmine(args, steps, manifest)
    run_cleanlab(args, steps, corpus_dir, manifest_rows)
    findings = {"audit": tripmine_findings(os.path.join(args.out, "audit"))}
    findings.update({c: datalab_findings(os.path.join(args.out, c)) for c, _ in COLUMNS[1:]})
    scores = {c: score(findings[c], planted, manifest_rows) for c, _ in COLUMNS}
    with open(os.path.join(args.out, "audit", "audit.json")) as f:
        model_quality = json.load(f).get("model_quality")
    validation = best_validation(os.path.join(args.out, "run"))
    log(f"best validation row of the training run: {validation}")
    if model_quality is not None:
        log(f"audit.json model_quality: {json.dumps(model_quality)}")
    results = {"corpus": corpus_dir, "samples": len(manifest_rows), "seed": args.seed, "seconds": steps.seconds,
               "best_validation": validation, "model_quality": model_quality, "scores": scores}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(table(scores, steps.seconds))
    print(f"\ntripmine train {steps.seconds['train']:.0f} s and embed {steps.seconds['embed']:.1f} s come before "
          f"both tripmine's audit and cleanlab on its embeddings; {len(manifest_rows)} images. "
          f"Numbers in {os.path.join(args.out, 'results.json')}.")


if __name__ == "__main__":
    main()
