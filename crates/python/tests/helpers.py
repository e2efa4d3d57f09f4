"""Data shared by the test files."""

import numpy as np


def clustered(classes=12, per_class=6, dim=16, spread=0.7, seed=3):
    """Unit rows around random class centres, shuffled, with their integer labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim))
    x = np.repeat(centres, per_class, axis=0) + spread * rng.standard_normal((classes * per_class, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), per_class)
    order = rng.permutation(len(x))
    return x[order].astype(np.float32), labels[order]


def distances64(x):
    x = x.astype(np.float64)
    return np.sqrt(np.clip(2 - 2 * x @ x.T, 0, None))


def triplet_set(a, p, n):
    return set(zip(np.asarray(a).tolist(), np.asarray(p).tolist(), np.asarray(n).tolist()))


def off_edges(triplets, d, margin):
    """Triplets farther than float32 rounding from either edge of the band (t = 0, t = margin):
    the ones two implementations must agree on."""
    def clear(t):
        gap = d[t[0], t[2]] - d[t[0], t[1]]
        return min(abs(gap), abs(gap - margin)) > 1e-5
    return {t for t in triplets if clear(t)}
