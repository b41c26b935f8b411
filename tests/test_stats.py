"""The shared bootstraps of vld.stats against the draws written out by hand: one resampling
function serves ratios, means (no denominators) and the relative change, with the same draws
as each had on its own."""

from __future__ import annotations

import numpy as np
import pytest

from vld.stats import bootstrap_ratio_interval, percentile_interval, relative_change


def _percentiles(draws, level=0.95):
    tail = 100 * (1 - level) / 2
    return tuple(float(v) for v in np.percentile(draws, [tail, 100 - tail]))


def test_ratio_interval_resamples_clusters_with_replacement():
    rng = np.random.default_rng(5)
    wrong, positions = rng.integers(0, 9, size=23), rng.integers(8, 12, size=23)
    picks = np.random.default_rng(7).integers(0, 23, size=(300, 23))
    expected = _percentiles(wrong[picks].sum(axis=1) / positions[picks].sum(axis=1))
    assert bootstrap_ratio_interval(wrong, positions, resamples=300, seed=7) == expected


def test_mean_interval_is_the_plain_bootstrap_of_the_mean():
    values = np.random.default_rng(1).normal(size=37)
    picks = np.random.default_rng([3, 37]).integers(0, 37, size=(500, 37))
    expected = _percentiles(values[picks].mean(axis=1))
    assert bootstrap_ratio_interval(values, resamples=500, seed=[3, 37]) == expected


def test_ratio_interval_edge_cases():
    assert bootstrap_ratio_interval([], []) == (0.0, 1.0)
    assert bootstrap_ratio_interval([2.0], [4.0]) == (0.5, 0.5)
    assert bootstrap_ratio_interval([0.25]) == (0.25, 0.25)
    with pytest.raises(ValueError):
        bootstrap_ratio_interval([1.0, 2.0], [1.0])


def test_relative_change_draws_each_side_in_turn():
    a, b = np.array([930.0, 935.0, 941.0, 947.0]), np.array([1000.0, 1003.0, 998.0])
    rng = np.random.default_rng(11)
    ma = a[rng.integers(0, a.size, size=(400, a.size))].mean(axis=1)
    mb = b[rng.integers(0, b.size, size=(400, b.size))].mean(axis=1)
    change, interval = relative_change(list(a), list(b), resamples=400, seed=11)
    assert change == a.mean() / b.mean() - 1
    assert interval == _percentiles(ma / mb - 1)


def test_percentile_interval_is_the_central_share():
    draws = np.arange(1001, dtype=np.float64)
    assert percentile_interval(draws, 0.9) == (pytest.approx(50.0), pytest.approx(950.0))
