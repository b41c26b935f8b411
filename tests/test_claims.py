"""The claims rule (vld.report.claims) on hand-made results: a clear gain is supported,
overlapping intervals are not shown, a clear loss is contradicted; the statistics behind it
against direct computations."""

from __future__ import annotations

import numpy as np
import pytest

from vld.report import claims
from vld.report.claims import CONTRADICTED, NOT_SHOWN, SUPPORTED, Effect
from vld.report.stats import paired_difference, proportion_difference, seeds_and_clusters_bootstrap
from test_report import igsm_scores, khop_cells, result


def khop_result(name, pattern, k, n_layer, error, seed=0, steps=100, noise=0.0):
    """Per-sequence wrong counts around `error` at hop counts 2 and 3 (16 labelled positions)."""
    rng = np.random.default_rng(seed + 7 * n_layer + 13 * k)
    r = result(name, "khop", pattern, k, n_layer, seed=seed, depth=False, train_steps=steps,
               khop=khop_cells({0: 0.0, 2: error, 3: error}))
    for cell in r["khop"]["hops"].values():
        jitter = rng.integers(-round(noise * 16), round(noise * 16) + 1, size=cell["sequences"])
        cell["wrong_per_sequence"] = list(np.clip(np.array(cell["wrong_per_sequence"]) + jitter, 0, 16).tolist())
    return r


def verdict_of(results, claim, family="khop"):
    return next(v for v in claims.claim_verdicts(results) if v.claim == claim and v.family == family)


def test_clear_gain_supported_overlap_not_shown_clear_loss_contradicted():
    base = khop_result("base", "base", 0, 2, 0.375, noise=0.1)
    gain = khop_result("cycle", "cycle", 1, 2, 0.125, noise=0.1)
    same = khop_result("cycle", "cycle", 1, 2, 0.375, noise=0.1)
    loss = khop_result("cycle", "cycle", 1, 2, 0.4375, noise=0.02)
    assert verdict_of([base, gain], "2").verdict == SUPPORTED
    assert verdict_of([base, same], "2").verdict == NOT_SHOWN
    lower = khop_result("base", "base", 0, 2, 0.25, noise=0.02)
    assert verdict_of([lower, loss], "2").verdict == CONTRADICTED
    effect = verdict_of([base, gain], "2").effect
    assert effect.low > 0 and effect.low <= effect.value <= effect.high


def test_not_learned_is_not_shown_and_missing_claims_say_why():
    base = khop_result("base", "base", 0, 2, 0.5)  # chance error is 0.5 in khop_cells
    cycle = khop_result("cycle", "cycle", 1, 2, 0.5)
    v = verdict_of([base, cycle], "2")
    assert v.verdict == NOT_SHOWN and v.why.startswith("not learned")
    rows = {v.claim: v for v in claims.claim_verdicts([base, cycle])}
    assert rows["5"].verdict == NOT_SHOWN and "no layer-subset variants" in rows["5"].why
    assert rows["1"].why.startswith("not in this profile")


def test_compute_matched_native_and_pattern_order_claims():
    runs = [khop_result("base", "base", 0, 2, 0.375, noise=0.05),
            khop_result("base2x", "base", 0, 2, 0.3125, steps=200, noise=0.05),
            khop_result("cycle", "cycle", 1, 2, 0.125, noise=0.05),
            khop_result("sequence", "sequence", 1, 2, 0.25, noise=0.05),
            khop_result("inverse", "inverse_cycle", 1, 2, 0.3125, noise=0.05),
            khop_result("native4", "base", 0, 4, 0.0, noise=0.0)]
    assert verdict_of(runs, "2c").verdict == SUPPORTED  # cycle x1 beats base trained twice as long
    assert verdict_of(runs, "3").verdict == SUPPORTED  # cycle > sequence > inverse cycle
    native = verdict_of(runs, "4")
    assert native.verdict == CONTRADICTED and native.effect.high < -claims.MATCH_MARGIN["khop"]
    runs[3] = khop_result("sequence", "sequence", 1, 2, 0.0625, noise=0.05)  # sequence beats cycle
    assert verdict_of(runs, "3").verdict == CONTRADICTED


def test_rules_on_hand_made_effects():
    assert claims.directional(Effect(0.1, 0.02, 0.2, "error points"))[0] == SUPPORTED
    assert claims.directional(Effect(0.1, -0.02, 0.2, "error points"))[0] == NOT_SHOWN
    assert claims.directional(Effect(-0.1, -0.2, -0.01, "error points"))[0] == CONTRADICTED
    assert claims.flat(Effect(0.01, -0.02, 0.03, "relative"))[0] == SUPPORTED
    assert claims.flat(Effect(0.04, 0.0, 0.07, "relative"))[0] == NOT_SHOWN
    assert claims.flat(Effect(-0.2, -0.3, -0.1, "relative"))[0] == CONTRADICTED
    assert claims.match(Effect(-0.01, -0.015, 0.0, "error points"), 0.02)[0] == SUPPORTED
    assert claims.match(Effect(-0.1, -0.12, -0.05, "error points"), 0.02)[0] == CONTRADICTED


def test_igsm_and_knowledge_claims():
    learned = lambda c: {"op15": igsm_scores(c, 200, baseline_hits=10)}
    runs = [result("r-base", "reasoning", "base", 0, 2, igsm=learned(40)),
            result("r-cycle", "reasoning", "cycle", 1, 2, igsm=learned(120))]
    v = verdict_of(runs, "2", "reasoning")
    assert v.verdict == SUPPORTED and v.effect.value == pytest.approx(0.4)
    bits = lambda c: {"absorbed_bits_entropy": c, "absorbed_bits_ce": c}
    flat = [result("k", "knowledge", "base", 0, 2, knowledge=bits(1000.0)),
            result("kc", "knowledge", "cycle", 1, 2, knowledge=bits(1010.0))]
    assert verdict_of(flat, "1", "knowledge").verdict == SUPPORTED
    flat[1]["knowledge"] = bits(1300.0)
    assert verdict_of(flat, "1", "knowledge").verdict == CONTRADICTED


def test_statistics_against_direct_computation():
    x1, n1, x2, n2 = 30, 100, 20, 100
    d, (low, high) = proportion_difference(x1, n1, x2, n2)
    assert d == pytest.approx(0.1) and low < 0.1 < high
    # Newcombe (1998) method 10 for 30/100 vs 20/100: about [-0.0216, 0.2185]
    assert low == pytest.approx(-0.0216, abs=2e-3) and high == pytest.approx(0.2185, abs=2e-3)
    a = [np.array([1.0, 2.0, 3.0, 4.0])]
    point, (lo, hi) = seeds_and_clusters_bootstrap(a, 500, seed=1)
    assert point == 2.5 and 1.0 <= lo < 2.5 < hi <= 4.0
    same = paired_difference(a, a, 200, seed=0)
    assert same == (0.0, (0.0, 0.0))  # paired: identical clusters cancel exactly
