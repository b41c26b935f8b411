"""Confidence intervals of the report, in one place.

Wilson's interval for one accuracy measured once; percentile bootstraps for everything pooled
over training seeds. A pooled interval resamples the seeds first, then the test items within
them (two levels), so it carries training noise as well as test sampling; every bootstrap is
deterministic for its `seed` argument."""

from __future__ import annotations

import math

# Two-sided 95%: the 0.975 quantile of the standard normal.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for `successes` out of `n` trials, as fractions in [0, 1].

    n = 0 carries no information and gives the whole range (0.0, 1.0).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Clamp rounding noise at the ends (0/n and n/n give exact 0 and 1 analytically).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap_ratio_interval(numerators, denominators, resamples: int = 1000, seed: int = 0,
                             level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerators) / sum(denominators), resampling the
    clusters (e.g. the test sequences, whose positions are correlated) with replacement.

    Deterministic for a seed. One cluster (or none) carries no spread information: the
    interval is then the point itself (or the whole range)."""
    import numpy as np

    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError("bootstrap_ratio_interval: need two 1-d arrays of the same length")
    if num.size == 0 or den.sum() <= 0:
        return 0.0, 1.0
    point = float(num.sum() / den.sum())
    if num.size == 1:
        return point, point
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, num.size, size=(int(resamples), num.size))
    ratios = num[picks].sum(axis=1) / np.maximum(den[picks].sum(axis=1), 1e-300)
    tail = (1.0 - level) / 2
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return float(low), float(high)


def seeds_and_clusters_bootstrap(per_seed: list, resamples: int = 1000, seed: int = 0,
                                 level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Mean of per-cluster values pooled over seeds, with an interval from resampling seeds and
    clusters (two levels).

    `per_seed`: one 1-d array per training seed, of per-cluster values measured on the SAME
    clusters (test sequences) for every seed. A draw picks seeds with replacement, then cluster
    indices with replacement, and averages. One seed reduces to a bootstrap over clusters."""
    import numpy as np

    values = np.asarray([np.asarray(v, dtype=np.float64) for v in per_seed])
    if values.ndim != 2 or values.size == 0:
        raise ValueError("seeds_and_clusters_bootstrap: need equal-length 1-d arrays, one per seed")
    n_seeds, n_clusters = values.shape
    point = float(values.mean())
    rng = np.random.default_rng(seed)
    draws = np.empty(int(resamples))
    for i in range(int(resamples)):
        seeds = rng.integers(0, n_seeds, size=n_seeds)
        clusters = rng.integers(0, n_clusters, size=n_clusters)
        draws[i] = values[np.ix_(seeds, clusters)].mean()
    return point, _percentiles(draws, level)


def paired_difference(a: list, b: list, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """mean(a) - mean(b) with a bootstrap interval, for two variants measured on the same clusters.

    `a`, `b`: lists (one per training seed) of per-cluster values on the same test clusters. Each
    draw resamples the seeds of a and of b independently, then the clusters: one set of cluster
    indices for every seed of both sides, since all were tested on the same clusters (the
    pairing). The interval so carries both training noise and test sampling."""
    import numpy as np

    va = np.asarray([np.asarray(v, dtype=np.float64) for v in a])
    vb = np.asarray([np.asarray(v, dtype=np.float64) for v in b])
    if va.ndim != 2 or vb.ndim != 2 or va.shape[1] != vb.shape[1]:
        raise ValueError("paired_difference: need per-seed arrays over the same clusters")
    point = float(va.mean() - vb.mean())
    rng = np.random.default_rng(seed)
    n = va.shape[1]
    draws = np.empty(int(resamples))
    for i in range(int(resamples)):
        clusters = rng.integers(0, n, size=n)
        sa = rng.integers(0, len(va), size=len(va))
        sb = rng.integers(0, len(vb), size=len(vb))
        draws[i] = va[np.ix_(sa, clusters)].mean() - vb[np.ix_(sb, clusters)].mean()
    return point, _percentiles(draws, level)


def _percentiles(draws, level: float) -> tuple[float, float]:
    import numpy as np

    tail = (1.0 - level) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)


def _count_arrays(per_seed: list, where: str):
    """per_seed: one list of (correct, n) per test set for each seed -> int arrays [seeds, tests]."""
    import numpy as np

    counts = np.asarray(per_seed, dtype=np.int64)
    if counts.ndim != 3 or counts.shape[0] == 0 or counts.shape[2] != 2:
        raise ValueError(f"{where}: need per seed a list of (correct, n), the same test sets for every seed")
    correct, n = counts[..., 0], counts[..., 1]
    if np.any(n <= 0) or np.any(correct < 0) or np.any(correct > n):
        raise ValueError(f"{where}: need 0 <= correct <= n and n > 0 in every cell")
    return correct, n


def _resampled_accuracy(correct, n, resamples: int, rng):
    """[resamples] pooled accuracies: seeds drawn with replacement, then each drawn seed's
    problems drawn with replacement per test set. The number correct among n problems drawn
    with replacement from a set with `correct` right answers is Binomial(n, correct / n)
    exactly, so the counts stand for the per-problem outcomes."""
    seeds = rng.integers(0, correct.shape[0], size=(int(resamples), correct.shape[0]))
    drawn = rng.binomial(n[seeds], correct[seeds] / n[seeds])
    return drawn.sum(axis=(1, 2)) / n[seeds].sum(axis=(1, 2))


def seeds_and_problems_interval(per_seed: list, resamples: int = 2000, seed: int = 0,
                                level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Pooled accuracy (all seeds' correct / all seeds' n) with a two-level bootstrap interval
    (seeds, then problems within a seed; `_resampled_accuracy`).

    `per_seed`: for each training seed, [(correct, n)] per test set (same test sets for all)."""
    import numpy as np

    correct, n = _count_arrays(per_seed, "seeds_and_problems_interval")
    rng = np.random.default_rng(seed)
    return float(correct.sum() / n.sum()), _percentiles(_resampled_accuracy(correct, n, resamples, rng), level)


def accuracy_difference(a: list, b: list, resamples: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Pooled accuracy of a minus that of b, two-level bootstrap interval: each draw resamples
    a's seeds and their problems, and b's independently (`seeds_and_problems_interval`'s
    layout). Without per-problem outcomes the two sides cannot be paired by problem."""
    import numpy as np

    ca, na = _count_arrays(a, "accuracy_difference")
    cb, nb = _count_arrays(b, "accuracy_difference")
    rng = np.random.default_rng(seed)
    draws = _resampled_accuracy(ca, na, resamples, rng) - _resampled_accuracy(cb, nb, resamples, rng)
    return float(ca.sum() / na.sum() - cb.sum() / nb.sum()), _percentiles(draws, level)


def relative_change(a: list, b: list, resamples: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """mean(a) / mean(b) - 1 for one number per training seed on each side, with a percentile
    bootstrap interval over the seeds of each side (drawn independently). One seed a side
    gives the point for both ends."""
    import numpy as np

    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if va.ndim != 1 or vb.ndim != 1 or not va.size or not vb.size or np.any(vb <= 0):
        raise ValueError("relative_change: need one positive number per seed on each side")
    rng = np.random.default_rng(seed)
    ma = va[rng.integers(0, va.size, size=(int(resamples), va.size))].mean(axis=1)
    mb = vb[rng.integers(0, vb.size, size=(int(resamples), vb.size))].mean(axis=1)
    return float(va.mean() / vb.mean() - 1), _percentiles(ma / mb - 1, level)
