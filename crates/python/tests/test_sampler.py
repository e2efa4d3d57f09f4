"""tripmine.torch.NeighbourBatchSampler inside a DataLoader: valid P x K batches, every row
once per epoch, composed by tripmine-core's function (the trainer's) from the graph, split
among ranks like DistributedSampler."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers import clustered
from tripmine import _tripmine
from tripmine.torch import NeighbourBatchSampler


def ring(classes=40, per_class=6, dim=8, seed=0):
    """Classes on a circle: a class's nearest other classes are the ones beside it."""
    rng = np.random.default_rng(seed)
    angle = np.repeat(np.arange(classes) * 2 * np.pi / classes, per_class)
    x = np.zeros((len(angle), dim), np.float32)
    x[:, 0], x[:, 1] = np.cos(angle), np.sin(angle)
    x[:, 2:] = 0.02 * rng.standard_normal((len(angle), dim - 2))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, np.repeat(np.arange(classes), per_class)


def ring_gap(a, b, classes=40):
    d = abs(int(a) - int(b))
    return min(d, classes - d)


def test_a_dataloader_yields_p_by_k_batches_covering_every_row_once():
    x, labels = ring()
    sampler = NeighbourBatchSampler(x, labels, classes_per_batch=4, samples_per_class=3, seed=1)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(labels), torch.arange(len(x))),
                        batch_sampler=sampler)
    seen = []
    for _, targets, rows in loader:
        per_class = Counter(targets.tolist())
        assert len(per_class) <= 4 and all(2 <= c <= 3 for c in per_class.values()), per_class
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(len(x))) and len(loader) == len(sampler)


def test_graph_neighbours_share_batches_unless_the_classes_are_random():
    x, labels = ring()

    def neighbour_share(random_classes):
        sampler = NeighbourBatchSampler(x, labels, classes_per_batch=4, samples_per_class=3,
                                        random_classes=random_classes, seed=2)
        near = total = 0
        for batch in sampler:
            classes = sorted(set(labels[batch].tolist()))
            for i, a in enumerate(classes):
                for b in classes[i + 1:]:
                    total += 1
                    near += ring_gap(a, b) <= 2
        return near / total

    assert neighbour_share(0.0) > 0.6
    assert neighbour_share(1.0) < 0.25


def test_batches_are_the_core_composition_of_the_graph_and_seed():
    x, labels = clustered(classes=30, per_class=5, seed=3)
    sampler = NeighbourBatchSampler(x, labels, classes_per_batch=4, samples_per_class=2, seed=7)
    sampler.set_epoch(3)
    graph = _tripmine.NeighbourGraph(x, labels.astype(np.int64), skip_nearest=0, knn="auto", normalise=True)
    want = graph.compose_epoch(groups=4, group_size=2, random_share=_tripmine.DEFAULT_RANDOM_CLASSES,
                               skip_nearest=0, seed=7, epoch=3)
    assert list(sampler) == want
    assert list(sampler) == want, "an epoch's batches are fixed by seed and epoch"
    sampler.set_epoch(4)
    assert list(sampler) != want
    # the graph is each row's nearest other-label rows
    d = 2 - 2 * x.astype(np.float64) @ x[0].astype(np.float64)
    other = np.flatnonzero(labels != labels[0])
    assert sampler.neighbours(0)[:3] == other[np.argsort(d[other])[:3]].tolist()


def test_updated_embeddings_rebuild_the_graph_at_the_next_epoch():
    x, labels = ring()
    sampler = NeighbourBatchSampler(x, labels, classes_per_batch=4, samples_per_class=3, seed=4)
    before = sampler.neighbours(0)
    # Row 0 moves to the far side of the circle: its neighbours change once the bank is indexed.
    sampler.update(torch.tensor([0]), torch.from_numpy(-x[:1]))
    assert sampler.neighbours(0) == before, "no index rebuilt mid-epoch"
    sampler.set_epoch(1)
    list(sampler)
    assert all(ring_gap(labels[j], 20) <= 2 for j in sampler.neighbours(0)[:3])
    sampler.refresh(np.roll(x, 1, axis=0))
    assert sampler.neighbours(1) != before


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_split_an_epoch_like_distributed_sampler(drop_last):
    x, labels = ring()
    shares = [list(NeighbourBatchSampler(x, labels, classes_per_batch=4, samples_per_class=3, seed=5,
                                         num_replicas=3, rank=r, drop_last=drop_last)) for r in range(3)]
    whole = list(NeighbourBatchSampler(x, labels, classes_per_batch=4, samples_per_class=3, seed=5))
    assert len({len(s) for s in shares}) == 1, "every rank runs the same number of steps"
    got = [b for s in shares for b in s]
    if drop_last:
        assert len(got) == 3 * (len(whole) // 3) and all(b in whole for b in got)
    else:
        assert all(b in got for b in whole), "no batch of the epoch is lost"
    with pytest.raises(ValueError, match="rank 3"):
        NeighbourBatchSampler(x, labels, num_replicas=3, rank=3)


def test_bad_arguments_are_named():
    x, labels = ring()
    with pytest.raises(ValueError, match="samples_per_class"):
        NeighbourBatchSampler(x, labels, samples_per_class=1)
    with pytest.raises(ValueError, match="label i must belong to row i"):
        NeighbourBatchSampler(x, labels[:-1])
    with pytest.raises(ValueError, match="random_classes"):
        NeighbourBatchSampler(x, labels, random_classes=1.5)
