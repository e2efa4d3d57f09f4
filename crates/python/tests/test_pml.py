"""tripmine.pml inside real pytorch-metric-learning loops: the miner under pml's `ref_emb`
convention with pml's losses, the memory wrapper against CrossBatchMemory on the same bank, and
the AccuracyCalculator against pml's."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners, samplers
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator as PmlAccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

import tripmine
from helpers import clustered, distances64, off_edges, triplet_set
from tripmine.pml import AccuracyCalculator, CorpusMemory, GlobalMiner


def planted_problem(classes=12, per_class=10, dim=24, seed=0):
    """Inputs whose class shows only in a few of their features, among noise: a linear
    embedder must learn to look at those, so a triplet loss has something to lower."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, 4)) * 2
    labels = np.repeat(np.arange(classes), per_class)
    x = rng.standard_normal((len(labels), dim)).astype(np.float32)
    x[:, :4] += centres[labels]
    return torch.from_numpy(x), torch.from_numpy(labels)


class Rows(torch.utils.data.Dataset):
    """A dataset that returns each row's index with it, as the corpus miner needs."""

    def __init__(self, x, labels):
        self.x, self.labels = x, labels

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.labels[i], i


def test_to_pandas():
    import pandas as pd

    x, labels = clustered()
    frame = tripmine.mine(x, labels).to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame.columns)[:3] == ["anchor", "positive", "negative"]
    assert len(frame) > 0


def test_all_semihard_triplets_equal_pml_triplet_margin_miner():
    x, labels = clustered(classes=8, per_class=8, spread=0.9, seed=19)
    pml = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    want = triplet_set(*pml(torch.from_numpy(x), torch.from_numpy(labels)))
    r = tripmine.mine(x, labels, strategy="semihard", positives="all", negatives_per_anchor=None)
    got = triplet_set(r.anchor, r.positive, r.negative)
    d = distances64(x)
    assert len(want) > 100 and not off_edges(want ^ got, d, 0.2)


def test_global_miner_follows_the_ref_emb_convention():
    x, labels = clustered(seed=23)
    before = x.copy()
    miner = GlobalMiner(x, labels, margin=0.2, type_of_triplets="semihard", negatives_per_anchor=2)
    rows = np.arange(0, len(x), 7)
    emb = torch.from_numpy(x[rows])
    a, p, n = miner(emb, torch.from_numpy(labels[rows]), indices=torch.from_numpy(rows))
    assert a.dtype == p.dtype == n.dtype == torch.long and len(a) > 0
    # anchors are positions in the batch; positives and negatives rows of the reference
    assert a.max() < len(rows) and miner.ref_emb.shape == (len(x), x.shape[1])
    assert torch.equal(miner.ref_labels[p], torch.from_numpy(labels[rows])[a])
    assert not (miner.ref_labels[n] == torch.from_numpy(labels[rows])[a]).any()
    d_ap = (emb[a] - miner.ref_emb[p]).norm(dim=1)
    d_an = (emb[a] - miner.ref_emb[n]).norm(dim=1)
    assert ((d_an - d_ap > -1e-6) & (d_an - d_ap <= 0.2 + 1e-6)).all(), "semi-hard by pml's distances"
    assert not set(n.tolist()) <= set(rows.tolist()), "negatives come from the whole corpus"
    # the bank is the miner's copy: updating it never writes into the caller's arrays
    miner(emb * 3, torch.from_numpy(labels[rows]), indices=torch.from_numpy(rows))
    assert np.array_equal(x, before)
    # indices that do not match the batch's labels are named, not mined
    with pytest.raises(ValueError, match="indices must name the batch's corpus rows"):
        miner(emb, torch.from_numpy(labels[rows]), indices=torch.from_numpy(rows + 1))


