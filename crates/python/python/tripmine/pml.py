"""tripmine inside pytorch-metric-learning (pml) loops, with pml's conventions.

    from pytorch_metric_learning import losses
    from tripmine.pml import GlobalMiner, CorpusMemory, AccuracyCalculator

    # A miner: anchors from the batch, positives and negatives from the whole corpus.
    miner = GlobalMiner(corpus_embeddings, corpus_labels, type_of_triplets="semihard")
    loss_fn = losses.TripletMarginLoss(margin=0.2)
    triplets = miner(emb, labels, indices=rows)          # rows: the batch's corpus rows
    loss = loss_fn(emb, labels, triplets, miner.ref_emb, miner.ref_labels)

    # The same as a loss wrapper with CrossBatchMemory's call (pml's XBM, over the corpus).
    memory = CorpusMemory(losses.TripletMarginLoss(margin=0.2), corpus_embeddings, corpus_labels)
    loss = memory(emb, labels, rows)

    # Retrieval metrics with AccuracyCalculator's call and keys, exact and streamed.
    AccuracyCalculator(k="max_bin_count").get_accuracy(query, query_labels, reference, reference_labels)

The reference set follows pml's ``ref_emb`` convention: anchors index the batch, positives
and negatives index ``ref_emb`` (a bank of every corpus row's latest embedding, detached,
refreshed from each batch as ``CrossBatchMemory`` refreshes its queue). Triplet kinds
(``type_of_triplets``), with t = d(a,n) - d(a,p) and margin m:

    pml name    tripmine strategy   rule
    "all"       "violating"         t <= m (every margin-violating triplet)
    "hard"      "hard"              t <= 0
    "semihard"  "semihard"          0 < t <= m
    "easy"      "easy"              t > m
    -           "any"               every negative; or a mix such as "semihard=0.7,hard=0.3"

pml's TripletMarginMiner keeps every triplet of its kind in the batch; tripmine's miner keeps
``negatives_per_anchor`` per anchor and positive (nearest first; None: every one) from the
whole corpus, with the false-negative guard (``skip_nearest``, ``negative_floor``) and
``exclude`` (rows never used, e.g. an audit's exclusions). Importable where torch and
pytorch-metric-learning are installed.
"""

import logging
import time

import numpy as np
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.miners import BaseMiner

import tripmine
from tripmine import _tripmine

__all__ = ["GlobalMiner", "CorpusMemory", "AccuracyCalculator", "STRATEGY_OF"]

LOGGER = logging.getLogger(__name__)

# pml's type_of_triplets -> tripmine's strategy of the same rule.
STRATEGY_OF = {"all": "violating", "hard": "hard", "semihard": "semihard", "easy": "easy"}


def _strategy(type_of_triplets):
    name = str(type_of_triplets)
    return STRATEGY_OF.get(name, name)


def _distance_name(distance):
    """tripmine's distance for a pml distance object (None: pml's default, LpDistance())."""
    if distance is None:
        return "euclidean"
    if isinstance(distance, LpDistance) and distance.p == 2 and distance.normalize_embeddings:
        return {1: "euclidean", 2: "sqeuclidean"}.get(distance.power) or _unsupported(distance)
    if isinstance(distance, CosineSimilarity) and distance.normalize_embeddings:
        # 1 - cos: t on cosine distance is s(a,p) - s(a,n), pml's margin on similarities.
        return "cosine" if distance.power == 1 else _unsupported(distance)
    return _unsupported(distance)


def _unsupported(distance):
    raise ValueError(
        f"tripmine mines with its own distances over unit rows: LpDistance() (euclidean), "
        f"LpDistance(power=2) (sqeuclidean) or CosineSimilarity(), not {distance!r}"
    )


def _numpy_rows(name, x):
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float32).numpy()
    return tripmine._rows(name, x)


def _numpy_labels(name, labels):
    if torch.is_tensor(labels):
        labels = labels.detach().cpu().numpy()
    a = np.asarray(labels)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per row), not shape {a.shape}")
    return a


