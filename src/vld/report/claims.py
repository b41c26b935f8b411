"""The paper's claims, each checked against whatever results a profile has.

One row per claim (and family where the claim applies to several): the comparison made, the
effect with its 95% interval, and a verdict computed by the rule below. docs/report.md#claims
states the same rule; nothing here is written by hand. Which families' results each claim reads
comes from their entries in the registry (vld.pipeline.families, `claim_set`), and the task
their results measure from `task`.

Effects are in "goodness" units, positive when the side the paper favours is better. Every
interval resamples the training seeds of each side, then the test items within a seed
(vld.stats), so it carries training noise as well as test sampling:
  k-hop      mean per-position error of the other side minus ours over the hop counts >= 2
             that every result of both sides has (error points; hop counts 0 and 1 need no
             serial depth); seeds, then the shared test sequences (paired_difference);
  iGSM       answer accuracy difference over the test sets both sides have (seeds pooled);
             seeds, then problems within a seed (accuracy_difference);
  knowledge  relative change of absorbed bits (cross-entropy measure), mean over seeds;
             seeds of each side (relative_change: the measure has no test items);
  lm-eval    mean over the tasks both sides have of the score difference (each task's first
             metric with a standard error, vld.report.lm_table2.headline; seeds averaged);
             seeds, then each drawn seed's task scores from Normal(score, lm-eval's standard
             error) (score_difference: the items are not kept, their standard error stands
             for them).

Rule. Seeds first: a directional verdict (supported or contradicted, by any of the three
rules below) needs at least MIN_SEEDS training seeds on each side; with fewer the verdict is
"not shown" and the why reads "not shown: N seed(s), training noise unknown" (N: the smaller
side's seeds), the effect still printed. Then the interval decides. A directional claim ("A
beats B"): **supported** when the interval lies above 0, **contradicted** when it lies below 0,
else **not shown**. A claim of no change ("capacity stays flat"): supported when the interval
lies inside +-FLAT_MARGIN, contradicted when it lies wholly outside on one side, else not
shown. A claim of a match ("VLD matches native depth"): supported when the interval's lower end
is above -MATCH_MARGIN, contradicted when its upper end is below -MATCH_MARGIN, else not shown.
A claim made of several comparisons (claim 1: every knowledge VLD variant against its base;
claim 3: two orderings) is supported when every comparison is, contradicted when any is, else
not shown; its row shows the deciding comparison (claim 1: the largest change among those
with the claim's verdict). A comparison whose models did not learn the task (k-hop: both
within LEARN_MARGIN of the constant prediction at the compared hop counts; iGSM: the best
variant under 3x the most-common-answer rate) is not shown, and so is a claim with no results
to compare: every reasoning family gets a row for each of claims 2-5 and 7, and every retrofit
family with results one for claim 6, "not shown" with what is missing. Claims 2-5 compare
variants trained without loop recipes (vld.train.recipe).

Claim 5 compares, of one pattern and factor on one model, the layer-subset variant whose range
starts latest with the one whose range starts earliest; claim 6, per retrofit family (iGSM or
k-hop, measured in the family's task), the retrofit with reuse with the same fine-tuning
without it, and on a language model (lm_retrofit: Table 2 itself, from its lm-eval results) the
Cycle variant (cycle at the smallest factor, else the smallest-factor reuse) with the Base variant
fine-tuned the same way (same data, method, LoRA rank and steps), by the directional rule.

Claim 7 (more virtual depth keeps helping) is made per line: cycle on the whole model at
x0/x1/x2/x3... of one model, training length and recipe (x0: the line's cycle x0, else its base
model). Supported when x3 beats x1 by the directional rule and no step k -> k+1 of the line is
contradicted by it (none raises the error beyond its interval); contradicted when x3 loses to x1
or a step is contradicted; else not shown. The seed rule applies to every comparison.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from vld.model.schedule import layer_range
from vld.pipeline.families import FAMILIES, families_where
from vld.report import tables
from vld.report.khop import sequence_errors
from vld.report.lm_table2 import headline, stderr_name
from vld.stats import accuracy_difference, paired_difference, relative_change, score_difference
from vld.report.tables import Table, VariantGroup, group_name, group_sort, test_key, variant_group, vld_label

SUPPORTED, NOT_SHOWN, CONTRADICTED = "supported", "not shown", "contradicted"
VERDICT_CODE = {SUPPORTED: 1, NOT_SHOWN: 0, CONTRADICTED: -1}
MIN_SEEDS = 3  # training seeds each side needs before a verdict may be directional
FLAT_MARGIN = 0.05  # relative change of absorbed bits that still counts as flat
MATCH_MARGIN = {"khop": 0.02, "igsm": 0.02}  # how much worse than native still counts as a match
LEARN_MARGIN = 0.02  # k-hop: error this far below the constant prediction counts as learned
MIN_SERIAL_HOPS = 2
RESAMPLES = 2000

CLAIMS = {
    "1": "Knowledge capacity stays flat under VLD at fixed parameters (Figure 4b)",
    "2": "VLD raises reasoning at fixed parameters (Table 1)",
    "2c": "... and more than the same training compute spent on the base model (reviewers' request)",
    "3": "Cycle beats sequence beats inverse cycle (Table 1)",
    "4": "A VLD model matches a native model of the same effective depth with fewer parameters",
    "5": "Reusing the later layers beats reusing the earlier ones (Table 7)",
    "6": "A retrofit with reuse beats the same fine-tuning without it (Table 2)",
    "7": "More virtual depth keeps helping (Table 1's xk trend)",
}
REASONING_CLAIMS = ("2", "2c", "3", "4", "5", "7")
TREND_FROM, TREND_TO = 1, 3  # claim 7: x3 must beat x1
MISSING = {"1": "no knowledge variants with and without VLD at one size",
           "2": "no reasoning variant with reuse beside its base model",
           "2c": "no base model trained longer", "3": "no cycle, sequence and inverse cycle at one factor",
           "4": "no native model of a VLD variant's effective depth and steps", "5": "no layer-subset variants",
           "6": "no retrofit with and without reuse",
           "7": f"no cycle x{TREND_FROM} and x{TREND_TO} (and the steps between) on one model"}


@dataclass
class Effect:
    value: float
    low: float
    high: float
    unit: str
    seeds: tuple[int, int]  # training seeds of (our side, the other side)

    def text(self) -> str:
        unit = {"error points": " error points", "accuracy points": " accuracy points",
                "score points": " score points", "relative": "% bits"}[self.unit]
        return f"{100 * self.value:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]{unit}"

    def seed_text(self) -> str:
        return f"{self.seeds[0]} vs {self.seeds[1]} seeds"


@dataclass
class Verdict:
    claim: str
    family: str
    comparison: str
    effect: Effect | None
    verdict: str
    why: str

    def row(self) -> list:
        return [self.claim, CLAIMS[self.claim], self.family or "", self.comparison,
                self.effect.text() if self.effect else "", f"**{self.verdict}**", self.why]

    def metrics(self) -> dict:
        out = {"verdict": self.verdict, "verdict_code": VERDICT_CODE[self.verdict], "family": self.family}
        if self.effect:
            out.update(effect=self.effect.value, low=self.effect.low, high=self.effect.high)
        return out


def directional(effect: Effect) -> tuple[str, str]:
    if effect.low > 0:
        return SUPPORTED, "the interval lies above 0"
    if effect.high < 0:
        return CONTRADICTED, "the interval lies below 0"
    return NOT_SHOWN, "the interval contains 0"


def flat(effect: Effect, margin: float = FLAT_MARGIN) -> tuple[str, str]:
    if -margin < effect.low and effect.high < margin:
        return SUPPORTED, f"within +-{100 * margin:g}%"
    if effect.low >= margin or effect.high <= -margin:
        return CONTRADICTED, f"outside +-{100 * margin:g}%"
    return NOT_SHOWN, f"the interval crosses +-{100 * margin:g}%"


def match(effect: Effect, margin: float) -> tuple[str, str]:
    if effect.low > -margin:
        return SUPPORTED, f"no worse than native by more than {100 * margin:g} points"
    if effect.high < -margin:
        return CONTRADICTED, f"worse than native by more than {100 * margin:g} points"
    return NOT_SHOWN, f"the interval crosses -{100 * margin:g} points"


def too_few_seeds(fewest: int) -> str:
    return f"not shown: {fewest} seed(s), training noise unknown"


def judge(effect: Effect, rule) -> tuple[str, str]:
    """The rule's (verdict, reason), after the seed count: too few seeds is "not shown"."""
    fewest = min(effect.seeds)
    return (NOT_SHOWN, too_few_seeds(fewest)) if fewest < MIN_SEEDS else rule(effect)


