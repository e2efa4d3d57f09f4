"""The Python API against brute force and the CLI. `make test` runs this file in a fresh venv
holding only numpy and pytest (the pip package needs nothing else), then with every other test
file where torch and pytorch-metric-learning are installed."""

import csv
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import tripmine
from helpers import clustered, distances64


def triplet_set(r):
    return set(zip(r.anchor.tolist(), r.positive.tolist(), r.negative.tolist()))


def test_import_does_not_import_torch():
    code = "import sys, tripmine; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_semihard_triplets_obey_the_definitions_and_match_brute_force():
    x, labels = clustered()
    r = tripmine.mine(x, labels, strategy="semihard", negatives_per_anchor=3)
    assert r.anchor.dtype == np.int64 and r.d_ap.dtype == np.float32 and len(r) > 0
    d = distances64(x)
    for a, p, n, kind in zip(r.anchor, r.positive, r.negative, r.kind):
        assert labels[a] == labels[p] and labels[a] != labels[n] and a != p
        # the hardest positive: the farthest same-label row
        same = np.flatnonzero((labels == labels[a]) & (np.arange(len(x)) != a))
        assert p == same[np.argmax(d[a, same])]
        t = d[a, n] - d[a, p]
        assert 0 < t <= 0.2 + 1e-5 and kind == "semihard"
    # each anchor's negatives are the nearest semi-hard ones
    for a in np.unique(r.anchor)[:20]:
        p = r.positive[r.anchor == a][0]
        band = np.flatnonzero((labels != labels[a]) & (d[a] - d[a, p] > 0) & (d[a] - d[a, p] <= 0.2))
        want = band[np.argsort(d[a, band], kind="stable")][:3]
        assert sorted(r.negative[r.anchor == a].tolist()) == sorted(want.tolist())
    assert r.stats["per_kind"]["semihard"] == len(r)