@pytest.mark.parametrize("make_loss", [
    lambda: losses.TripletMarginLoss(margin=0.2),
    lambda: losses.MarginLoss(margin=0.2, nu=0, beta=1.2, num_classes=12),
    lambda: losses.ContrastiveLoss(pos_margin=0, neg_margin=1),
], ids=["TripletMarginLoss", "MarginLoss", "ContrastiveLoss"])
def test_the_miner_trains_inside_pml_losses(make_loss):
    torch.manual_seed(0)
    x, labels = planted_problem()
    model = torch.nn.Linear(x.shape[1], 16)
    loss_fn = make_loss()
    with torch.no_grad():
        corpus = model(x)
    miner = GlobalMiner(corpus, labels, margin=0.2, type_of_triplets="all", negatives_per_anchor=3)
    optimiser = torch.optim.Adam(list(model.parameters()) + list(loss_fn.parameters()), lr=0.02)
    sampler = samplers.MPerClassSampler(labels, m=4, batch_size=32, length_before_new_iter=len(x))
    loader = torch.utils.data.DataLoader(Rows(x, labels), batch_size=32, sampler=sampler)
    first, last = [], []
    for epoch in range(8):
        for images, targets, rows in loader:
            emb = model(images)
            triplets = miner(emb, targets, indices=rows)
            loss = loss_fn(emb, targets, triplets, miner.ref_emb, miner.ref_labels)
            assert torch.isfinite(loss)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            (first if epoch == 0 else last).append(loss.item())
    with torch.no_grad():
        before = AccuracyCalculator(include=("mean_average_precision_at_r",)).get_accuracy(corpus, labels)
        after = AccuracyCalculator(include=("mean_average_precision_at_r",)).get_accuracy(model(x), labels)
    assert np.mean(last[-4:]) < np.mean(first), (first, last[-4:])
    assert after["mean_average_precision_at_r"] > before["mean_average_precision_at_r"] + 0.1, (before, after)


class TripletMarginLoss(losses.TripletMarginLoss):
    """pml's loss, recording the tuples a wrapper hands it (named as pml's, which
    CrossBatchMemory checks)."""

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        self.seen = (indices_tuple, ref_emb)
        return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)


@pytest.mark.parametrize("kind", ["semihard", "all", "hard"])
def test_corpus_memory_mines_what_cross_batch_memory_mines_on_the_same_bank(kind):
    x, labels = clustered(classes=10, per_class=8, spread=0.9, seed=47)
    n, batch = len(x), 16
    emb, lab = torch.from_numpy(x), torch.from_numpy(labels)
    pml_miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets=kind)
    xbm = losses.CrossBatchMemory(TripletMarginLoss(margin=0.2), x.shape[1], memory_size=n, miner=pml_miner)
    # Fill XBM's queue with the corpus in row order, so that its slot i is corpus row i.
    for start in range(0, n, batch):
        xbm(emb[start:start + batch], lab[start:start + batch])
    assert xbm.has_been_filled and xbm.queue_idx == 0
    ours = CorpusMemory(TripletMarginLoss(margin=0.2), x, labels, type_of_triplets=kind,
                        positives="all", negatives_per_anchor=None)
    rows = torch.arange(batch)
    pml_loss = xbm(emb[:batch], lab[:batch])
    (a, p, neg), _ = xbm.loss.seen
    want = triplet_set(a, p, neg)
    our_loss = ours(emb[:batch], lab[:batch], rows)
    (a, p, neg), ref = ours.loss.seen
    # the wrapper's compact reference holds bank rows: map them back to corpus rows
    row_of = torch.cdist(ref.float(), emb).argmin(1)
    got = triplet_set(a, row_of[p], row_of[neg])
    assert len(want) > 20 and not off_edges(want ^ got, distances64(x), 0.2)
    if want == got:
        assert our_loss.item() == pytest.approx(pml_loss.item(), rel=1e-5)


def test_corpus_memory_takes_the_false_negative_guard_and_exclusions():
    x, labels = clustered(classes=10, per_class=8, spread=0.9, seed=53)
    excluded = np.arange(40, 60)
    memory = CorpusMemory(TripletMarginLoss(margin=0.2), x, labels, type_of_triplets="all",
                          negatives_per_anchor=5, skip_nearest=2, exclude=excluded)
    rows = torch.arange(16)
    memory(torch.from_numpy(x[:16]), torch.from_numpy(labels[:16]), rows)
    a, p, n = memory.miner(torch.from_numpy(x[:16]), torch.from_numpy(labels[:16]), indices=rows)
    assert len(a) > 0 and not set(n.tolist()) & set(excluded.tolist())
    d = distances64(x)
    for anchor, negative in zip(a.tolist(), n.tolist()):
        other = np.flatnonzero((labels != labels[anchor]) & ~np.isin(np.arange(len(x)), excluded))
        nearest_two = other[np.argsort(d[anchor, other])[:2]]
        assert negative not in nearest_two, "skip_nearest passes over the 2 nearest other-label rows"