# ------------------------------------------------------------------ measurements per task

def _groups(results: list[dict], family: str) -> dict[VariantGroup, list[dict]]:
    out: dict[VariantGroup, list[dict]] = {}
    for r in results:
        if r["family"] == family:
            out.setdefault(variant_group(r), []).append(r)
    return out


def khop_effect(ours: list[dict], other: list[dict]) -> tuple[Effect | None, str]:
    """Error of `other` minus error of `ours` (positive: ours is better), over the hop counts
    >= MIN_SERIAL_HOPS that every result of both sides was tested at."""
    members = ours + other
    hops = set.intersection(*({h for h in ((r.get("khop") or {}).get("hops") or {}) if int(h) >= MIN_SERIAL_HOPS}
                               for r in members))
    hops = sorted(hops, key=int)

    def serial_errors(result):  # per test sequence: mean error over the compared hop counts
        return np.mean([sequence_errors(result, h) for h in hops], axis=0)

    if not hops:
        return None, f"no hop count >= {MIN_SERIAL_HOPS} that both sides were tested at"
    a, b = [serial_errors(r) for r in ours], [serial_errors(r) for r in other]
    if len({len(v) for v in a + b}) != 1:
        return None, "the two sides have different k-hop test sets"
    chance = float(np.mean([ours[0]["khop"]["hops"][h]["chance_error"] for h in hops]))
    if min(np.mean(a), np.mean(b)) > chance - LEARN_MARGIN:
        return None, f"not learned: both errors within {LEARN_MARGIN} of the constant prediction ({chance:.3f})"
    value, (low, high) = paired_difference(b, a, RESAMPLES, seed=0)
    return Effect(value, low, high, "error points", (len(a), len(b))), ""


