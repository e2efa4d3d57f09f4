"""tripmine.ray on a real Ray cluster of two simulated nodes (ray.cluster_utils.Cluster: two
raylets with one CPU each, so blocks and their objects move between nodes): the distributed
output equals single-process ``tripmine.mine(knn="exact")`` on every grid, strategy and
positives rule (and ``knn="classes"``'s on the classes path) (and ``evaluate`` equals ``tripmine.evaluate``), survives a worker killed mid-run, and resumes from a checkpoint."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

import tripmine
import tripmine.ray
from helpers import clustered

COLUMNS = ["anchor", "positive", "negative", "d_ap", "d_an", "kind"]


@pytest.fixture(scope="module")
def cluster():
    # Small object stores: answers are kilobytes, and CI's /dev/shm may be small.
    store = 128 * 1024 * 1024
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store})
    c.add_node(num_cpus=1, object_store_memory=store)
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """400 rows of 50 classes (one a singleton), written as 8 shards placed by label."""
    x, labels = clustered(classes=50, per_class=8, dim=16, spread=0.8, seed=4)
    labels[0] = 999
    directory = tmp_path_factory.mktemp("shards") / "corpus"
    manifest = tripmine.write_shards(directory, x, labels, shard_rows=50)
    assert len(manifest["shards"]) == 8
    return directory, x, labels


def same(got, want):
    for c in COLUMNS:
        assert np.array_equal(getattr(got, c), getattr(want, c)), c
    for key in ["per_kind", "skipped", "anchors", "anchors_with_triplets", "anchors_short", "triplets"]:
        assert got.stats[key] == want.stats[key], key


@pytest.mark.parametrize(
    "strategy,k,guard",
    [
        ("semihard", 1, {}),
        ("hard", 3, {"skip_nearest": 2}),
        ("easy", 2, {"negative_floor": 0.5}),
        ("violating", None, {}),
        ("any", 4, {"skip_nearest": 1, "negative_floor": 0.2}),
        ("semihard=0.7,hard=0.3", 5, {}),
    ],
)
@pytest.mark.parametrize("positives", ["hardest", "easiest", "random", "all"])
def test_every_grid_equals_single_process_mine(cluster, corpus, strategy, k, guard, positives):
    directory, x, labels = corpus
    rules = dict(strategy=strategy, negatives_per_anchor=k, positives=positives, seed=5, **guard)
    want = tripmine.mine(x, labels, knn="exact", **rules)
    assert len(want) > 0
    for grid in [(1, 1), (4, 4), (8, 2)]:
        got = tripmine.ray.mine(directory, anchor_blocks=grid[0], corpus_blocks=grid[1], verify=False, **rules)
        same(got, want)
        assert got.stats["backend"]["anchor_blocks"] == grid[0]


@pytest.mark.parametrize(
    "rules",
    [
        dict(strategy="semihard", negatives_per_anchor=1, candidate_classes=3),
        dict(strategy="semihard=0.6,hard=0.4", negatives_per_anchor=3, positives="all", skip_nearest=1, candidate_classes=5),
    ],
)
def test_the_classes_path_on_every_grid_equals_single_process_mine(cluster, corpus, rules):
    # Each anchor block picks its classes from every block's class means and radii; few
    # candidates of 50 classes, so the path is approximate and the equality means something.
    directory, x, labels = corpus
    want = tripmine.mine(x, labels, knn="classes", seed=5, **rules)
    exact = tripmine.mine(x, labels, knn="exact", seed=5, **{k: v for k, v in rules.items() if k != "candidate_classes"})
    assert len(want) > 0 and not np.array_equal(want.negative, exact.negative)
    for grid in [(1, 1), (4, 4), (8, 2)]:
        got = tripmine.ray.mine(directory, knn="classes", anchor_blocks=grid[0], corpus_blocks=grid[1], verify=False, seed=5, **rules)
        same(got, want)
        assert got.stats["backend"]["name"] == "classes"
        assert got.stats["backend"]["candidate_classes"] == rules["candidate_classes"]


def test_blocks_run_on_both_nodes(cluster, corpus):
    directory, _, _ = corpus
    assert sum(n["Alive"] for n in ray.nodes()) == 2
    got = tripmine.ray.mine(directory, anchor_blocks=8, corpus_blocks=8)
    assert got.stats["backend"]["nodes"] == 2


def test_a_worker_killed_mid_run_leaves_the_output_unchanged(cluster, corpus, tmp_path, monkeypatch, capfd):
    directory, x, labels = corpus
    want = tripmine.mine(x, labels, knn="exact", negatives_per_anchor=3)
    marker = tmp_path / "exited"
    monkeypatch.setenv(tripmine.ray.EXIT_ONCE, str(marker))
    got = tripmine.ray.mine(directory, anchor_blocks=4, corpus_blocks=4, negatives_per_anchor=3)
    assert marker.exists(), "the hook's worker never exited"
    same(got, want)
    assert "block (3, 3) ran again after its worker died" in capfd.readouterr().err


def test_a_restarted_run_resumes_from_its_checkpoint(cluster, corpus, tmp_path, capfd):
    directory, x, labels = corpus
    checkpoint = tmp_path / "checkpoint"
    first = tripmine.ray.mine(directory, anchor_blocks=4, corpus_blocks=2, checkpoint=checkpoint)
    blocks = sorted(p.name for p in checkpoint.glob("block-*.npz"))
    assert blocks == [f"block-{i:05d}.npz" for i in range(4)]
    # A driver that died after three blocks: the fourth is computed again, the rest read.
    (checkpoint / blocks[2]).unlink()
    capfd.readouterr()
    again = tripmine.ray.mine(directory, anchor_blocks=4, corpus_blocks=2, checkpoint=checkpoint)
    assert "3 of 4 anchor blocks resumed" in capfd.readouterr().err
    same(again, first)
    with pytest.raises(ValueError, match="belongs to another run"):
        tripmine.ray.mine(directory, anchor_blocks=4, corpus_blocks=2, checkpoint=checkpoint, margin=0.3)


def test_the_console_entry_writes_the_clis_triplet_csv(cluster, corpus, tmp_path):
    directory, x, labels = corpus
    out = tmp_path / "triplets.csv"
    cmd = [sys.executable, "-m", "tripmine.ray", "mine", "--embeddings", str(directory), "--out", str(out)]
    cmd += ["--strategy", "hard", "--negatives-per-anchor", "2", "--address", cluster.address]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    want = tripmine.mine(x, labels, knn="exact", strategy="hard", negatives_per_anchor=2)
    assert f"{len(want)} triplets" in done.stdout
    rows = out.read_text().splitlines()
    assert rows[0] == "anchor,positive,negative,anchor_label,negative_label,d_ap,d_an,kind"
    first = rows[1].split(",")
    assert first[:3] == [str(want.anchor[0]), str(want.positive[0]), str(want.negative[0])]
    assert first[3] == str(labels[want.anchor[0]]) and first[4] == str(labels[want.negative[0]])
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["counts"]["triplets"] == len(want) and sidecar["strategy"] == "hard=1"
    assert sidecar["backend"]["engine"] == "ray" and len(sidecar["csv_sha256"]) == 64
    bad = subprocess.run(cmd[:5] + [str(tmp_path), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no manifest.json" in bad.stderr


def test_random_easy_negatives_are_refused_with_the_reason(cluster, corpus):
    # tripmine.mine never draws them (nearest first), so only the blocked API can be asked.
    directory, x, labels = corpus
    rules = json.loads(tripmine._tripmine.mining_rules(
        corpus_rows=len(x), strategy="easy", negatives_per_anchor=1, positives="hardest", margin=0.2,
        distance="euclidean", seed=0, skip_nearest=0, negative_floor=0.0, max_search_depth=64))
    rules["negative_order"] = "random"
    ids = np.arange(len(x), dtype=np.int64)
    codes = np.unique(labels, return_inverse=True)[1].astype(np.int64)
    with pytest.raises(ValueError, match="nearest first"):
        tripmine._tripmine.block_questions(x, codes, ids, rules=json.dumps(rules), corpus_rows=len(x), normalise=False)


def test_evaluate_on_every_grid_equals_tripmine_evaluate(cluster, corpus):
    directory, x, labels = corpus
    want = tripmine.evaluate(x, labels)
    for grid in [(1, 1), (4, 4), (8, 2)]:
        got = tripmine.ray.evaluate(directory, anchor_blocks=grid[0], corpus_blocks=grid[1], verify=False)
        assert (got["queries"], got["skipped_queries"]) == (want["queries"], want["skipped_queries"])
        for key in ["p_at_1", "r_precision", "map_at_r"]:
            assert abs(got[key] - want[key]) < 1e-12, (grid, key, got[key], want[key])
        assert got["recall_at_k"] == want["recall_at_k"]
    cmd = [sys.executable, "-m", "tripmine.ray", "evaluate", "--embeddings", str(directory), "--address", cluster.address]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["queries"] == want["queries"]