def _unit(rows):
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        bad = int(np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))[0])
        raise ValueError(f"embedding row {bad} is zero or not finite and has no direction")
    return rows / norms


class GlobalMiner(BaseMiner):
    """A pml miner whose positives and negatives come from the whole corpus.

    ``miner(embeddings, labels, indices=rows)`` stores the batch's embeddings as corpus rows
    ``rows`` (its bank entries), mines the batch's anchors against the bank with tripmine's
    miner, and returns ``(a, p, n)`` LongTensors on the batch's device: ``a`` positions in
    the batch, ``p`` and ``n`` rows of ``miner.ref_emb`` (the bank, detached; labels in
    ``miner.ref_labels``). Without ``indices`` the batch is its own corpus (indices into
    the batch, ``ref_emb`` the batch). Corpus labels must be integers (torch compares them).

    ``max_age``: mine only against bank rows refreshed by one of the last ``max_age`` updates
    (each call with ``indices`` is one; a row given at construction was never refreshed): like ``CrossBatchMemory``'s queue,
    which holds only embeddings of recent batches, so that rows the network has not seen for a
    long time (or ever, when the corpus was embedded by an untrained network) are neither
    positives nor negatives. None: every row. ``mining_seconds`` adds up the time spent in
    tripmine (bank updates and mining).
    """

    def __init__(self, corpus_embeddings, corpus_labels, *, margin=0.2, type_of_triplets="semihard",
                 negatives_per_anchor=1, positives="hardest", skip_nearest=0, negative_floor=0.0,
                 exclude=None, seed=0, max_age=None, **kwargs):
        super().__init__(**kwargs)
        self.distance_name = _distance_name(kwargs.get("distance"))
        # A copy of its own: the bank is updated in place and must never write into yours.
        self.bank = np.array(_unit(_numpy_rows("corpus_embeddings", corpus_embeddings)), dtype=np.float32, order="C")
        labels = _numpy_labels("corpus_labels", corpus_labels)
        if labels.dtype.kind not in "iub":
            raise ValueError(f"corpus_labels must be integers (pml compares label tensors), not dtype {labels.dtype}")
        if len(labels) != len(self.bank):
            raise ValueError(f"corpus_labels has {len(labels)} entries but corpus_embeddings has {len(self.bank)} rows")
        self.labels = labels.astype(np.int64)
        _, codes = np.unique(self.labels, return_inverse=True)
        self._codes = np.ascontiguousarray(codes.reshape(-1), dtype=np.int64)
        self.margin = float(margin)
        self.type_of_triplets = str(type_of_triplets)
        self.strategy = _strategy(type_of_triplets)
        self.negatives_per_anchor = (None if negatives_per_anchor is None
                                     else tripmine._count("negatives_per_anchor", negatives_per_anchor, 1))
        self.positives = str(positives)
        self.skip_nearest = tripmine._count("skip_nearest", skip_nearest)
        self.negative_floor = float(negative_floor)
        self.seed = tripmine._count("seed", seed)
        self.exclude = None if exclude is None else tripmine._indices("exclude", exclude, len(self.bank))
        self.max_age = None if max_age is None else tripmine._count("max_age", max_age, 1)
        # Batches stored so far, and after which one each row was last refreshed (-1: never).
        self._clock = 0
        self._refreshed = np.full(len(self.bank), -1, dtype=np.int64)
        self.mining_seconds = 0.0
        self._device_bank = None
        self._labels_tensor = torch.from_numpy(self.labels)
        self.ref_emb = torch.from_numpy(self.bank)
        self.ref_labels = self._labels_tensor
        # Checks the strategy and the rest once, here, rather than at the first step.
        self._mine_rows(np.zeros(0, dtype=np.int64))

    def _rows_of(self, indices):
        rows = np.asarray(indices.detach().cpu() if torch.is_tensor(indices) else indices).reshape(-1)
        if rows.dtype.kind not in "iu":
            raise ValueError(f"indices must be integer corpus rows, not dtype {rows.dtype}")
        rows = rows.astype(np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.bank)):
            raise ValueError(f"indices name rows outside the corpus 0..{len(self.bank)}")
        return rows

    def update(self, embeddings, indices):
        """Stores fresh embeddings of corpus rows ``indices`` (a batch's, for example): from
        the start of training, so that ``max_age`` counts their steps."""
        rows = self._rows_of(indices)
        if len(rows) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings for {len(rows)} indices")
        fresh = _unit(embeddings.detach().to("cpu", torch.float32).numpy())
        self.bank[rows] = fresh
        self._clock += 1
        self._refreshed[rows] = self._clock
        if self._device_bank is not None:
            at = torch.as_tensor(rows, device=self._device_bank.device)
            self._device_bank.index_copy_(0, at, torch.from_numpy(fresh).to(self._device_bank.device))

    def _excluded(self):
        """The user's exclusions and, with ``max_age``, the rows too long unrefreshed."""
        if self.max_age is None:
            return self.exclude
        stale = np.flatnonzero((self._refreshed < 0) | (self._refreshed <= self._clock - self.max_age))
        if self.exclude is None:
            return stale
        return np.union1d(self.exclude, stale)

    def _mine_rows(self, anchors):
        columns = _tripmine.mine(
            self.bank, self._codes, strategy=self.strategy, negatives_per_anchor=self.negatives_per_anchor,
            positives=self.positives, margin=self.margin, distance=self.distance_name,
            # A batch of anchors against the bank: one exact pass, no index to build or refresh.
            knn="exact", exclude=self._excluded(), anchors=anchors, seed=self.seed + self._clock,
            skip_nearest=self.skip_nearest, negative_floor=self.negative_floor,
            candidate_classes=500, max_search_depth=max(4096, self.negatives_per_anchor or 0), normalise=False)
        return columns["anchor"], columns["positive"], columns["negative"]

    def _reference_on(self, device):
        if device.type == "cpu":
            return torch.from_numpy(self.bank), self._labels_tensor
        if self._device_bank is None or self._device_bank.device != device:
            self._device_bank = torch.from_numpy(self.bank).to(device)
        return self._device_bank, self._labels_tensor.to(device)

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None, indices=None):
        """pml's call, plus ``indices``: the corpus rows of the batch."""
        if ref_emb is not None or ref_labels is not None:
            raise ValueError("GlobalMiner's reference is its corpus bank (miner.ref_emb); pass indices, not ref_emb")
        self.reset_stats()
        with torch.no_grad():
            mined = self.mine(embeddings, labels, indices=indices)
        self.output_assertion(mined)
        return mined

    def mine(self, embeddings, labels, ref_emb=None, ref_labels=None, indices=None):
        device = embeddings.device
        if indices is None:
            found = tripmine.mine(
                embeddings.detach().to("cpu", torch.float32).numpy(), _numpy_labels("labels", labels),
                strategy=self.strategy, margin=self.margin, negatives_per_anchor=self.negatives_per_anchor,
                positives=self.positives, distance=self.distance_name, knn="exact",
                skip_nearest=self.skip_nearest, negative_floor=self.negative_floor, normalise=True)
            self.ref_emb, self.ref_labels = embeddings.detach(), labels
            return tuple(torch.as_tensor(c, dtype=torch.long, device=device)
                         for c in (found.anchor, found.positive, found.negative))
        rows = self._rows_of(indices)
        batch_labels = _numpy_labels("labels", labels)
        if len(rows) != len(embeddings) or len(batch_labels) != len(embeddings):
            raise ValueError(f"a batch of {len(embeddings)} embeddings needs as many labels and indices, "
                             f"not {len(batch_labels)} and {len(rows)}")
        wrong = np.flatnonzero(self.labels[rows] != batch_labels)
        if len(wrong):
            i = int(wrong[0])
            raise ValueError(f"batch position {i} has label {batch_labels[i]} but corpus row {rows[i]} "
                             f"has label {self.labels[rows[i]]}: indices must name the batch's corpus rows")
        started = time.perf_counter()
        self.update(embeddings, rows)
        a, p, n = self._mine_rows(rows)
        # Corpus rows of anchors back to their places in the batch (the first, if a row repeats).
        order = np.argsort(rows, kind="stable")
        place = order[np.searchsorted(rows[order], a)]
        self.ref_emb, self.ref_labels = self._reference_on(device)
        mined = tuple(torch.as_tensor(c, dtype=torch.long, device=device) for c in (place, p, n))
        self.mining_seconds += time.perf_counter() - started
        return mined