def igsm_effect(ours: list[dict], other: list[dict], learned: bool) -> tuple[Effect | None, str]:
    """Answer accuracy of `ours` minus `other`, over the test sets every result of both sides has."""
    if not learned:
        return None, "not learned: the best variant answers under 3x the most-common-answer rate"
    members = ours + other
    tests = sorted(set.intersection(*({t for t, c in (r.get("igsm") or {}).items() if int(c["n"])}
                                      for r in members)), key=test_key)
    if not tests:
        return None, "no iGSM test set that both sides have"

    def counts(side):
        return [[(int(r["igsm"][t]["answer_correct"]), int(r["igsm"][t]["n"])) for t in tests] for r in side]

    value, (low, high) = accuracy_difference(counts(ours), counts(other), RESAMPLES, seed=0)
    return Effect(value, low, high, "accuracy points", (len(ours), len(other))), ""


def knowledge_effect(ours: list[dict], base: list[dict]) -> tuple[Effect | None, str]:
    a = [tables.knowledge_bits(r, "cross_entropy") for r in ours]
    b = [tables.knowledge_bits(r, "cross_entropy") for r in base]
    if None in a or None in b or not a or not b:
        return None, "no absorbed-bits measure"
    if min(b) <= 0:
        return None, "the base model absorbs no bits"
    value, (low, high) = relative_change(a, b, RESAMPLES, seed=0)
    return Effect(value, low, high, "relative", (len(a), len(b))), ""


# ------------------------------------------------------------------ the claims

def _learned_igsm(results: list[dict], family: str) -> bool:
    best = tables.best_variant(tables.pooled_igsm([r for r in results if r["family"] == family]))
    return best is not None and best.learned


def _effect(task: str, family: str, ours, other, results) -> tuple[Effect | None, str]:
    if task == "khop":
        return khop_effect(ours, other)
    return igsm_effect(ours, other, _learned_igsm(results, family))


def _find(groups, **want) -> VariantGroup | None:
    found = [g for g in groups if all(getattr(g, key) == value for key, value in want.items())]
    return sorted(found, key=tables.group_sort)[0] if found else None


def _reuse_variant(groups) -> VariantGroup | None:
    """The paper's headline: cycle at the smallest factor, else the smallest-factor VLD variant."""
    vld = [g for g in groups if g.k and g.layers is None]
    cycles = [g for g in vld if g.pattern == "cycle"]
    pool = cycles or vld
    return min(pool, key=lambda g: (g.k, tables.group_sort(g))) if pool else None


