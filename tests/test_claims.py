"""The claims rule (vld.report.claims) on hand-made results: seeds first (fewer than three a
side is "not shown"), then the interval, which resamples seeds and test items; the rule
defects found with hand-made numbers; the statistics behind it against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vld.report import claims, tables
from vld.report.claims import CONTRADICTED, NOT_SHOWN, SUPPORTED, Effect
from vld.stats import (accuracy_difference, paired_difference, relative_change, seeds_and_clusters_bootstrap,
                       seeds_and_problems_interval)
from test_report import igsm_scores, khop_cells, result

SEEDS = (0, 1, 2)


def khop_result(name, pattern, k, n_layer, error, seed=0, steps=100, noise=0.0, hops=(2, 3), family="khop",
                layers=None):
    """Per-sequence wrong counts around `error` at hop counts 0 and `hops` (16 labelled
    positions); `noise` jitters each sequence's count (seeded by the seed and variant)."""
    rng = np.random.default_rng(seed + 7 * n_layer + 13 * k)
    r = result(name, family, pattern, k, n_layer, seed=seed, depth=False, train_steps=steps, layers=layers,
               khop=khop_cells({0: 0.0, **{h: error for h in hops}}))
    for cell in r["khop"]["hops"].values():
        jitter = rng.integers(-round(noise * 16), round(noise * 16) + 1, size=cell["sequences"])
        cell["wrong_per_sequence"] = list(np.clip(np.array(cell["wrong_per_sequence"]) + jitter, 0, 16).tolist())
    return r


def khop_seeds(name, pattern, k, n_layer, errors, **kwargs):
    """One result per seed, seed i at errors[i] (a number: the same for every seed)."""
    errors = [errors] * len(SEEDS) if isinstance(errors, float) else errors
    return [khop_result(f"{name}-s{s}", pattern, k, n_layer, e, seed=s, **kwargs) for s, e in enumerate(errors)]


def verdict_of(results, claim, family="khop"):
    """The row of a claim and family; lm-eval results (their own schema) go in as lm_results."""
    is_lm = lambda r: r.get("schema", "").startswith("vld.lm_eval/")
    lm, rest = [r for r in results if is_lm(r)], [r for r in results if not is_lm(r)]
    return next(v for v in claims.claim_verdicts(rest, lm) if v.claim == claim and v.family == family)


# ---------------------------------------------------------------- seeds first

def test_one_seed_a_side_is_not_shown_whatever_the_effect():
    base = khop_result("base", "base", 0, 2, 0.4375)
    cycle = khop_result("cycle", "cycle", 1, 2, 0.0)
    v = verdict_of([base, cycle], "2")
    assert v.verdict == NOT_SHOWN
    assert v.why == "not shown: 1 seed(s), training noise unknown; 1 vs 1 seeds"
    assert v.effect.value == pytest.approx(0.4375)  # the point effect is still shown
    assert v.row()[4] == "+43.8 [+43.8, +43.8] error points"
    # The flat rule (claim 1) and the match rule (claim 4) wait for seeds as well.
    bits = lambda c: {"absorbed_bits_entropy": c, "absorbed_bits_ce": c}
    knowledge = [result("k", "knowledge", "base", 0, 2, knowledge=bits(1000.0)),
                 result("kc", "knowledge", "cycle", 1, 2, knowledge=bits(1000.0))]
    assert verdict_of(knowledge, "1", "knowledge").verdict == NOT_SHOWN
    native = khop_result("native4", "base", 0, 4, 0.0)
    assert verdict_of([base, cycle, native], "4").why.startswith("not shown: 1 seed(s), training noise unknown")
    # iGSM: 90% against 10%, one seed each.
    learned = lambda c: {"op15": igsm_scores(c, 100, baseline_hits=5)}
    igsm = [result("r-base", "reasoning", "base", 0, 2, igsm=learned(10)),
            result("r-cycle", "reasoning", "cycle", 1, 2, igsm=learned(90))]
    v = verdict_of(igsm, "2", "reasoning")
    assert v.verdict == NOT_SHOWN and v.effect.value == pytest.approx(0.8) and v.effect.low > 0.6


def test_the_smaller_side_names_the_seed_count():
    runs = khop_seeds("cycle", "cycle", 1, 2, 0.0) + khop_seeds("base", "base", 0, 2, 0.4375)[:2]
    v = verdict_of(runs, "2")
    assert v.verdict == NOT_SHOWN and v.why == "not shown: 2 seed(s), training noise unknown; 3 vs 2 seeds"
    runs.append(khop_result("base-s2", "base", 0, 2, 0.4375, seed=2))
    v = verdict_of(runs, "2")
    assert v.verdict == SUPPORTED and v.why == "the interval lies above 0; 3 vs 3 seeds"