class CorpusMemory(torch.nn.Module):
    """pml's ``CrossBatchMemory`` call over the whole corpus: ``memory(emb, labels, indices)``
    returns ``loss(emb, labels, (a, p, n), ref_emb, ref_labels)`` with the triplets a
    :class:`GlobalMiner` mines for the batch's corpus rows ``indices``.

    The bank holds every corpus row (not the last ``memory_size`` embeddings), refreshed from
    each batch; the loss sees only the bank rows the triplets use (the same loss as the whole
    bank for losses over mined tuples, and no B x N distance matrix per step). Keyword
    arguments go to the :class:`GlobalMiner` (``max_age`` for a memory of recent rows only,
    like XBM's queue); ``memory.miner.mining_seconds`` is the time spent in tripmine.
    """

    def __init__(self, loss, corpus_embeddings, corpus_labels, **miner_kwargs):
        super().__init__()
        self.loss = loss
        self.miner = GlobalMiner(corpus_embeddings, corpus_labels, **miner_kwargs)

    def forward(self, embeddings, labels, indices):
        a, p, n = self.miner(embeddings, labels, indices=indices)
        used, inverse = torch.unique(torch.cat([p, n]), return_inverse=True)
        ref_emb = self.miner.ref_emb[used].to(embeddings.dtype)
        ref_labels = self.miner.ref_labels[used]
        labels = torch.as_tensor(labels, device=embeddings.device)
        return self.loss(embeddings, labels, (a, inverse[: len(p)], inverse[len(p):]), ref_emb, ref_labels)