def _subset_pair(groups) -> tuple[VariantGroup, VariantGroup] | None:
    """Claim 5: the layer-subset variant reusing the latest layers and the one reusing the
    earliest, of one reuse pattern on one model (the first such set in the report's order)."""
    sets: dict[tuple, list[VariantGroup]] = {}
    for g in sorted((g for g in groups if g.layers is not None), key=tables.group_sort):
        sets.setdefault((g.pattern, g.k, g.n_layer, g.d_model, g.train_steps, g.objective), []).append(g)
    for members in sets.values():
        by_start = sorted(members, key=lambda g: _layer_range(g))
        if _layer_range(by_start[-1])[0] > _layer_range(by_start[0])[0]:
            return by_start[-1], by_start[0]
    return None


def _layer_range(group: VariantGroup) -> tuple[int, int]:
    text = str(group.layers)
    return layer_range(json.loads(text) if text.startswith("[") else text, group.n_layer)


def _verdict(claim, family, comparison, effect, why, rule) -> Verdict:
    if effect is None:
        return Verdict(claim, family, comparison, None, NOT_SHOWN, why)
    verdict, reason = judge(effect, rule)
    return Verdict(claim, family, comparison, effect, verdict, f"{reason}; {effect.seed_text()}")


def _all_of(verdicts: list[str]) -> str:
    """A claim made of several comparisons: supported when all are, contradicted when any is."""
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return SUPPORTED if verdicts and all(v == SUPPORTED for v in verdicts) else NOT_SHOWN


def _order_claim(task, family, label, groups, orders, results) -> Verdict:
    """Claim 3: cycle - sequence and sequence - inverse cycle, both directional."""
    comparison = f"cycle vs sequence, then sequence vs inverse cycle (x{orders[0].k}, {orders[0].n_layer} layers)"
    first, why1 = _effect(task, family, groups[orders[0]], groups[orders[1]], results)
    second, why2 = _effect(task, family, groups[orders[1]], groups[orders[2]], results)
    if first is None or second is None:
        return Verdict("3", label, comparison, first or second, NOT_SHOWN, why1 or why2)
    (v1, r1), (v2, r2) = judge(first, directional), judge(second, directional)
    verdict = _all_of([v1, v2])
    parts = f"cycle - sequence {first.text()} ({r1}; {first.seed_text()}); " \
            f"sequence - inverse cycle {second.text()} ({r2}; {second.seed_text()})"
    fewest = min(first.seeds + second.seeds)
    if verdict == NOT_SHOWN and fewest < MIN_SEEDS:
        parts = f"{too_few_seeds(fewest)}; {parts}"
    return Verdict("3", label, comparison, first, verdict, parts)


def _reasoning_claims(results: list[dict], family: str, task: str, label: str) -> list[Verdict]:
    """Claims 2-5 on one family's results, one row each (not shown, saying what is missing,
    where the family lacks the variants); `label` names them in the table (the family, or its
    answer-only part)."""
    # claims 2-5 compare variants trained without loop recipes; claim 7 is made per recipe
    every = _groups(results, family)
    groups = {g: members for g, members in every.items() if g.recipe is None}
    out = _trend_claims(task, family, label, every, results)
    vld = _reuse_variant(groups)
    base = vld and _find(groups, pattern="base", k=0, layers=None, n_layer=vld.n_layer, d_model=vld.d_model,
                         train_steps=vld.train_steps)
    if vld and base:
        effect, why = _effect(task, family, groups[vld], groups[base], results)
        out.append(_verdict("2", label, f"{group_name(vld)} vs {group_name(base)}", effect, why, directional))
        longer = [g for g in groups if g.pattern == "base" and g.k == 0 and g.n_layer == vld.n_layer
                  and g.d_model == vld.d_model and g.train_steps and vld.train_steps
                  and g.train_steps == (vld.k + 1) * vld.train_steps]
        if longer:
            effect, why = _effect(task, family, groups[vld], groups[longer[0]], results)
            out.append(_verdict("2c", label, f"{group_name(vld)} vs {group_name(longer[0], True)}", effect, why,
                                directional))
        else:
            out.append(Verdict("2c", label, "", None, NOT_SHOWN, f"no base model trained {vld.k + 1}x as long"))
    # claim 4 needs the native model only, not the base (e.g. a longer-training pilot without one)
    native = vld and _find(groups, pattern="base", k=0, layers=None, n_layer=vld.n_layer * (vld.k + 1),
                           d_model=vld.d_model, train_steps=vld.train_steps)
    if native:
        effect, why = _effect(task, family, groups[vld], groups[native], results)
        out.append(_verdict("4", label, f"{group_name(vld)} vs {group_name(native)}", effect, why,
                            lambda e: match(e, MATCH_MARGIN[task])))
    for k in sorted({g.k for g in groups if g.k}):
        found = {p: _find(groups, pattern=p, k=k, layers=None) for p in ("cycle", "sequence", "inverse_cycle")}
        if all(found.values()) and len({(g.n_layer, g.d_model) for g in found.values()}) == 1:
            orders = [found["cycle"], found["sequence"], found["inverse_cycle"]]
            out.append(_order_claim(task, family, label, groups, orders, results))
            break
    later = _subset_pair(groups)
    if later:
        a, b = later
        effect, why = _effect(task, family, groups[a], groups[b], results)
        out.append(_verdict("5", label, f"{group_name(a)} vs {group_name(b)}", effect, why, directional))
    have = {v.claim for v in out}
    return out + [Verdict(c, label, "", None, NOT_SHOWN, f"not in this family: {MISSING[c]}")
                  for c in REASONING_CLAIMS if c not in have]