def test_three_seeds_with_a_clear_effect_are_supported():
    runs = (khop_seeds("base", "base", 0, 2, 0.375, noise=0.05)
            + khop_seeds("cycle", "cycle", 1, 2, [0.125, 0.125, 0.1875], noise=0.05))
    v = verdict_of(runs, "2")
    assert v.verdict == SUPPORTED and v.effect.seeds == (3, 3)
    assert v.effect.value == pytest.approx(np.mean([claims_serial(r) for r in runs[:3]])
                                           - np.mean([claims_serial(r) for r in runs[3:]]))
    learned = lambda c: {"op15": igsm_scores(c, 100, baseline_hits=5)}
    igsm = ([result(f"r-base-{s}", "reasoning", "base", 0, 2, seed=s, igsm=learned(30)) for s in SEEDS]
            + [result(f"r-cycle-{s}", "reasoning", "cycle", 1, 2, seed=s, igsm=learned(c))
               for s, c in zip(SEEDS, (48, 49, 48))])
    v = verdict_of(igsm, "2", "reasoning")
    assert v.verdict == SUPPORTED and v.effect.value == pytest.approx(145 / 300 - 0.3)


def claims_serial(r):
    """Mean error over hop counts 2 and 3, counted directly from the wrong counts."""
    cells = [r["khop"]["hops"][h] for h in ("2", "3")]
    return sum(sum(c["wrong_per_sequence"]) / (16 * c["sequences"]) for c in cells) / 2


def test_spread_between_seeds_widens_the_interval_and_can_undo_a_verdict():
    # Every sequence of a seed has the same error, so only the seeds vary. Base: 0.375 on every
    # seed. Ours: 0.125 on every seed, or 0, 0, 0.375 (the same mean). Each of the 27 equally
    # likely seed draws of a side is a mean of three seeds; the extreme draws (0, 0, 0 and
    # 0.375 x 3) each have probability 1/27 > 2.5%, so the 95% interval of the difference is
    # exactly [0.375 - 0.375, 0.375 - 0] with the spread and [0.25, 0.25] without.
    base = khop_seeds("base", "base", 0, 2, 0.375)
    same = verdict_of(base + khop_seeds("cycle", "cycle", 1, 2, 0.125), "2")
    assert (same.effect.value, same.effect.low, same.effect.high) == (0.25, 0.25, 0.25)
    assert same.verdict == SUPPORTED
    spread = verdict_of(base + khop_seeds("cycle", "cycle", 1, 2, [0.0, 0.0, 0.375]), "2")
    assert spread.effect.value == pytest.approx(0.25)
    assert (spread.effect.low, spread.effect.high) == (0.0, 0.375)
    assert spread.verdict == NOT_SHOWN and spread.why == "the interval contains 0; 3 vs 3 seeds"
    # iGSM, 30/35/80% over three seeds against three seeds at 48%: the old pooled-counts
    # interval was as narrow as for three equal seeds; now the spread decides.
    learned = lambda c: {"op15": igsm_scores(c, 100, baseline_hits=5)}
    base = [result(f"r-base-{s}", "reasoning", "base", 0, 2, seed=s, igsm=learned(30)) for s in SEEDS]
    even = verdict_of(base + [result(f"r-cycle-{s}", "reasoning", "cycle", 1, 2, seed=s, igsm=learned(48))
                              for s in SEEDS], "2", "reasoning")
    uneven = verdict_of(base + [result(f"r-cycle-{s}", "reasoning", "cycle", 1, 2, seed=s, igsm=learned(c))
                                for s, c in zip(SEEDS, (30, 35, 80))], "2", "reasoning")
    assert even.verdict == SUPPORTED and uneven.verdict == NOT_SHOWN
    assert uneven.effect.high - uneven.effect.low > 2 * (even.effect.high - even.effect.low)
    assert uneven.effect.low <= 0.0


# ---------------------------------------------------------------- the rule defects

