"""Index-guided batches for a PyTorch ``DataLoader``: tripmine's ``--mining neighbour-batches``.

    from torch.utils.data import DataLoader
    from tripmine.torch import NeighbourBatchSampler

    sampler = NeighbourBatchSampler(embeddings, labels, classes_per_batch=16, samples_per_class=4)
    loader = DataLoader(dataset, batch_sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for images, targets, rows in loader:      # the dataset returns its row index too
            emb = model(images)
            ...
            sampler.update(rows, emb)              # keeps the bank current, no extra forward pass

Each epoch's batches come from a neighbour graph of the bank (every row's 16 nearest
other-label rows): with many classes a batch is a seed class, the classes its rows' neighbours
belong to most, and a share ``random_classes`` of random classes; with fewer than 4 x P
classes, seed images with their other-label neighbours past ``skip_nearest``. Every row of a
class with two or more is in one batch per epoch. The graph is rebuilt from the bank at the
start of an epoch when the bank changed (``update`` or ``refresh``). The composition is
tripmine-core's (``tripmine_core::batches``), the one tripmine's own trainer runs: the same
graph and seed give the same batches.
"""

import math

import numpy as np
import torch
from torch.utils.data import Sampler

import tripmine
from tripmine import _tripmine

__all__ = ["NeighbourBatchSampler"]


class NeighbourBatchSampler(Sampler):
    """A batch sampler (``DataLoader(batch_sampler=...)``): iterating it yields lists of row
    indices. ``num_replicas`` and ``rank`` split each epoch's batches among the ranks of a
    distributed run, like ``DistributedSampler`` (defaults: from ``torch.distributed`` when it is
    initialised, else one replica); every rank gets the same number of batches (the last ones
    wrap around to the first, or are dropped with ``drop_last``), and ``set_epoch`` must be
    called on every rank with the same epoch."""

    def __init__(self, embeddings, labels, *, classes_per_batch=8, samples_per_class=4,
                 random_classes=_tripmine.DEFAULT_RANDOM_CLASSES, skip_nearest=0, seed=0, num_replicas=None,
                 rank=None, drop_last=False, knn="auto"):
        self.classes_per_batch = tripmine._count("classes_per_batch", classes_per_batch, 1)
        self.samples_per_class = tripmine._count("samples_per_class", samples_per_class, 2)
        self.random_classes = float(random_classes)
        if not 0.0 <= self.random_classes <= 1.0:
            raise ValueError(f"random_classes {random_classes} must lie in [0, 1]")
        self.skip_nearest = tripmine._count("skip_nearest", skip_nearest)
        self.seed = tripmine._count("seed", seed)
        self.knn = str(knn)
        if num_replicas is None or rank is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            if num_replicas is None:
                num_replicas = torch.distributed.get_world_size() if distributed else 1
            if rank is None:
                rank = torch.distributed.get_rank() if distributed else 0
        self.num_replicas = tripmine._count("num_replicas", num_replicas, 1)
        self.rank = tripmine._count("rank", rank)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank {rank} must lie in 0..{self.num_replicas - 1}")
        self.drop_last = bool(drop_last)
        if torch.is_tensor(labels):
            labels = labels.detach().cpu().numpy()
        self.labels = np.asarray(labels)
        if torch.is_tensor(embeddings):
            embeddings = embeddings.detach().to("cpu", torch.float32).numpy()
        rows = tripmine._rows("embeddings", embeddings)
        _, self._codes = tripmine._codes(self.labels, rows.shape[0])
        self.bank = np.array(rows, dtype=np.float32, order="C")
        self.epoch = 0
        self._graph = None
        self._plan = None
        self.refresh()

    def refresh(self, embeddings=None):
        """Rebuilds the neighbour graph, from ``embeddings`` (all rows, which replace the bank)
        or from the bank; the next epoch's batches (or this one's, before iterating) use it."""
        if embeddings is not None:
            if torch.is_tensor(embeddings):
                embeddings = embeddings.detach().to("cpu", torch.float32).numpy()
            rows = tripmine._rows("embeddings", embeddings)
            if rows.shape != self.bank.shape:
                raise ValueError(f"refresh needs every row: {self.bank.shape}, not {rows.shape}")
            self.bank[:] = rows
        self._graph = _tripmine.NeighbourGraph(self.bank, self._codes, skip_nearest=self.skip_nearest,
                                               knn=self.knn, normalise=True)
        self._stale = False
        self._plan = None

    def update(self, indices, embeddings):
        """Stores the latest embeddings of rows ``indices`` (a batch's, after its forward pass)."""
        if torch.is_tensor(indices):
            indices = indices.detach().cpu().numpy()
        rows = tripmine._indices("indices", indices, len(self.bank))
        if torch.is_tensor(embeddings):
            embeddings = embeddings.detach().to("cpu", torch.float32).numpy()
        values = np.asarray(embeddings, dtype=np.float32).reshape(len(rows), -1)
        if values.shape[1] != self.bank.shape[1]:
            raise ValueError(f"embeddings of dimension {values.shape[1]}, the bank's is {self.bank.shape[1]}")
        self.bank[rows] = values
        self._stale = True

    def set_epoch(self, epoch):
        """Chooses the epoch whose batches the next iteration yields (as DistributedSampler)."""
        epoch = tripmine._count("epoch", epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self._plan = None

    def epoch_batches(self):
        """Every rank's batches of the current epoch, before the split among ranks."""
        if self._plan is None:
            if self._stale:
                self.refresh()
            self._plan = self._graph.compose_epoch(
                groups=self.classes_per_batch, group_size=self.samples_per_class,
                random_share=self.random_classes, skip_nearest=self.skip_nearest, seed=self.seed, epoch=self.epoch)
        return self._plan

    def neighbours(self, row):
        """Row ``row``'s other-label neighbours in the current graph, nearest first."""
        return self._graph.neighbours(tripmine._count("row", row))

    def _per_rank(self, batches):
        if self.drop_last:
            return len(batches) // self.num_replicas
        return math.ceil(len(batches) / self.num_replicas)

    def __iter__(self):
        batches = self.epoch_batches()
        per_rank = self._per_rank(batches)
        total = per_rank * self.num_replicas
        padded = [batches[i % len(batches)] for i in range(total)] if batches else []
        # Consecutive batches go to different ranks, so that each rank sees every part of the plan.
        yield from (list(b) for b in padded[self.rank:total:self.num_replicas])

    def __len__(self):
        return self._per_rank(self.epoch_batches())