def _starts_with(r, rl, q, ql):
    """pml's check for ``ref_includes_query``: the reference begins with the query rows and
    labels. Compared a slice at a time (np.allclose on whole arrays makes several copies of
    them: 1.3 GB more at 10^6 x 128), and not at all when they are the same memory."""
    if len(r) < len(q) or not np.array_equal(ql, rl[: len(q)]):
        return False
    if q.__array_interface__["data"][0] == r.__array_interface__["data"][0]:
        return True
    step = 1 << 16
    return all(np.allclose(q[i : i + step], r[i : i + step]) for i in range(0, len(q), step))


class AccuracyCalculator:
    """pml's ``AccuracyCalculator`` with the same call, keys and definitions, computed exactly
    by tripmine in a bounded working set (no k-NN table, no N x N matrix): each query keeps
    only its R relevant scores while the reference streams past in tiles.

    Metrics: precision_at_1, r_precision, mean_average_precision_at_r,
    mean_average_precision and mean_reciprocal_rank (AMI and NMI need a k-means clustering:
    use pml's calculator for them). ``k``: None (every reference row, pml's default),
    "max_bin_count", or an integer (metrics over the first k neighbours, as pml truncates
    them). Rows are ranked by Euclidean distance as given, faiss's ``IndexFlatL2``, pml's
    default. torch tensors (any device) or numpy arrays in; ``device``, ``knn_func`` and
    ``kmeans_func`` are accepted for pml's signature only when left None.
    """

    METRICS = ("mean_average_precision", "mean_average_precision_at_r", "mean_reciprocal_rank",
               "precision_at_1", "r_precision")
    CLUSTERING = ("AMI", "NMI")

    def __init__(self, include=(), exclude=(), avg_of_avgs=False, return_per_class=False, k=None,
                 label_comparison_fn=None, device=None, knn_func=None, kmeans_func=None):
        self._check_names(include, exclude)
        if avg_of_avgs and return_per_class:
            raise ValueError("avg_of_avgs and return_per_class are mutually exclusive")
        if (not (isinstance(k, int) and k > 0)) and (k not in [None, "max_bin_count"]):
            raise ValueError("k must be an integer greater than 0, or None, or 'max_bin_count'")
        for name, value in (("label_comparison_fn", label_comparison_fn), ("knn_func", knn_func),
                            ("kmeans_func", kmeans_func)):
            if value is not None:
                raise NotImplementedError(f"{name}: tripmine's calculator compares labels for equality "
                                          f"with its own exact search; use pml's calculator for a custom one")
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.avg_of_avgs = avg_of_avgs
        self.return_per_class = return_per_class
        self.k = k
        self.device = device

    def _check_names(self, include, exclude):
        for names in (include, exclude):
            if not isinstance(names, (tuple, list)):
                raise TypeError(f"Arguments must be of type tuple, not {type(names)}.")
            unknown = set(names) - set(self.METRICS) - set(self.CLUSTERING)
            if unknown:
                raise ValueError(f"Primary metrics must be one or more of: {list(self.METRICS)}.")
        clustering = set(include) & set(self.CLUSTERING)
        if clustering:
            raise NotImplementedError(f"{sorted(clustering)} need a k-means clustering, which tripmine's "
                                      f"calculator does not run; use pml's AccuracyCalculator for them")

    def get_curr_metrics(self, include=(), exclude=()):
        include = include or self.include or self.METRICS
        exclude = tuple(exclude) + self.exclude
        return [m for m in self.METRICS if m in include and m not in exclude]

    def get_accuracy(self, query, query_labels, reference=None, reference_labels=None, ref_includes_query=False,
                     include=(), exclude=()):
        self._check_names(include, exclude)
        if reference is None:
            reference, reference_labels, ref_includes_query = query, query_labels, True
        q = _numpy_rows("query", query)
        r = _numpy_rows("reference", reference)
        ql = _numpy_labels("query_labels", query_labels)
        rl = _numpy_labels("reference_labels", reference_labels)
        if len(q) != len(ql) or len(r) != len(rl):
            raise ValueError("embeddings and labels must have the same length")
        if ref_includes_query and not _starts_with(r, rl, q, ql):
            raise ValueError("When ref_includes_query is True, the first len(query) elements of reference must be "
                             "equal to query, and the first len(query_labels) elements of reference_labels must be "
                             "equal to query_labels.")
        metrics = self.get_curr_metrics(include, exclude)
        names, codes = np.unique(np.concatenate([ql, rl]), return_inverse=True)
        codes = codes.reshape(-1).astype(np.int64)
        qc, rc = np.ascontiguousarray(codes[: len(ql)]), np.ascontiguousarray(codes[len(ql):])
        k = self._k(qc, rc, len(r), ref_includes_query, metrics)
        scores = _tripmine.accuracy_scores(q, qc, r, rc, ref_includes_query=bool(ref_includes_query), k=k)
        kept = scores["relevant"] > 0
        if not kept.any():
            LOGGER.warning("None of the query labels are in the reference set.")
        return {m: self._average(scores[m], qc, kept, names) for m in metrics}

    def _k(self, qc, rc, n_reference, ref_includes_query, metrics):
        self_count = int(bool(ref_includes_query))
        counts = np.bincount(rc, minlength=int(max(qc.max(), rc.max())) + 1)[np.unique(qc)]
        max_bin_count = int(counts.max())
        if self.k == "max_bin_count":
            return max(max_bin_count - self_count, 1)
        if self.k is None:
            return None
        if self.k < max_bin_count and {"r_precision", "mean_average_precision_at_r"} & set(metrics):
            LOGGER.warning(f"k ({self.k}) is less than the max bin count ({max_bin_count}), so r_precision and "
                           f"mean_average_precision_at_r are computed over the first k neighbours only")
        return self.k

    def _average(self, per_query, qc, kept, names):
        if not kept.any():
            return [float("nan")] * len(np.unique(qc)) if self.return_per_class else float("nan")
        values, classes = per_query[kept], qc[kept]
        if not (self.avg_of_avgs or self.return_per_class):
            return float(np.mean(values))
        present, inverse = np.unique(classes, return_inverse=True)
        per_class = np.bincount(inverse, weights=values) / np.bincount(inverse)
        return per_class.tolist() if self.return_per_class else float(np.mean(per_class))