def test_claim1_every_variant_judged_and_the_deciding_one_named():
    bits = lambda c: {"absorbed_bits_entropy": c, "absorbed_bits_ce": c}
    knowledge = lambda name, pattern, k, values: [
        result(f"{name}-s{s}", "knowledge", pattern, k, 2, seed=s, knowledge=bits(v)) for s, v in enumerate(values)]
    base = knowledge("k", "base", 0, [1000.0, 1000.0, 1000.0])
    x1 = knowledge("kx1", "cycle", 1, [1000.0, 1300.0, 950.0])
    x2 = knowledge("kx2", "cycle", 2, [930.0, 935.0, 940.0])
    v = verdict_of(base + x1 + x2, "1", "knowledge")
    # x1 is the larger change (+8.3%) but its interval crosses +-5% (not shown); x2 lies wholly
    # below -5% (contradicted), so the claim is contradicted and x2 is named.
    assert v.verdict == CONTRADICTED
    assert v.comparison == "cycle x2, 2 layers vs base, 2 layers (deciding of 2 VLD variants)"
    assert v.why == "outside +-5%; 3 vs 3 seeds; others: cycle x1, 2 layers not shown"
    # mean 935 / 1000 - 1; the interval's ends are the all-930 and all-940 seed draws (each 1/27)
    assert v.effect.value == pytest.approx(-0.065)
    assert (v.effect.low, v.effect.high) == (pytest.approx(-0.07), pytest.approx(-0.06))
    # Both flat: supported, the larger change named; one not shown: the claim is not shown.
    flat = base + knowledge("kx1", "cycle", 1, [1000.0, 1010.0, 990.0]) + knowledge("kx2", "cycle", 2, [1020.0, 1010.0, 1015.0])
    v = verdict_of(flat, "1", "knowledge")
    assert v.verdict == SUPPORTED and v.comparison.startswith("cycle x2") and v.effect.value == pytest.approx(0.015)
    v = verdict_of(flat[:6] + knowledge("kx2", "cycle", 2, [1000.0, 1300.0, 950.0]), "1", "knowledge")
    assert v.verdict == NOT_SHOWN and v.comparison.startswith("cycle x2") and "crosses +-5%" in v.why


def test_khop_compares_only_the_hop_counts_both_sides_have():
    # Equal on hops 2 and 3; the base was also tested at hop 8 (error .9). Averaged over each
    # side's own hop counts this read as a large, supported gain; over the shared ones it is 0.
    base = khop_seeds("base", "base", 0, 2, 0.125)
    for r in base:
        r["khop"]["hops"]["8"] = khop_cells({8: 0.9})["hops"]["8"]
    cycle = khop_seeds("cycle", "cycle", 1, 2, 0.125)
    v = verdict_of(base + cycle, "2")
    assert (v.effect.value, v.effect.low, v.effect.high) == (0.0, 0.0, 0.0)
    assert v.verdict == NOT_SHOWN and v.why == "the interval contains 0; 3 vs 3 seeds"
    # No shared hop count >= 2: nothing to compare.
    only8 = [khop_result(f"cycle-s{s}", "cycle", 1, 2, 0.125, seed=s, hops=(8,)) for s in SEEDS]
    v = verdict_of(khop_seeds("base", "base", 0, 2, 0.125) + only8, "2")
    assert v.effect is None and v.why == "no hop count >= 2 that both sides were tested at"


def test_a_family_without_the_variants_still_gets_its_row():
    khop = (khop_seeds("base", "base", 0, 2, 0.375) + khop_seeds("cycle", "cycle", 1, 2, 0.125)
            + khop_seeds("native4", "base", 0, 4, 0.125))
    learned = lambda c: {"op15": igsm_scores(c, 100, baseline_hits=5)}
    igsm = [result("r-base", "reasoning", "base", 0, 2, igsm=learned(30)),
            result("r-cycle", "reasoning", "cycle", 1, 2, igsm=learned(40))]
    verdicts = claims.claim_verdicts(khop + igsm)
    for claim in claims.REASONING_CLAIMS:
        assert {v.family for v in verdicts if v.claim == claim} == {"khop", "reasoning"}, claim
    assert verdict_of(khop + igsm, "4").verdict == SUPPORTED  # k-hop has its native model
    reasoning = verdict_of(khop + igsm, "4", "reasoning")
    assert reasoning.verdict == NOT_SHOWN and reasoning.effect is None
    assert reasoning.why == "not in this family: no native model of a VLD variant's effective depth and steps"
    rows = {(v.claim, v.family): v for v in verdicts}
    assert rows[("1", "")].why.startswith("not in this profile") and rows[("6", "")].verdict == NOT_SHOWN


# ---------------------------------------------------------------- other rules

def test_clear_gain_supported_overlap_not_shown_clear_loss_contradicted():
    base = khop_seeds("base", "base", 0, 2, 0.375, noise=0.1)
    gain = khop_seeds("cycle", "cycle", 1, 2, 0.125, noise=0.1)
    same = khop_seeds("cycle", "cycle", 1, 2, 0.375, noise=0.1)
    loss = khop_seeds("cycle", "cycle", 1, 2, 0.4375, noise=0.02)
    assert verdict_of(base + gain, "2").verdict == SUPPORTED
    assert verdict_of(base + same, "2").verdict == NOT_SHOWN
    lower = khop_seeds("base", "base", 0, 2, 0.25, noise=0.02)
    assert verdict_of(lower + loss, "2").verdict == CONTRADICTED
    effect = verdict_of(base + gain, "2").effect
    assert effect.low > 0 and effect.low <= effect.value <= effect.high