def trend_lines(groups) -> dict[tuple, dict[int, VariantGroup]]:
    """Claim 7's lines: cycle on the whole model per (n_layer, d_model, steps, objective,
    recipe), {k: group}; k = 0 is cycle x0, else the base model of the line when it has no x0
    (a recipe's line without either: the plain line's x0, which the recipe would not change)."""
    lines: dict[tuple, dict[int, VariantGroup]] = {}
    for g in groups:
        if g.pattern == "cycle" and g.layers is None:
            lines.setdefault((g.n_layer, g.d_model, g.train_steps, g.objective, g.recipe), {})[g.k] = g
    def x0(key):  # a line's cycle x0, else its base model
        return lines.get(key, {}).get(0) or _find(groups, pattern="base", k=0, layers=None, n_layer=key[0],
                                                  d_model=key[1], train_steps=key[2], objective=key[3], recipe=key[4])

    for key, line in lines.items():
        # a recipe has no loop to act on at x0: without an x0 of its own, its line starts at the plain one's
        base = x0(key) or (x0(key[:4] + (None,)) if key[4] is not None else None)
        if base is not None:
            line.setdefault(0, base)
    return lines


def _trend_claims(task, family, label, groups, results) -> list[Verdict]:
    """Claim 7, one row per line (trend_lines) that has x1 and x3: x3 against x1 by the
    directional rule, and each step k -> k+1 of the line (from x0 where there is one) judged
    too: supported when x3 beats x1 and no step is contradicted (no step raises the error beyond
    its interval), contradicted when x3 loses to x1 or a step is contradicted, else not shown."""
    out = []
    for key, line in sorted(trend_lines(groups).items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        if TREND_FROM not in line or TREND_TO not in line:
            continue
        recipe = key[4]
        row_label = label + (f" ({recipe})" if recipe else "")
        ks = sorted(line)
        steps = [(a, b) for a, b in zip(ks, ks[1:]) if b == a + 1]
        comparison = (f"cycle x{TREND_TO} vs x{TREND_FROM}, and every step of x{ks[0]}..x{ks[-1]} "
                      f"({key[0]} layers)")
        effect, why = _effect(task, family, groups[line[TREND_TO]], groups[line[TREND_FROM]], results)
        if effect is None:
            out.append(Verdict("7", row_label, comparison, None, NOT_SHOWN, why))
            continue
        main, reason = judge(effect, directional)
        judged = []
        for a, b in steps:
            step, _ = _effect(task, family, groups[line[b]], groups[line[a]], results)
            if step is not None:
                judged.append((a, b, step, judge(step, directional)[0]))
        raised = [f"x{a}->x{b} {step.text()}" for a, b, step, v in judged if v == CONTRADICTED]
        if main == CONTRADICTED or raised:
            verdict = CONTRADICTED
        else:
            verdict = main
        parts = [f"x{TREND_TO} - x{TREND_FROM}: {reason}; {effect.seed_text()}"]
        parts.append(f"steps raising the error beyond their interval: {', '.join(raised)}" if raised
                     else f"no step of {len(judged)} raises the error beyond its interval")
        out.append(Verdict("7", row_label, comparison, effect, verdict, "; ".join(parts)))
    return out


def _knowledge_claim(results: list[dict], family: str) -> Verdict | None:
    """Claim 1: every VLD variant of a knowledge family against its base model at the same size,
    each judged by the flat rule; supported when all are, contradicted when any is. The row
    shows the deciding variant: the largest change among those whose verdict is the claim's."""
    knowledge = _groups(results, family)
    judged = []  # (variant, base, effect, verdict, why)
    for g in sorted(knowledge, key=group_sort):
        base = _find(knowledge, pattern="base", k=0, layers=None, n_layer=g.n_layer, d_model=g.d_model,
                     train_steps=g.train_steps)
        if g.k and base:
            one = _verdict("1", family, "", *knowledge_effect(knowledge[g], knowledge[base]), flat)
            judged.append((g, base, one.effect, one.verdict, one.why))
    if not judged:
        return None
    verdict = _all_of([j[3] for j in judged])
    deciding = max((j for j in judged if j[3] == verdict), key=lambda j: abs(j[2].value) if j[2] else -1.0)
    g, base, effect, _, why = deciding
    comparison = f"{group_name(g)} vs {group_name(base)}"
    if len(judged) > 1:
        comparison += f" (deciding of {len(judged)} VLD variants)"
        why += "; others: " + ", ".join(f"{group_name(j[0])} {j[3]}" for j in judged if j is not deciding)
    return Verdict("1", family, comparison, effect, verdict, why)


# ------------------------------------------------------------------ claim 6 on a language model

SAME_FINE_TUNING = ("data", "method", "lora_rank", "train_steps")  # of an lm-eval result (vld.pipeline.evaluate_lm)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def lm_effect(ours: list[dict], other: list[dict]) -> tuple[Effect | None, str, list[tuple[str, str]]]:
    """Mean over tasks of `ours` minus `other` (score points, seeds averaged per side), each
    task's headline metric (vld.report.lm_table2.headline), over the tasks where every seed of
    both sides has that metric and its standard error; also returns those (task, metric)."""
    tasks = []
    for task in sorted(ours[0]["tasks"]):
        metric = headline(ours[0]["tasks"][task])
        if metric and all(_finite(r["tasks"].get(task, {}).get(m)) for r in ours + other
                          for m in (metric, stderr_name(metric))):
            tasks.append((task, metric))
    if not tasks:
        return None, "no lm-eval task with a standard error that every seed of both sides has", []

    def cells(side):
        return [[(r["tasks"][t][m], r["tasks"][t][stderr_name(m)]) for t, m in tasks] for r in side]

    value, (low, high) = score_difference(cells(ours), cells(other), RESAMPLES, seed=0)
    return Effect(value, low, high, "score points", (len(ours), len(other))), "", tasks


def lm_pair(results: list[dict]) -> tuple[str, str] | None:
    """(reuse variant, base variant) of one lm_retrofit family's results: cycle at the smallest
    factor (else the smallest-factor reuse; by name among equals), and the base variant with
    the same fine-tuning (SAME_FINE_TUNING)."""
    first: dict[str, dict] = {}
    for r in results:
        first.setdefault(r["variant"], r)
    reuse = [name for name, r in first.items() if r.get("k")]
    pool = [name for name in reuse if first[name]["pattern"] == "cycle"] or reuse
    if not pool:
        return None
    ours = first[min(pool, key=lambda name: (first[name]["k"], name))]
    bases = sorted(name for name, r in first.items() if r["pattern"] == "base" and not r.get("k")
                   and all(r.get(key) == ours.get(key) for key in SAME_FINE_TUNING))
    return (ours["variant"], bases[0]) if bases else None


def _lm_claim(results: list[dict], family: str) -> Verdict:
    """Claim 6 from Table 2 on a language model: the pair of lm_pair, lm_effect, the directional rule."""
    pair = lm_pair(results)
    if pair is None:
        return Verdict("6", family, "", None, NOT_SHOWN, f"not in this family: {MISSING['6']}")
    seeds = {name: sorted((r for r in results if r["variant"] == name), key=lambda r: r["seed"]) for name in pair}
    ours, base = (seeds[name] for name in pair)
    effect, why, tasks = lm_effect(ours, base)
    where = ours[0]
    reuse = f"{where['pattern'].replace('_', ' ')} {vld_label(where['k'])}" + \
            (f", reusing {where['layers']}" if where.get("layers") else "")
    comparison = f"{pair[0]} ({reuse}) vs {pair[1]} (same fine-tuning), mean over {len(tasks)} lm-eval tasks"
    verdict = _verdict("6", family, comparison, effect, why, directional)
    if effect is not None:
        mean = lambda side, t, m: sum(r["tasks"][t][m] for r in side) / len(side)
        verdict.why += "; per task: " + ", ".join(f"{t} {m} {100 * (mean(ours, t, m) - mean(base, t, m)):+.1f}"
                                                  for t, m in tasks)
    return verdict


def claim_verdicts(results: list[dict], lm_results: list[dict] = ()) -> list[Verdict]:
    """Every claim, computed; claims without data get 'not shown' rows saying so. `lm_results`:
    lm-eval results (vld.report.lm_table2.load_lm_results), for claim 6 on a language model."""
    verdicts: list[Verdict] = []
    for name in families_where(claim_set="capacity"):
        knowledge = _knowledge_claim(results, name)
        if knowledge:
            verdicts.append(knowledge)
    for name in families_where(claim_set="reasoning"):
        if not _groups(results, name):
            continue
        task = FAMILIES[name].task
        # answer-only iGSM models are compared among themselves (vld.data.igsm.objectives)
        for objective in sorted({r.get("objective") or "" for r in results if r["family"] == name}):
            subset = [r for r in results if r["family"] != name or (r.get("objective") or "") == objective]
            label = name + ("_answer_only" if objective == "answer_only" else "")
            verdicts += _reasoning_claims(subset, name, task, label)
    for name in families_where(claim_set="retrofit"):
        retrofit = _groups(results, name)
        reuse = _reuse_variant(retrofit)
        plain = reuse and _find(retrofit, pattern="base", k=0, n_layer=reuse.n_layer, d_model=reuse.d_model,
                                train_steps=reuse.train_steps, objective=reuse.objective)
        if reuse and plain:
            effect, why = _effect(FAMILIES[name].task, name, retrofit[reuse], retrofit[plain], results)
            verdicts.append(_verdict("6", name, f"{group_name(reuse)} vs {group_name(plain)} (same fine-tuning)",
                                     effect, why, directional))
        elif retrofit:
            verdicts.append(Verdict("6", name, "", None, NOT_SHOWN, f"not in this family: {MISSING['6']}"))
    for name in families_where(claim_set="lm_retrofit"):
        own = [r for r in lm_results if r.get("family") == name]
        if own:
            verdicts.append(_lm_claim(own, name))
    have = {v.claim for v in verdicts}
    verdicts += [Verdict(c, "", "", None, NOT_SHOWN, f"not in this profile: {MISSING[c]}") for c in CLAIMS if c not in have]
    return sorted(verdicts, key=lambda v: (list(CLAIMS).index(v.claim), v.family))


def claims_table(results: list[dict], lm_results: list[dict] = ()) -> Table | None:
    if not results and not lm_results:
        return None
    verdicts = claim_verdicts(results, lm_results)
    return Table("claims", "The paper's claims, checked against this profile's results",
                 ["#", "claim", "family", "comparison", "effect [95% interval]", "verdict", "why"],
                 [v.row() for v in verdicts],
                 ["Verdicts follow the rule in docs/report.md#claims (computed from the results, never by hand).",
                  "Effects are positive when the side the paper favours is better: k-hop in error points (mean "
                  "over the hop counts >= 2 both sides have), iGSM in accuracy points, knowledge as relative "
                  "change of absorbed bits, lm-eval (lm_retrofit) in score points (mean over the tasks both sides "
                  "have of each task's first metric with a standard error).",
                  "Intervals resample each side's training seeds, then the test items within a seed (lm-eval: "
                  "a normal draw with the task's standard error); a "
                  f"supported or contradicted verdict needs at least {MIN_SEEDS} seeds on each side.",
                  "One profile's models are far smaller than the paper's: a verdict here speaks for this scale only."])


def claims_metrics(results: list[dict], lm_results: list[dict] = ()) -> dict:
    """{claim: {family: {...}}} for metrics.json (dvc exp show)."""
    out: dict = {}
    for v in claim_verdicts(results, lm_results):
        out.setdefault(f"claim_{v.claim}", {})[v.family or "none"] = v.metrics()
    return out