def test_results_equal_the_cli_csv(tmp_path):
    x, labels = clustered(seed=5)
    np.save(tmp_path / "X.npy", x)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label"])
        w.writerows([[f"c{v}"] for v in labels])
    script = os.path.join(sysconfig.get_path("scripts"), "tripmine")
    out = tmp_path / "t.csv"
    done = subprocess.run(
        [script, "mine", "--embeddings", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "labels.csv"),
         "--strategy", "semihard=0.5,hard=0.5", "--negatives-per-anchor", "2", "--out", str(out)],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    r = tripmine.mine(x, [f"c{v}" for v in labels], strategy="semihard=0.5,hard=0.5", negatives_per_anchor=2)
    # tripmine names row i of an .npy by its row number
    cli = [(int(row["anchor"]), int(row["positive"]), int(row["negative"]), row["kind"]) for row in rows]
    api = list(zip(r.anchor.tolist(), r.positive.tolist(), r.negative.tolist(), r.kind.tolist()))
    assert sorted(cli) == sorted(api)
    assert np.allclose(sorted(float(row["d_an"]) for row in rows), np.sort(r.d_an), atol=1e-6)
    # eval through the console script gives the API's numbers
    done = subprocess.run([script, "eval", "--embeddings", str(tmp_path / "X.npy"), "--labels",
                           str(tmp_path / "labels.csv"), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import json
    cli_metrics = json.loads(done.stdout)
    api_metrics = tripmine.evaluate(x, labels)
    # one definition of the metrics object: the same keys and numbers
    assert cli_metrics == api_metrics


def test_fortran_order_and_float64_give_the_same_triplets():
    x, labels = clustered(seed=7)
    want = triplet_set(tripmine.mine(x, labels, negatives_per_anchor=2))
    assert triplet_set(tripmine.mine(np.asfortranarray(x), labels, negatives_per_anchor=2)) == want
    assert triplet_set(tripmine.mine(x.astype(np.float64), labels, negatives_per_anchor=2)) == want
    # unnormalised rows need normalise=True, and then mean the same directions
    scaled = x * np.linspace(0.5, 3, len(x), dtype=np.float32)[:, None]
    assert triplet_set(tripmine.mine(scaled, labels, negatives_per_anchor=2, normalise=True)) == want


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, l: tripmine.mine(x[0], l), "2-D"),
        (lambda x, l: tripmine.mine(x, l[:-1]), "label i must belong to row i"),
        (lambda x, l: tripmine.mine(x * 2, l), "norm"),
        (lambda x, l: tripmine.mine(np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), l), "NaN"),
        (lambda x, l: tripmine.mine(x, l, strategy="hardest"), "hardest"),
        (lambda x, l: tripmine.mine(x, l, positives="nearest"), "positives"),
        (lambda x, l: tripmine.mine(x, l, negatives_per_anchor=0), "at least 1"),
        (lambda x, l: tripmine.mine(x, l, exclude=[10_000]), "exclude"),
        (lambda x, l: tripmine.mine(np.zeros((0, 4)), []), "empty"),
        (lambda x, l: tripmine.mine(np.array([["a", "b"]]), [0]), "numbers"),
        (lambda x, l: tripmine.knn(x, 3, restrict="other-label"), "needs labels"),
        (lambda x, l: tripmine.evaluate(x, l.reshape(-1, 1)), "1-D"),
        (lambda x, l: tripmine.knn(x, 10_000), "k must be"),
        (lambda x, l: tripmine.mine(x, l, exclude=[0.5]), "integers"),
        (lambda x, l: tripmine.mine(x, l, anchors=np.ones(3, bool)), "one entry per row"),
        (lambda x, l: tripmine.mine(x, l, distance="manhattan"), "distance"),
        (lambda x, l: tripmine.mine(x, l, strategy="all"), "d\\(a,n\\) - d\\(a,p\\) <= margin"),
        (lambda x, l: tripmine.mine(x, l, seed=-1), "seed must be at least 0"),
        (lambda x, l: tripmine.mine(x, l, skip_nearest=-2), "skip_nearest"),
        (lambda x, l: tripmine.mine(x, l, anchors=[-1]), "anchors names row -1"),
        (lambda x, l: tripmine.knn(x, -3), "k must be at least 1"),
        (lambda x, l: tripmine.audit(x, l, k=-1), "k must be at least 1"),
        (lambda x, l: tripmine.audit(x, l, outlier_z=float("nan")), "outlier_z NaN: must be a finite number, 0 or more"),
        (lambda x, l: tripmine.audit(x, l, mislabel_probability=1.5), "mislabel_probability 1.5: must be a number in"),
        (lambda x, l: tripmine.knn(x, 2, reference=x[:, :3]), "columns"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_problem(call, message):
    x, labels = clustered()
    with pytest.raises(ValueError, match=message):
        call(x, labels)


def test_a_boolean_mask_and_row_indices_exclude_the_same_rows():
    x, labels = clustered(seed=29)
    mask = np.zeros(len(x), bool)
    mask[::5] = True
    by_mask = tripmine.mine(x, labels, exclude=mask, negatives_per_anchor=2)
    by_rows = tripmine.mine(x, labels, exclude=np.flatnonzero(mask), negatives_per_anchor=2)
    assert triplet_set(by_mask) == triplet_set(by_rows)
    used = np.concatenate([by_mask.anchor, by_mask.positive, by_mask.negative])
    assert not mask[used].any()


def test_anchors_mine_those_rows_against_the_whole_corpus():
    x, labels = clustered(seed=31)
    every = tripmine.mine(x, labels, negatives_per_anchor=3)
    chosen = np.arange(0, len(x), 4)
    some = tripmine.mine(x, labels, negatives_per_anchor=3, anchors=chosen)
    assert set(some.anchor.tolist()) <= set(chosen.tolist())
    want = {t for t in triplet_set(every) if t[0] in set(chosen.tolist())}
    assert triplet_set(some) == want and len(want) > 0


def test_knn_equals_brute_force_for_each_restriction():
    x, labels = clustered(seed=11)
    d = distances64(x)
    np.fill_diagonal(d, np.inf)
    for restrict, allowed in [("any", lambda a: np.ones(len(x), bool)),
                              ("other-label", lambda a: labels != labels[a]),
                              ("same-label", lambda a: labels == labels[a])]:
        D, I = tripmine.knn(x, 4, labels=labels, restrict=restrict)
        assert D.shape == I.shape == (len(x), 4) and I.dtype == np.int64
        for a in range(len(x)):
            cand = np.flatnonzero(allowed(a) & np.isfinite(d[a]))
            want = cand[np.argsort(d[a, cand], kind="stable")][:4]
            got = I[a][I[a] >= 0]
            assert np.allclose(d[a, got], d[a, want], atol=1e-5), (restrict, a)
            assert np.allclose(D[a, : len(got)], d[a, got], atol=1e-5)
    # a class of 6 has 5 same-label neighbours: the rest is padded as faiss pads
    D, I = tripmine.knn(x, 8, labels=labels, restrict="same-label")
    assert (I[:, 5:] == -1).all() and np.isinf(D[:, 5:]).all()


def test_evaluate_matches_the_definitions():
    x, labels = clustered(spread=1.2, seed=13)
    m = tripmine.evaluate(x, labels)
    d = distances64(x)
    np.fill_diagonal(d, np.inf)
    p1, maps = [], []
    for q in range(len(x)):
        order = np.argsort(d[q], kind="stable")[:-1]
        rel = labels[order] == labels[q]
        r = rel.sum()
        p1.append(rel[0])
        hits = np.cumsum(rel[:r])
        maps.append(np.sum(hits / np.arange(1, r + 1) * rel[:r]) / r)
    assert set(m) == {"p_at_1", "r_precision", "map_at_r", "recall_at_k", "queries", "skipped_queries"}
    assert m["p_at_1"] == pytest.approx(np.mean(p1), abs=1e-9)
    assert m["map_at_r"] == pytest.approx(np.mean(maps), abs=1e-6)
    assert m["recall_at_k"]["1"] == m["p_at_1"]


def test_audit_finds_a_planted_duplicate_and_a_mislabel():
    x, labels = clustered(classes=8, per_class=12, spread=0.3, seed=17)
    labels = labels.copy()
    x = x.copy()
    x[1], labels[1] = x[0], labels[0]             # an exact duplicate
    victim = int(np.flatnonzero((labels != labels[5]) & (np.arange(len(x)) > 1))[0])
    labels[victim] = labels[5]                    # a mislabel
    paths = [f"img/{i}.png" for i in range(len(x))]
    found = tripmine.audit(x, np.array([f"class {v}" for v in labels], dtype=object), paths=paths)
    dup_paths = {r["path"] for r in found["duplicates"]}
    assert {"img/0.png", "img/1.png"} <= dup_paths and not found["conflicts"]
    assert victim in {r["index"] for r in found["likely_mislabels"]}
    issue = next(r for r in found["likely_mislabels"] if r["index"] == victim)
    assert issue["label"] == f"class {labels[victim]}" and issue["suggested_label"].startswith("class ")
    assert found["model_quality"]["trusted"]
    assert any(r["index"] == victim for r in found["exclude"])


def test_cli_runs_without_torch_and_names_what_needs_the_full_build():
    script = os.path.join(sysconfig.get_path("scripts"), "tripmine")
    help_text = subprocess.run([script, "mine", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--embeddings" in help_text.stdout
    embed = subprocess.run([script, "embed", "--corpus", "x", "--out", "y"], capture_output=True, text=True)
    assert embed.returncode == 2 and "libtorch" in embed.stderr


def test_empty_exclude_and_anchors_are_lists_of_no_rows():
    x, labels = clustered(seed=37)
    every = triplet_set(tripmine.mine(x, labels, negatives_per_anchor=2))
    assert triplet_set(tripmine.mine(x, labels, negatives_per_anchor=2, exclude=[])) == every
    assert len(tripmine.mine(x, labels, anchors=[])) == 0


def test_no_negative_count_takes_every_negative_of_each_kind_of_a_mix():
    x, labels = clustered(classes=6, per_class=6, spread=1.1, seed=41)
    mixed = tripmine.mine(x, labels, strategy="semihard=0.9,hard=0.1", negatives_per_anchor=None)
    hard = tripmine.mine(x, labels, strategy="hard", negatives_per_anchor=None)
    semihard = tripmine.mine(x, labels, strategy="semihard", negatives_per_anchor=None)
    assert len(hard) > 0 and len(semihard) > 0
    # the weights share a count; without one, each kind gives every negative it has
    assert triplet_set(mixed) == triplet_set(hard) | triplet_set(semihard)


def test_knn_against_a_reference_is_faiss_search():
    x, _ = clustered(classes=10, per_class=8, seed=43)
    queries, reference = x[:20], x[20:]
    D, I = tripmine.knn(queries, 5, reference=reference, distance="sqeuclidean")
    sq = np.clip(2 - 2 * queries.astype(np.float64) @ reference.T.astype(np.float64), 0, None)
    want = np.argsort(sq, axis=1, kind="stable")[:, :5]
    assert I.shape == (20, 5) and (I >= 0).all() and (I < len(reference)).all()
    assert np.allclose(np.take_along_axis(sq, I, 1), np.take_along_axis(sq, want, 1), atol=1e-5)
    assert np.allclose(D, np.take_along_axis(sq, I, 1), atol=1e-5), "squared L2, as IndexFlatL2"
    # a query that is also in the reference finds itself first, as faiss does
    D, I = tripmine.knn(x[:3], 1, reference=x)
    assert I[:, 0].tolist() == [0, 1, 2] and np.allclose(D, 0, atol=1e-3)


def test_ctrl_c_during_a_command_run_from_python_does_not_kill_the_session(tmp_path):
    # A Jupyter kernel calling tripmine's CLI: SIGINT mid-command must not take the process.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40_000, 32)).astype(np.float32)
    np.save(tmp_path / "X.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
    (tmp_path / "labels.csv").write_text("label\n" + "".join(f"{i % 500}\n" for i in range(len(x))))
    code = f"""
import os, signal, sys, threading
from tripmine import _tripmine
threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    _tripmine.run(["tripmine", "eval", "--embeddings", {str(tmp_path / "X.npy")!r},
                   "--labels", {str(tmp_path / "labels.csv")!r}, "--json"])
    signal.getsignal(signal.SIGINT)  # Python's handler raises at the next bytecode
    sys.exit(3)
except KeyboardInterrupt:
    sys.exit(0)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 3), (done.returncode, done.stderr)


def test_shards_hold_each_class_whole_and_give_back_every_row(tmp_path):
    x, labels = clustered(classes=30, per_class=7, dim=8)
    names = np.array([f"class-{l}" for l in labels])
    paths = [f"img/{i}.png" for i in range(len(x))]
    directory = tmp_path / "shards"
    manifest = tripmine.write_shards(directory, x, names, paths=paths, shard_rows=40)
    shards = tripmine.read_shards(directory)
    assert [s["rows"] for s in manifest["shards"]] == [42] * 5
    rows, codes, ids = shards.load(shards.names)
    assert sorted(ids.tolist()) == list(range(len(x)))
    assert np.array_equal(rows, x[ids])
    assert [manifest["labels"][c] for c in codes] == names[ids].tolist()
    for shard in manifest["shards"]:
        _, c, _ = shards.load([shard["name"]])
        lo, hi = shard["labels"]
        assert c.min() >= lo and c.max() < hi  # a class never spans two shards
    assert shards.paths() == (paths, names.tolist())
    # Written again, the directory is replaced whole.
    tripmine.write_shards(directory, x[:70], names[:70], shard_rows=1000)
    assert tripmine.read_shards(directory).names == ["shard-00000"]


def test_a_changed_or_missing_shard_is_named(tmp_path):
    x, labels = clustered(classes=6, per_class=5, dim=4)
    directory = tmp_path / "shards"
    tripmine.write_shards(directory, x, labels, shard_rows=10)
    with open(directory / "shard-00001.npy", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\0\0\0\0")
    with pytest.raises(ValueError, match=r"shard-00001.npy: SHA-256 differs"):
        tripmine.read_shards(directory)
    (directory / "shard-00002.labels.npy").unlink()
    with pytest.raises(ValueError, match=r"shard-00002.labels.npy: missing"):
        tripmine.read_shards(directory, verify=False)
    with pytest.raises(ValueError, match="no manifest.json"):
        tripmine.read_shards(tmp_path)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a shard directory"):
        tripmine.write_shards(tmp_path / "taken", x, labels)
    with pytest.raises(ValueError, match="row 3 holds NaN"):
        y = x.copy()
        y[3, 1] = np.nan
        tripmine.write_shards(tmp_path / "nan", y, labels)


def test_every_command_reads_a_shard_directory(tmp_path):
    """`mine` streams the shards (out of core) and gives tripmine.mine's triplets by path;
    `eval` reads them whole."""
    x, labels = clustered(classes=20, per_class=6, dim=8, seed=6)
    names = [f"c{v}" for v in labels]
    paths = [f"img/{i:03d}.png" for i in range(len(x))]
    directory = tmp_path / "shards"
    tripmine.write_shards(directory, x, names, paths=paths, shard_rows=24)
    script = os.path.join(sysconfig.get_path("scripts"), "tripmine")
    out = tmp_path / "t.csv"
    done = subprocess.run([script, "mine", "--embeddings", str(directory), "--out", str(out),
                           "--strategy", "hard", "--negatives-per-anchor", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Mined out of core: shard by shard, with the peak memory in the summary.
    assert "exact out of core over 5 shards" in done.stdout and "peak memory" in done.stdout, done.stdout
    with open(out) as f:
        rows = list(csv.DictReader(f))
    r = tripmine.mine(x, names, strategy="hard", negatives_per_anchor=2)
    want = [(paths[a], paths[p], paths[n], names[a]) for a, p, n in zip(r.anchor, r.positive, r.negative)]
    assert sorted((row["anchor"], row["positive"], row["negative"], row["anchor_label"]) for row in rows) == sorted(want)
    done = subprocess.run([script, "eval", "--embeddings", str(directory), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import json
    assert json.loads(done.stdout) == tripmine.evaluate(x, labels)
    # A changed shard is refused by name, with exit code 2 (bad input).
    with open(directory / "shard-00000.npy", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\0\0\0\0")
    done = subprocess.run([script, "eval", "--embeddings", str(directory)], capture_output=True, text=True)
    assert done.returncode == 2 and "shard-00000.npy: SHA-256 differs" in done.stderr, done.stderr