def test_not_learned_is_not_shown_and_missing_claims_say_why():
    runs = khop_seeds("base", "base", 0, 2, 0.5) + khop_seeds("cycle", "cycle", 1, 2, 0.5)  # chance is 0.5
    v = verdict_of(runs, "2")
    assert v.verdict == NOT_SHOWN and v.why.startswith("not learned")
    rows = {v.claim: v for v in claims.claim_verdicts(runs)}
    assert rows["5"].verdict == NOT_SHOWN and "no layer-subset variants" in rows["5"].why
    assert rows["1"].why.startswith("not in this profile")


def test_compute_matched_native_and_pattern_order_claims():
    runs = (khop_seeds("base", "base", 0, 2, 0.375, noise=0.05)
            + khop_seeds("base2x", "base", 0, 2, 0.3125, steps=200, noise=0.05)
            + khop_seeds("cycle", "cycle", 1, 2, 0.125, noise=0.05)
            + khop_seeds("sequence", "sequence", 1, 2, 0.25, noise=0.05)
            + khop_seeds("inverse", "inverse_cycle", 1, 2, 0.3125, noise=0.05)
            + khop_seeds("native4", "base", 0, 4, 0.0))
    assert verdict_of(runs, "2c").verdict == SUPPORTED  # cycle x1 beats base trained twice as long
    assert verdict_of(runs, "3").verdict == SUPPORTED  # cycle > sequence > inverse cycle
    native = verdict_of(runs, "4")
    assert native.verdict == CONTRADICTED and native.effect.high < -claims.MATCH_MARGIN["khop"]
    better_sequence = [r for r in runs if not r["variant"].startswith("sequence")]
    better_sequence += khop_seeds("sequence", "sequence", 1, 2, 0.0625, noise=0.05)  # sequence beats cycle
    assert verdict_of(better_sequence, "3").verdict == CONTRADICTED
    # One seed of each: claim 3 is not shown and says so first.
    single = [r for r in runs if r["seed"] == 0]
    v = verdict_of(single, "3")
    assert v.verdict == NOT_SHOWN and v.why.startswith("not shown: 1 seed(s), training noise unknown; cycle - sequence")


def test_claim4_needs_the_native_model_not_the_base():
    # cycle x1 and native 4 layers at 200 steps, no 2-layer base at 200 steps: claims 2 and 2c
    # have nothing to compare, claim 4 still does
    vld = khop_seeds("cycle", "cycle", 1, 2, 0.125, steps=200, noise=0.05)
    native = khop_seeds("native4", "base", 0, 4, 0.0, steps=200)
    other_steps = khop_seeds("native4_100", "base", 0, 4, 0.0, steps=100)
    v = verdict_of(vld + native, "4")
    assert v.verdict == CONTRADICTED and v.comparison == "cycle x1, 2 layers vs base, 4 layers"
    assert verdict_of(vld + native, "2").verdict == NOT_SHOWN
    # a native model trained another number of steps is no comparison
    v = verdict_of(vld + other_steps, "4")
    assert v.verdict == NOT_SHOWN and v.why.startswith("not in this family")


def test_rules_on_hand_made_effects():
    e = lambda value, low, high, unit="error points": Effect(value, low, high, unit, (3, 3))
    assert claims.directional(e(0.1, 0.02, 0.2))[0] == SUPPORTED
    assert claims.directional(e(0.1, -0.02, 0.2))[0] == NOT_SHOWN
    assert claims.directional(e(-0.1, -0.2, -0.01))[0] == CONTRADICTED
    assert claims.flat(e(0.01, -0.02, 0.03, "relative"))[0] == SUPPORTED
    assert claims.flat(e(0.04, 0.0, 0.07, "relative"))[0] == NOT_SHOWN
    assert claims.flat(e(-0.2, -0.3, -0.1, "relative"))[0] == CONTRADICTED
    assert claims.match(e(-0.01, -0.015, 0.0), 0.02)[0] == SUPPORTED
    assert claims.match(e(-0.1, -0.12, -0.05), 0.02)[0] == CONTRADICTED
    assert claims.judge(e(0.1, 0.02, 0.2), claims.directional)[0] == SUPPORTED
    few = Effect(0.1, 0.02, 0.2, "error points", (claims.MIN_SEEDS, claims.MIN_SEEDS - 1))
    assert claims.judge(few, claims.directional) == (NOT_SHOWN, "not shown: 2 seed(s), training noise unknown")