def pml_calculator(**kwargs):
    # pml's definitions with exact torch k-NN on raw L2 (faiss's IndexFlatL2 ranking).
    return PmlAccuracyCalculator(knn_func=CustomKNN(LpDistance(normalize_embeddings=False)),
                                 exclude=("AMI", "NMI"), **kwargs)


@pytest.mark.parametrize("options", [{}, {"k": "max_bin_count"}, {"k": 3}, {"avg_of_avgs": True},
                                     {"return_per_class": True}], ids=str)
def test_accuracy_calculator_equals_pml_s(options):
    rng = np.random.default_rng(59)
    # Unnormalised rows, classes of 2-9 rows, a query label absent from the reference.
    labels = rng.integers(0, 25, 300)
    x = rng.standard_normal((300, 12)).astype(np.float32) + 0.8 * rng.standard_normal((25, 12)).astype(np.float32)[labels]
    query, query_labels = x[:80], labels[:80].copy()
    query_labels[:3] = 99
    reference, reference_labels = x[80:], labels[80:]
    for args in [(torch.from_numpy(x), torch.from_numpy(labels)),
                 (torch.from_numpy(query), torch.from_numpy(query_labels), torch.from_numpy(reference),
                  torch.from_numpy(reference_labels), False),
                 (torch.from_numpy(x), torch.from_numpy(labels), torch.from_numpy(x), torch.from_numpy(labels), True)]:
        want = pml_calculator(**options).get_accuracy(*args)
        got = AccuracyCalculator(**options).get_accuracy(*args)
        assert list(got) == list(want)
        for key in want:
            assert np.allclose(got[key], want[key], atol=1e-6, rtol=0), (key, got[key], want[key])
        # numpy in gives the same numbers
        as_numpy = [a.numpy() if torch.is_tensor(a) else a for a in args]
        assert AccuracyCalculator(**options).get_accuracy(*as_numpy) == got


def test_accuracy_calculator_keeps_pml_s_checks():
    x = torch.randn(10, 4)
    labels = torch.arange(10) % 3
    with pytest.raises(ValueError, match="first len\\(query\\)"):
        AccuracyCalculator().get_accuracy(x, labels, x.flip(0), labels, True)
    with pytest.raises(NotImplementedError, match="k-means"):
        AccuracyCalculator(include=("AMI",))
    with pytest.raises(ValueError, match="Primary metrics"):
        AccuracyCalculator(include=("precision_at_10",))
    with pytest.raises(ValueError, match="k must be"):
        AccuracyCalculator(k=0)
    got = AccuracyCalculator(include=("precision_at_1",)).get_accuracy(x, labels)
    assert list(got) == ["precision_at_1"]


def test_max_age_mines_only_rows_refreshed_by_recent_batches():
    x, labels = clustered(classes=10, per_class=8, spread=0.9, seed=61)
    miner = GlobalMiner(x, labels, type_of_triplets="any", positives="all", negatives_per_anchor=None, max_age=2)
    emb, lab = torch.from_numpy(x), torch.from_numpy(labels)
    first, second, third = torch.arange(0, 20), torch.arange(20, 40), torch.arange(40, 60)
    miner(emb[first], lab[first], indices=first)
    a, p, n = miner(emb[second], lab[second], indices=second)
    # Rows 0-39 were refreshed by the last two batches; rows 40-79 never were.
    assert len(a) > 0 and set(p.tolist()) | set(n.tolist()) <= set(range(40))
    a, p, n = miner(emb[third], lab[third], indices=third)
    used = set(p.tolist()) | set(n.tolist())
    assert used <= set(range(20, 60)) and used & set(range(40, 60)), "the first batch has aged out"
    assert miner.mining_seconds > 0
