"""A pytorch-metric-learning miner that mines a batch's anchors against the whole corpus.

    from tripmine.pml import GlobalMiner
    miner = GlobalMiner(corpus_embeddings, corpus_labels, margin=0.2, type_of_triplets="semihard")
    a, p, n = miner(batch_embeddings, batch_labels, indices=batch_indices)   # LongTensors

Same call convention as pml's miners (``miner(embeddings, labels)`` returns ``(a, p, n)``
LongTensors); the indices it returns point into the *corpus* (whose rows you refresh with
``miner.update(rows, indices)``), because the negatives come from outside the batch.
``indices`` names the corpus rows of the batch; without it the batch itself is the corpus.
Importable only where torch and pytorch-metric-learning are installed.
"""

import numpy as np
import torch
from pytorch_metric_learning.miners import BaseMiner

import tripmine


class GlobalMiner(BaseMiner):
    def __init__(self, corpus_embeddings, corpus_labels, *, margin=0.2, type_of_triplets="semihard",
                 negatives_per_anchor=1, positives="hardest", **kwargs):
        super().__init__(**kwargs)
        # A copy of its own: the miner updates rows in place and must never write into yours.
        self.corpus = np.array(corpus_embeddings, dtype=np.float32, order="C", copy=True)
        self.corpus /= np.linalg.norm(self.corpus, axis=1, keepdims=True).clip(1e-12)
        self.labels = np.asarray(corpus_labels)
        self.margin = margin
        self.strategy = type_of_triplets
        self.negatives_per_anchor = negatives_per_anchor
        self.positives = positives

    def update(self, embeddings, indices):
        """Stores fresh embeddings of corpus rows ``indices`` (e.g. a batch's, after a step)."""
        # .numpy() shares the batch's memory: normalise a copy, never the training tensor.
        rows = embeddings.detach().float().cpu().numpy().copy()
        rows /= np.linalg.norm(rows, axis=1, keepdims=True).clip(1e-12)
        self.corpus[np.asarray(indices.cpu() if torch.is_tensor(indices) else indices)] = rows

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None, indices=None):
        """pml's call, plus ``indices``: the corpus rows of the batch."""
        self.reset_stats()
        with torch.no_grad():
            mined = self.mine(embeddings, labels, ref_emb, ref_labels, indices=indices)
        self.output_assertion(mined)
        return mined

    def mine(self, embeddings, labels, ref_emb=None, ref_labels=None, indices=None):
        if indices is None:
            corpus, corpus_labels = embeddings.detach().float().cpu().numpy(), labels.cpu().numpy()
            anchors = np.arange(len(corpus))
        else:
            self.update(embeddings, indices)
            corpus, corpus_labels = self.corpus, self.labels
            anchors = np.asarray(indices.cpu() if torch.is_tensor(indices) else indices)
        found = tripmine.mine(corpus, corpus_labels, strategy=self.strategy, margin=self.margin,
                              negatives_per_anchor=self.negatives_per_anchor, positives=self.positives,
                              anchors=anchors, normalise=True)
        device = embeddings.device
        return tuple(torch.as_tensor(c, dtype=torch.long, device=device)
                     for c in (found.anchor, found.positive, found.negative))