def test_igsm_and_knowledge_claims():
    learned = lambda c: {"op15": igsm_scores(c, 200, baseline_hits=10)}
    runs = ([result(f"r-base-{s}", "reasoning", "base", 0, 2, seed=s, igsm=learned(40)) for s in SEEDS]
            + [result(f"r-cycle-{s}", "reasoning", "cycle", 1, 2, seed=s, igsm=learned(120)) for s in SEEDS])
    v = verdict_of(runs, "2", "reasoning")
    assert v.verdict == SUPPORTED and v.effect.value == pytest.approx(0.4)
    # A test set only one side has is left out of the comparison.
    runs[0]["igsm"]["op20"] = igsm_scores(200, 200, baseline_hits=10)
    assert verdict_of(runs, "2", "reasoning").effect.value == pytest.approx(0.4)
    bits = lambda c: {"absorbed_bits_entropy": c, "absorbed_bits_ce": c}
    flat = ([result(f"k-{s}", "knowledge", "base", 0, 2, seed=s, knowledge=bits(1000.0)) for s in SEEDS]
            + [result(f"kc-{s}", "knowledge", "cycle", 1, 2, seed=s, knowledge=bits(1010.0)) for s in SEEDS])
    assert verdict_of(flat, "1", "knowledge").verdict == SUPPORTED
    for r in flat[3:]:
        r["knowledge"] = bits(1300.0)
    assert verdict_of(flat, "1", "knowledge").verdict == CONTRADICTED


def test_claim5_on_khop_later_layers_better_is_supported_earlier_better_contradicted():
    """Table 7 on k-hop: the 4-layer model reusing its last two layers against the one reusing
    its first two (three seeds each), beside no reuse and reuse of every layer."""
    def table7(first, second):
        return (khop_seeds("native4", "base", 0, 4, 0.25, noise=0.05)
                + khop_seeds("cycle4", "cycle", 1, 4, 0.1875, noise=0.05)
                + khop_seeds("first", "cycle", 1, 4, first, noise=0.05, layers="0..1")
                + khop_seeds("second", "cycle", 1, 4, second, noise=0.05, layers="2..3"))

    v = verdict_of(table7(0.3125, 0.0625), "5")
    assert v.verdict == SUPPORTED and v.why == "the interval lies above 0; 3 vs 3 seeds"
    assert v.comparison == "cycle x1, 4 layers, reusing 2..3 vs cycle x1, 4 layers, reusing 0..1"
    assert v.effect.value == pytest.approx(0.3125 - 0.0625, abs=0.02) and v.effect.unit == "error points"
    v = verdict_of(table7(0.0625, 0.3125), "5")
    assert v.verdict == CONTRADICTED and v.effect.high < 0
    # one seed a side: not shown, whatever the effect
    single = [r for r in table7(0.3125, 0.0625) if r["seed"] == 0]
    assert verdict_of(single, "5").why.startswith("not shown: 1 seed(s), training noise unknown")
    # ranges in the notation or as a pair name the same layers
    runs = table7(0.3125, 0.0625)
    for r in runs:
        r["layers"] = {"0..1": [0, 1], "2..3": "L-2..L-1"}.get(r["layers"], r["layers"])
    assert verdict_of(runs, "5").verdict == SUPPORTED
    # a layer subset is never claim 2's VLD variant: reuse of every layer is (the fewest base layers first)
    assert verdict_of(runs, "2").comparison == "cycle x1, 4 layers vs base, 4 layers"
    two_layers = khop_seeds("base", "base", 0, 2, 0.375) + khop_seeds("cycle", "cycle", 1, 2, 0.25)
    assert verdict_of(runs + two_layers, "2").comparison == "cycle x1, 2 layers vs base, 2 layers"
    assert verdict_of(runs + two_layers, "4").comparison == "cycle x1, 2 layers vs base, 4 layers"


def test_claim6_on_khop_retrofit_worse_is_contradicted_better_supported():
    """Table 2 on k-hop: the retrofit with reuse against the same fine-tuning without it, three
    seeds each (seed s fine-tunes the source's seed s), in the khop_retrofit family's row."""
    def retrofit(reuse, plain):
        return (khop_seeds("base_1000", "base", 0, 2, 0.375, steps=1000, noise=0.05)
                + khop_seeds("rf-cycle", "cycle", 1, 2, reuse, steps=500, noise=0.05, family="khop_retrofit")
                + khop_seeds("rf-base", "base", 0, 2, plain, steps=500, noise=0.05, family="khop_retrofit"))

    v = verdict_of(retrofit(0.375, 0.125), "6", "khop_retrofit")
    assert v.verdict == CONTRADICTED and v.why == "the interval lies below 0; 3 vs 3 seeds"
    assert v.comparison == "cycle x1, 2 layers vs base, 2 layers (same fine-tuning)"
    assert v.effect.value == pytest.approx(0.125 - 0.375, abs=0.02)
    assert verdict_of(retrofit(0.125, 0.375), "6", "khop_retrofit").verdict == SUPPORTED
    assert verdict_of(retrofit(0.5, 0.5), "6", "khop_retrofit").why.startswith("not learned")
    rows = [v for v in claims.claim_verdicts(retrofit(0.375, 0.125)) if v.claim == "6"]
    assert [v.family for v in rows] == ["khop_retrofit"]  # no iGSM retrofit results: no row of its own
    # a retrofit family without the same fine-tuning sans reuse still gets its row, saying so
    alone = [r for r in retrofit(0.375, 0.125) if not r["variant"].startswith("rf-base")]
    v = verdict_of(alone, "6", "khop_retrofit")
    assert v.verdict == NOT_SHOWN and v.why == "not in this family: no retrofit with and without reuse"


