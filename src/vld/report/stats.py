"""Binomial confidence intervals for accuracies (Wilson score interval)."""

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
    tail = (1.0 - level) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return point, (float(low), float(high))


def paired_difference(a: list, b: list, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """mean(a) - mean(b) with a bootstrap interval, for two variants measured on the same clusters.

    `a`, `b`: lists (one per training seed) of per-cluster values on the same test clusters. Each
    draw resamples the seeds of a and of b independently and one shared set of cluster indices
    (the pairing), so the interval reflects both training noise and test sampling."""
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
    tail = (1.0 - level) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return point, (float(low), float(high))


def proportion_difference(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, tuple[float, float]]:
    """p1 - p2 with Newcombe's hybrid score interval (from the two Wilson intervals), for two
    independent binomial samples (e.g. two models' answer accuracies on test problems)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, z)
    l2, u2 = wilson_interval(x2, n2, z)
    d = p1 - p2
    return d, (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
