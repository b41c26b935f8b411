"""Confidence intervals and fits, for evaluation and the report alike (numpy only, no torch).

Wilson's interval for one accuracy measured once; percentile bootstraps over test clusters
(sequences) for a mean or a ratio, and over training seeds then test items (two levels) for
everything pooled over seeds, so a pooled interval carries training noise as well as test
sampling; the power-law fit of loss against depth with its interval. Every bootstrap is
deterministic for its `seed` argument."""

from __future__ import annotations

import math

import numpy as np

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


def bootstrap_ratio_interval(numerators, denominators=None, resamples: int = 1000, seed=0,
                             level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerators) / sum(denominators), resampling the
    clusters (e.g. the test sequences, whose positions are correlated) with replacement;
    without denominators, of the mean of the numerators.

    Deterministic for a seed (an int or a sequence of ints, as numpy's default_rng takes it).
    One cluster (or none) carries no spread information: the interval is then the point
    itself (or the whole range)."""
    num = np.asarray(numerators, dtype=np.float64)
    den = np.ones_like(num) if denominators is None else np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError("bootstrap_ratio_interval: need two 1-d arrays of the same length")
    if num.size == 0 or den.sum() <= 0:
        return 0.0, 1.0
    point = float(num.sum() / den.sum())
    if num.size == 1:
        return point, point
    return percentile_interval(_resampled_ratios(num, den, resamples, np.random.default_rng(seed)), level)


def bootstrap_bytes(resamples: int, clusters: int) -> int:
    """Memory _resampled_ratios holds at once: the drawn cluster indices (int64) and the
    numerators and denominators gathered by them (float64)."""
    return 3 * 8 * int(resamples) * int(clusters)


def _resampled_ratios(num, den, resamples: int, rng):
    """[resamples] ratios of sums over clusters drawn with replacement (with unit denominators,
    the means: a sum over n ones is n exactly)."""
    picks = rng.integers(0, num.size, size=(int(resamples), num.size))
    return num[picks].sum(axis=1) / np.maximum(den[picks].sum(axis=1), 1e-300)


def seeds_and_clusters_bootstrap(per_seed: list, resamples: int = 1000, seed: int = 0,
                                 level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Mean of per-cluster values pooled over seeds, with an interval from resampling seeds and
    clusters (two levels).

    `per_seed`: one 1-d array per training seed, of per-cluster values measured on the SAME
    clusters (test sequences) for every seed. A draw picks seeds with replacement, then cluster
    indices with replacement, and averages. One seed reduces to a bootstrap over clusters."""
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
    return point, percentile_interval(draws, level)


def paired_difference(a: list, b: list, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """mean(a) - mean(b) with a bootstrap interval, for two variants measured on the same clusters.

    `a`, `b`: lists (one per training seed) of per-cluster values on the same test clusters. Each
    draw resamples the seeds of a and of b independently, then the clusters: one set of cluster
    indices for every seed of both sides, since all were tested on the same clusters (the
    pairing). The interval so carries both training noise and test sampling."""
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
    return point, percentile_interval(draws, level)


def percentile_interval(draws, level: float = 0.95) -> tuple[float, float]:
    """The central `level` share of bootstrap draws (percentile interval)."""
    tail = (1.0 - level) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)


def _count_arrays(per_seed: list, where: str):
    """per_seed: one list of (correct, n) per test set for each seed -> int arrays [seeds, tests]."""
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
    correct, n = _count_arrays(per_seed, "seeds_and_problems_interval")
    rng = np.random.default_rng(seed)
    return float(correct.sum() / n.sum()), percentile_interval(_resampled_accuracy(correct, n, resamples, rng), level)


def accuracy_difference(a: list, b: list, resamples: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Pooled accuracy of a minus that of b, two-level bootstrap interval: each draw resamples
    a's seeds and their problems, and b's independently (`seeds_and_problems_interval`'s
    layout). Without per-problem outcomes the two sides cannot be paired by problem."""
    ca, na = _count_arrays(a, "accuracy_difference")
    cb, nb = _count_arrays(b, "accuracy_difference")
    rng = np.random.default_rng(seed)
    draws = _resampled_accuracy(ca, na, resamples, rng) - _resampled_accuracy(cb, nb, resamples, rng)
    return float(ca.sum() / na.sum() - cb.sum() / nb.sum()), percentile_interval(draws, level)


def _score_arrays(per_seed: list, where: str):
    """per_seed: one list of (score, standard error) per task for each seed -> float arrays [seeds, tasks]."""
    cells = np.asarray(per_seed, dtype=np.float64)
    if cells.ndim != 3 or cells.shape[0] == 0 or cells.shape[1] == 0 or cells.shape[2] != 2:
        raise ValueError(f"{where}: need per seed a list of (score, standard error), the same tasks for every seed")
    if not np.all(np.isfinite(cells)) or np.any(cells[..., 1] < 0):
        raise ValueError(f"{where}: need finite scores and standard errors >= 0")
    return cells[..., 0], cells[..., 1]


def _resampled_scores(score, error, resamples: int, rng):
    """[resamples] means over seeds and tasks: seeds drawn with replacement, then each drawn
    seed's task scores drawn from Normal(score, standard error), the law of a mean over a task's
    items that its standard error describes (the items themselves are not kept)."""
    seeds = rng.integers(0, score.shape[0], size=(int(resamples), score.shape[0]))
    return rng.normal(score[seeds], error[seeds]).mean(axis=(1, 2))


def score_difference(a: list, b: list, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """Mean over tasks of a's score minus b's (each side's seeds averaged), with a two-level
    bootstrap interval: each draw resamples a's seeds and their items, and b's independently
    (`_resampled_scores`). `a`, `b`: for each training seed, [(score, standard error)] per task,
    the same tasks on both sides."""
    sa, ea = _score_arrays(a, "score_difference")
    sb, eb = _score_arrays(b, "score_difference")
    if sa.shape[1] != sb.shape[1]:
        raise ValueError("score_difference: both sides need the same tasks")
    rng = np.random.default_rng(seed)
    draws = _resampled_scores(sa, ea, resamples, rng) - _resampled_scores(sb, eb, resamples, rng)
    return float(sa.mean() - sb.mean()), percentile_interval(draws, level)


def relative_change(a: list, b: list, resamples: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """mean(a) / mean(b) - 1 for one number per training seed on each side, with a percentile
    bootstrap interval over the seeds of each side (drawn independently). One seed a side
    gives the point for both ends."""
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if va.ndim != 1 or vb.ndim != 1 or not va.size or not vb.size or np.any(vb <= 0):
        raise ValueError("relative_change: need one positive number per seed on each side")
    rng = np.random.default_rng(seed)
    ma = _resampled_ratios(va, np.ones_like(va), resamples, rng)
    mb = _resampled_ratios(vb, np.ones_like(vb), resamples, rng)
    return float(va.mean() / vb.mean() - 1), percentile_interval(ma / mb - 1, level)


# ---------------------------------------------------------------- the power-law fit

# Exponents searched (then refined) by the fit. Up to 16: at hops 0-4 the native k-hop error
# falls to zero within a few layers, and a grid ending at 4 put the fit on its bound.
A_GRID = np.linspace(0.01, 16.0, 1600)


def _profile_sse(depth: np.ndarray, loss: np.ndarray, a) -> tuple:
    """(c, L0, sse) of the best linear fit loss ~ c * depth^-a + L0, for each exponent in a
    (closed-form simple regression, vectorised over a)."""
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    x = depth[None, :] ** -a[:, None]
    x_mean = x.mean(axis=1, keepdims=True)
    loss_mean = loss.mean()
    dx = x - x_mean
    sxx = (dx * dx).sum(axis=1)
    sxy = (dx * (loss - loss_mean)).sum(axis=1)
    syy = float(((loss - loss_mean) ** 2).sum())
    c = np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1.0), 0.0)
    l0 = loss_mean - c * x_mean[:, 0]
    sse = np.maximum(syy - c * sxy, 0.0)
    return c, l0, sse


def fit_power_law(depth, loss) -> dict | None:
    """Least-squares L = c * depth^-a + L0: for each a, c and L0 are linear; a is found on
    A_GRID, then on four successively finer grids around the best point.
    Returns {"c", "a", "L0", "sse", "n", "a_at_bound"} or None with < 3 distinct depths."""
    depth = np.asarray(depth, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    if depth.size != loss.size or np.unique(depth).size < 3 or np.any(depth <= 0):
        return None
    sse = _profile_sse(depth, loss, A_GRID)[2]
    best = int(np.argmin(sse))
    a, best_sse = float(A_GRID[best]), float(sse[best])
    step = float(A_GRID[1] - A_GRID[0])
    # Refinement: finer grids around the best point (the profile is smooth in a).
    for _ in range(4):
        grid = np.linspace(max(a - step, 1e-6), a + step, 101)
        fine = _profile_sse(depth, loss, grid)[2]
        index = int(np.argmin(fine))
        if fine[index] <= best_sse:
            a, best_sse = float(grid[index]), float(fine[index])
        step = float(grid[1] - grid[0])
    c, l0, _ = (float(v[0]) for v in _profile_sse(depth, loss, a))
    # The closed-form sse can lose digits at an exact fit: recompute from the residuals.
    residual = loss - (c * depth ** -a + l0)
    return {"c": c, "a": float(a), "L0": l0, "sse": float(residual @ residual), "n": int(depth.size),
            "a_at_bound": bool(best in (0, A_GRID.size - 1))}


def _covariance_interval(depth, fit) -> dict | None:
    """95% normal intervals of a and L0 from s^2 (J^T J)^-1 (needs more points than 3)."""
    depth = np.asarray(depth, dtype=np.float64)
    n = depth.size
    if n <= 3:
        return None
    power = depth ** -fit["a"]
    jac = np.stack([power, -fit["c"] * np.log(depth) * power, np.ones_like(depth)], axis=1)
    try:
        cov = np.linalg.inv(jac.T @ jac) * (fit["sse"] / (n - 3))
    except np.linalg.LinAlgError:
        return None
    sd_a, sd_l0 = math.sqrt(max(cov[1, 1], 0.0)), math.sqrt(max(cov[2, 2], 0.0))
    return {"a": [fit["a"] - Z95 * sd_a, fit["a"] + Z95 * sd_a],
            "L0": [fit["L0"] - Z95 * sd_l0, fit["L0"] + Z95 * sd_l0]}


def _seed_bootstrap(points: list[dict], seed: int, resamples: int, level: float) -> dict | None:
    """Percentile intervals of a and L0 over fits to the seeds resampled with replacement
    (a seed's points go together); None with < 3 seeds or when most draws cannot be fitted."""
    seeds = sorted({p["seed"] for p in points}, key=str)
    if len(seeds) < 3:
        return None
    rng = np.random.default_rng(seed)
    by_seed = {s: [p for p in points if p["seed"] == s] for s in seeds}
    a_values, l0_values = [], []
    for _ in range(int(resamples)):
        chosen = rng.integers(0, len(seeds), size=len(seeds))
        sample = [p for i in chosen for p in by_seed[seeds[i]]]
        fit = fit_power_law([p["depth"] for p in sample], [p["loss"] for p in sample])
        if fit is not None:
            a_values.append(fit["a"])
            l0_values.append(fit["L0"])
    if len(a_values) < int(resamples) // 2:
        return None
    return {"a": list(percentile_interval(a_values, level)), "L0": list(percentile_interval(l0_values, level))}


def fit_with_interval(points: list[dict], seed: int = 0, resamples: int = 1000,
                      level: float = 0.95) -> dict | None:
    """fit_power_law over points {"depth", "loss", "seed"} with intervals of a and L0:
    percentile bootstrap over seeds when there are >= 3 seeds, else the fit's covariance
    (normal, 95%) when there are more than 3 points, else none."""
    fit = fit_power_law([p["depth"] for p in points], [p["loss"] for p in points])
    if fit is None:
        return None
    interval = _seed_bootstrap(points, seed, resamples, level)
    method = "seed bootstrap"
    if interval is None:
        interval = _covariance_interval([p["depth"] for p in points], fit)
        method = "fit covariance" if interval is not None else "none"
    fit["interval"] = interval
    fit["interval_method"] = method
    fit["seeds"] = len({p["seed"] for p in points})
    return fit