def lm_result(variant, pattern, k, seed, scores, layers=None, lora_rank=4):
    """An lm-eval result (vld.pipeline.evaluate_lm's schema): {task: (acc, acc_stderr)}; acc_norm
    has no standard error, so acc is each task's headline."""
    return {"schema": "vld.lm_eval/1", "variant": variant, "family": "lm_retrofit", "pattern": pattern, "k": k,
            "layers": layers, "seed": seed, "data": "chat", "method": "lora", "lora_rank": lora_rank,
            "train_steps": 20, "tasks": {task: {"acc_norm": 0.99, "acc": acc, "acc_stderr": se}
                                         for task, (acc, se) in scores.items()}}


def lm_side(variant, pattern, k, per_seed, **kwargs):
    """One result per seed: per_seed[i] = {task: (acc, stderr)}."""
    return [lm_result(variant, pattern, k, seed, scores, **kwargs) for seed, scores in enumerate(per_seed)]


def normal_interval(ours, other):
    """The bootstrap's normal approximation, computed directly: a side's draw is the mean over n
    seeds drawn with replacement of (the seed's mean over T tasks + item noise), so its variance
    is the seeds' population variance of their task means / n plus the mean over seeds of
    sum_t se_t^2 / (n T^2); the sides are independent."""
    def side(results):
        tasks = sorted(results[0]["tasks"])
        means = [sum(r["tasks"][t]["acc"] for t in tasks) / len(tasks) for r in results]
        n, n_tasks = len(results), len(tasks)
        noise = sum(sum(r["tasks"][t]["acc_stderr"] ** 2 for t in tasks) for r in results) / n
        return sum(means) / n, float(np.var(means)) / n + noise / (n * n_tasks ** 2)

    (ma, va), (mb, vb) = side(ours), side(other)
    sd = math.sqrt(va + vb)
    return ma - mb, ma - mb - 1.959964 * sd, ma - mb + 1.959964 * sd, sd


def test_claim6_on_lm_eval_better_supported_worse_contradicted_overlap_not_shown():
    """Table 2 on a language model: Cycle minus Base, mean over the tasks, the interval from
    lm-eval's standard errors and the seeds; checked against the normal approximation."""
    base = [{"math": (0.30 + j, 0.01), "gpqa": (0.50 - j, 0.012)} for j in (0.0, 0.004, -0.003)]
    better = [{"math": (0.36 + j, 0.011), "gpqa": (0.55 + j, 0.01)} for j in (0.002, -0.004, 0.0)]
    for verdict, (ours, theirs, side) in {SUPPORTED: (better, base, "above"),
                                          CONTRADICTED: (base, better, "below")}.items():
        cycle, other = lm_side("cycle", "cycle", 1, ours, layers="1..2"), lm_side("base", "base", 0, theirs)
        v = verdict_of(cycle + other, "6", "lm_retrofit")
        value, low, high, sd = normal_interval(cycle, other)
        assert v.verdict == verdict and v.why.startswith(f"the interval lies {side} 0; 3 vs 3 seeds; per task: ")
        assert v.effect.value == pytest.approx(value, abs=1e-12) and v.effect.unit == "score points"
        assert v.effect.low == pytest.approx(low, abs=0.15 * sd) and v.effect.high == pytest.approx(high, abs=0.15 * sd)
        assert v.comparison == "cycle (cycle x1, reusing 1..2) vs base (same fine-tuning), mean over 2 lm-eval tasks"
    # overlapping: a small gain within wide standard errors
    wide = lambda shift: [{"math": (0.30 + shift, 0.05), "gpqa": (0.50 + shift, 0.05)}] * 3
    runs = lm_side("cycle", "cycle", 1, wide(0.01)) + lm_side("base", "base", 0, wide(0.0))
    v = verdict_of(runs, "6", "lm_retrofit")
    value, low, high, sd = normal_interval(runs[:3], runs[3:])
    assert low < 0 < high and v.verdict == NOT_SHOWN and v.why.startswith("the interval contains 0; 3 vs 3 seeds")
    assert v.effect.value == pytest.approx(0.01) and v.effect.low == pytest.approx(low, abs=0.15 * sd)
    assert "per task: gpqa acc +1.0, math acc +1.0" in v.why


def test_claim6_on_lm_eval_one_seed_tasks_and_pairing():
    """One seed a side (Table 2 as the paper ran it) is not shown, the items-only interval still
    printed; only tasks whose headline has a standard error on every seed of both sides count;
    Base must be fine-tuned like Cycle."""
    cycle = lm_result("cycle", "cycle", 1, 0, {"math": (0.40, 0.02), "gpqa": (0.60, 0.03), "extra": (0.9, 0.1)})
    base = lm_result("base", "base", 0, 0, {"math": (0.30, 0.02), "gpqa": (0.50, 0.03)})
    base["tasks"]["nan_se"] = cycle["tasks"]["nan_se"] = {"acc": 0.5, "acc_stderr": float("nan")}
    v = verdict_of([cycle, base], "6", "lm_retrofit")
    assert v.verdict == NOT_SHOWN and v.why.startswith("not shown: 1 seed(s), training noise unknown; 1 vs 1 seeds")
    assert v.comparison.endswith("mean over 2 lm-eval tasks") and "extra" not in v.why and "nan_se" not in v.why
    half = 1.959964 * math.sqrt(2 * 0.02 ** 2 + 2 * 0.03 ** 2) / 2  # items only: the sides' variances add
    assert v.effect.value == pytest.approx(0.10)
    assert v.effect.low == pytest.approx(0.10 - half, abs=0.01) and v.effect.high == pytest.approx(0.10 + half, abs=0.01)
    # a cycle at the smallest factor is the reuse side, whatever else there is
    bigger = lm_result("cycle_x2", "cycle", 2, 0, {"math": (0.0, 0.01), "gpqa": (0.0, 0.01)})
    seq = lm_result("seq_x1", "sequence", 1, 0, {"math": (0.0, 0.01), "gpqa": (0.0, 0.01)})
    assert verdict_of([bigger, seq, cycle, base], "6", "lm_retrofit").comparison.startswith("cycle (cycle x1) vs base")
    assert verdict_of([seq, base], "6", "lm_retrofit").comparison.startswith("seq_x1 (sequence x1) vs base")
    # a Base fine-tuned with another LoRA rank is not the same fine-tuning
    other = lm_result("base", "base", 0, 0, {"math": (0.30, 0.02)}, lora_rank=8)
    v = verdict_of([cycle, other], "6", "lm_retrofit")
    assert v.verdict == NOT_SHOWN and v.why == "not in this family: no retrofit with and without reuse"
    # and with no lm-eval results, no lm_retrofit row
    assert [v.family for v in claims.claim_verdicts([]) if v.claim == "6"] == [""]


# ---------------------------------------------------------------- statistics

def binomial_quantile(n, p, q):
    """Smallest x with P(Binomial(n, p) <= x) >= q, summed term by term."""
    total = 0.0
    for x in range(n + 1):
        total += math.comb(n, x) * p ** x * (1 - p) ** (n - x)
        if total >= q:
            return x
    return n


def test_statistics_against_direct_computation():
    # Problems within one seed: the percentile interval of 50/100 is the binomial's 2.5% and
    # 97.5% quantiles (to one problem: the bootstrap has finitely many draws).
    point, (low, high) = seeds_and_problems_interval([[(50, 100)]])
    assert point == 0.5
    assert low == pytest.approx(binomial_quantile(100, 0.5, 0.025) / 100, abs=0.011)
    assert high == pytest.approx(binomial_quantile(100, 0.5, 0.975) / 100, abs=0.011)
    # Seeds: with 10^6 problems a seed's own noise is negligible and the interval of three
    # seeds at 30/35/80% runs from the all-30% draw to the all-80% draw (each 1/27 > 2.5%).
    n = 10 ** 6
    point, (low, high) = seeds_and_problems_interval([[(30 * n // 100, n)], [(35 * n // 100, n)], [(80 * n // 100, n)]])
    assert point == pytest.approx(0.48333333)
    assert low == pytest.approx(0.30, abs=2e-3) and high == pytest.approx(0.80, abs=2e-3)
    # Two test sets per seed are resampled each within itself; the point pools the counts.
    point, _ = seeds_and_problems_interval([[(10, 20), (30, 100)], [(20, 20), (40, 100)]])
    assert point == pytest.approx(100 / 240)
    d, (low, high) = accuracy_difference([[(60 * n // 100, n)]] * 3, [[(30 * n // 100, n)]] * 3)
    assert d == pytest.approx(0.3) and low == pytest.approx(0.3, abs=3e-3) and high == pytest.approx(0.3, abs=3e-3)
    change, (low, high) = relative_change([930.0, 935.0, 940.0], [1000.0, 1000.0, 1000.0])
    assert change == pytest.approx(-0.065) and (low, high) == (pytest.approx(-0.07), pytest.approx(-0.06))
    assert relative_change([1100.0], [1000.0]) == (pytest.approx(0.1), (pytest.approx(0.1), pytest.approx(0.1)))
    # Deterministic for a seed.
    assert accuracy_difference([[(5, 10)]], [[(3, 10)]], seed=4) == accuracy_difference([[(5, 10)]], [[(3, 10)]], seed=4)
    a = [np.array([1.0, 2.0, 3.0, 4.0])]
    point, (lo, hi) = seeds_and_clusters_bootstrap(a, 500, seed=1)
    assert point == 2.5 and 1.0 <= lo < 2.5 < hi <= 4.0
    same = paired_difference(a, a, 200, seed=0)
    assert same == (0.0, (0.0, 0.0))  # paired: identical clusters cancel exactly
    with pytest.raises(ValueError):
        seeds_and_problems_interval([[(5, 10)], [(5, 10), (1, 2)]])


# ---------------------------------------------------------------- claim 7: the xk trend

def trend(errors_by_k, recipe=None, noise=0.03):
    """Cycle x0..xK on 2 layers, three seeds each at the given error (x0 as cycle x0)."""
    runs = []
    for k, errors in errors_by_k.items():
        for r in khop_seeds(f"cycle_x{k}", "cycle", k, 2, errors, noise=noise):
            if recipe:
                r["recipe"] = recipe
            runs.append(r)
    return runs


def test_claim7_more_depth_keeps_helping():
    runs = trend({0: 0.4375, 1: 0.3125, 2: 0.25, 3: 0.125})
    v = verdict_of(runs, "7")
    assert v.verdict == SUPPORTED and v.effect.value == pytest.approx(0.1875, abs=0.02)
    assert v.why.endswith("no step of 3 raises the error beyond its interval")
    assert v.comparison == "cycle x3 vs x1, and every step of x0..x3 (2 layers)"
    # x3 beats x1, but x1 -> x2 raises the error beyond its interval: contradicted
    runs = trend({1: 0.25, 2: 0.4375, 3: 0.125})
    v = verdict_of(runs, "7")
    assert v.verdict == CONTRADICTED and "steps raising the error beyond their interval: x1->x2" in v.why
    # x3 worse than x1: contradicted; equal: not shown
    assert verdict_of(trend({1: 0.125, 2: 0.125, 3: 0.3125}), "7").verdict == CONTRADICTED
    assert verdict_of(trend({1: 0.25, 2: 0.25, 3: 0.25}), "7").verdict == NOT_SHOWN
    # two seeds a side: not shown whatever the effect
    few = [r for r in trend({1: 0.4375, 3: 0.0}) if not r["variant"].endswith("s2")]
    assert verdict_of(few, "7").why.startswith("x3 - x1: not shown: 2 seed(s)")


def test_claim7_is_made_per_recipe_and_recipes_stay_out_of_claims_2_to_5():
    plain = trend({1: 0.4375, 2: 0.4375, 3: 0.4375})
    tuned = trend({1: 0.3125, 2: 0.25, 3: 0.125}, recipe={"residual_scale": "visits"})
    base = khop_seeds("base", "base", 0, 2, 0.4375)  # the plain line's x0
    rows = [v for v in claims.claim_verdicts(plain + tuned + base) if v.claim == "7"]
    assert {v.family: v.verdict for v in rows} == {"khop": NOT_SHOWN, "khop (residual_scale=visits)": SUPPORTED}
    # claim 2 compares the plain cycle x1 with base, never the recipe's better x1
    v = verdict_of(plain + tuned + base, "2")
    assert v.comparison == "cycle x1, 2 layers vs base, 2 layers" and v.effect.value == pytest.approx(0, abs=0.03)
    assert verdict_of(base, "7").why == f"not in this family: {claims.MISSING['7']}"
    # the recipe's line has no x0 of its own: it starts at the plain base (a recipe changes
    # nothing without a loop), so x0 -> x1 is one of its judged steps
    tuned_row = next(v for v in rows if v.family == "khop (residual_scale=visits)")
    assert tuned_row.why.endswith("no step of 3 raises the error beyond its interval")
    alone = [v for v in claims.claim_verdicts(tuned) if v.claim == "7"]
    assert alone[0].why.endswith("no step of 2 raises the error beyond its interval")
    line = next(members for members in claims.trend_lines({tables.variant_group(r) for r in plain + tuned + base}).values()
                if members[1].recipe)
    assert sorted(line) == [0, 1, 2, 3] and line[0].recipe is None and line[0].pattern == "base"
