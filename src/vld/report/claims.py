"""The paper's claims, each checked against whatever results a profile has.

One row per claim (and family where the claim applies to several): the comparison made, the
effect with its 95% interval, and a verdict computed by the rule below. docs/report.md states
the same rule; nothing here is written by hand.

Effects are in "goodness" units, positive when the side the paper favours is better:
  k-hop      mean per-position error over hop counts >= 2 of the other side minus ours (error
             points; hop counts 0 and 1 need no serial depth); interval from a paired bootstrap
             over the shared test sequences and the seeds (vld.report.stats.paired_difference);
  iGSM       answer accuracy (all test sets, seeds pooled) difference, Newcombe's interval;
  knowledge  relative change of absorbed bits (cross-entropy measure); the interval comes from
             seeds, so one seed gives the point alone (said in the row).

Rule. A directional claim ("A beats B"): **supported** when the interval lies above 0,
**contradicted** when it lies below 0, else **not shown** (the interval contains 0). A claim of
no change ("capacity stays flat"): supported when the interval lies inside +-FLAT_MARGIN,
contradicted when it lies wholly outside on one side, else not shown. A claim of a match
("VLD matches native depth"): supported when the interval's lower end is above -MATCH_MARGIN,
contradicted when its upper end is below -MATCH_MARGIN, else not shown. A comparison whose
models did not learn the task (k-hop: both within LEARN_MARGIN of the constant prediction at
hop counts >= 2; iGSM: the best variant under 3x the most-common-answer rate) is not shown, and
so is a claim with no results to compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vld.report import tables
from vld.report.khop import khop_results, sequence_errors
from vld.report.stats import paired_difference, proportion_difference
from vld.report.tables import Table, VariantGroup, group_name, variant_group

SUPPORTED, NOT_SHOWN, CONTRADICTED = "supported", "not shown", "contradicted"
VERDICT_CODE = {SUPPORTED: 1, NOT_SHOWN: 0, CONTRADICTED: -1}
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
}


@dataclass
class Effect:
    value: float
    low: float
    high: float
    unit: str
    note: str = ""

    def text(self) -> str:
        unit = {"error points": " error points", "accuracy points": " accuracy points",
                "relative": "% bits"}[self.unit]
        return f"{100 * self.value:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]{unit}"


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


# ------------------------------------------------------------------ measurements per task

def _groups(results: list[dict], family: str) -> dict[VariantGroup, list[dict]]:
    out: dict[VariantGroup, list[dict]] = {}
    for r in results:
        if r["family"] == family:
            out.setdefault(variant_group(r), []).append(r)
    return out


def _serial_errors(result: dict) -> np.ndarray | None:
    """Per test-sequence index: mean error over hop counts >= MIN_SERIAL_HOPS."""
    hops = [h for h in result["khop"]["hops"] if int(h) >= MIN_SERIAL_HOPS]
    if not hops:
        return None
    return np.mean([sequence_errors(result, h) for h in hops], axis=0)


def _chance(result: dict) -> float:
    return float(np.mean([c["chance_error"] for h, c in result["khop"]["hops"].items() if int(h) >= MIN_SERIAL_HOPS]))


def khop_effect(ours: list[dict], other: list[dict]) -> tuple[Effect | None, str]:
    """Error of `other` minus error of `ours` (positive: ours is better)."""
    a = [_serial_errors(r) for r in ours]
    b = [_serial_errors(r) for r in other]
    if any(v is None for v in a + b) or len({len(v) for v in a + b}) != 1:
        return None, "no shared k-hop test sets with hop counts >= 2"
    chance = _chance(ours[0])
    if min(np.mean(a), np.mean(b)) > chance - LEARN_MARGIN:
        return None, f"not learned: both errors within {LEARN_MARGIN} of the constant prediction ({chance:.3f})"
    value, (low, high) = paired_difference(b, a, RESAMPLES, seed=0)
    seeds = f"{len(a)} vs {len(b)} seeds"
    return Effect(value, low, high, "error points", seeds), ""


def igsm_effect(ours: list[dict], other: list[dict], learned: bool) -> tuple[Effect | None, str]:
    if not learned:
        return None, "not learned: the best variant answers under 3x the most-common-answer rate"

    def counts(members):
        cells = [scores for r in members for scores in (r.get("igsm") or {}).values()]
        return sum(int(c["answer_correct"]) for c in cells), sum(int(c["n"]) for c in cells)

    (x1, n1), (x2, n2) = counts(ours), counts(other)
    if not n1 or not n2:
        return None, "no iGSM test results"
    value, (low, high) = proportion_difference(x1, n1, x2, n2)
    return Effect(value, low, high, "accuracy points", f"{len(ours)} vs {len(other)} seeds"), ""


def knowledge_effect(ours: list[dict], base: list[dict]) -> tuple[Effect | None, str]:
    a = [tables.knowledge_bits(r, "cross_entropy") for r in ours]
    b = [tables.knowledge_bits(r, "cross_entropy") for r in base]
    if None in a or None in b or not a or not b:
        return None, "no absorbed-bits measure"
    rel = [x / y - 1 for x in a for y in b]
    note = "one seed each: no interval, the point alone" if len(rel) == 1 else f"range over {len(a)}x{len(b)} seed pairs"
    return Effect(float(np.mean(rel)), min(rel), max(rel), "relative", note), ""


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


def _verdict(claim, family, comparison, effect, why, rule) -> Verdict:
    if effect is None:
        return Verdict(claim, family, comparison, None, NOT_SHOWN, why)
    verdict, reason = rule(effect)
    return Verdict(claim, family, comparison, effect, verdict, "; ".join(x for x in (reason, effect.note) if x))


def _reasoning_claims(results: list[dict], family: str, task: str, label: str) -> list[Verdict]:
    """Claims 2-5 on one family's results; `label` names them in the table (the family, or its
    answer-only part)."""
    groups = _groups(results, family)
    out = []
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
        native = _find(groups, pattern="base", k=0, layers=None, n_layer=vld.n_layer * (vld.k + 1),
                       d_model=vld.d_model, train_steps=vld.train_steps)
        if native:
            effect, why = _effect(task, family, groups[vld], groups[native], results)
            out.append(_verdict("4", label, f"{group_name(vld)} vs {group_name(native)}", effect, why,
                                lambda e: match(e, MATCH_MARGIN[task])))
    orders = []
    for k in sorted({g.k for g in groups if g.k}):
        found = {p: _find(groups, pattern=p, k=k, layers=None) for p in ("cycle", "sequence", "inverse_cycle")}
        if all(found.values()) and len({(g.n_layer, g.d_model) for g in found.values()}) == 1:
            orders = [found["cycle"], found["sequence"], found["inverse_cycle"]]
            break
    if orders:
        first, why1 = _effect(task, family, groups[orders[0]], groups[orders[1]], results)
        second, why2 = _effect(task, family, groups[orders[1]], groups[orders[2]], results)
        comparison = f"cycle vs sequence, then sequence vs inverse cycle (x{orders[0].k}, {orders[0].n_layer} layers)"
        if first is None or second is None:
            out.append(Verdict("3", label, comparison, first or second, NOT_SHOWN, why1 or why2))
        else:
            (v1, r1), (v2, r2) = directional(first), directional(second)
            verdict = (CONTRADICTED if CONTRADICTED in (v1, v2) else SUPPORTED if v1 == v2 == SUPPORTED else NOT_SHOWN)
            out.append(Verdict("3", label, comparison, first, verdict,
                               f"cycle - sequence {first.text()} ({r1}); sequence - inverse cycle {second.text()} ({r2})"))
    subsets = [g for g in groups if g.layers is not None]
    later = [(a, b) for a in subsets for b in subsets if a.pattern == b.pattern and a.k == b.k
             and a.n_layer == b.n_layer and int(str(a.layers).split("..")[0]) > int(str(b.layers).split("..")[0])]
    if later:
        a, b = later[0]
        effect, why = _effect(task, family, groups[a], groups[b], results)
        out.append(_verdict("5", label, f"{group_name(a)} vs {group_name(b)}", effect, why, directional))
    return out


def claim_verdicts(results: list[dict]) -> list[Verdict]:
    """Every claim, computed; claims without data get one 'not shown' row saying so."""
    verdicts: list[Verdict] = []
    knowledge = _groups(results, "knowledge")
    pairs = []
    for g in knowledge:
        base = _find(knowledge, pattern="base", k=0, layers=None, n_layer=g.n_layer, d_model=g.d_model,
                     train_steps=g.train_steps)
        if g.k and base:
            effect, _ = knowledge_effect(knowledge[g], knowledge[base])
            if effect:
                pairs.append((abs(effect.value), g, base, effect))
    if pairs:
        _, g, base, effect = max(pairs, key=lambda p: p[0])  # the largest change decides flatness
        verdict = _verdict("1", "knowledge", f"{group_name(g)} vs {group_name(base)} (largest of {len(pairs)} VLD variants)",
                           effect, "", flat)
        if len(pairs) > 1:
            others = [flat(p[3])[0] for p in pairs]
            if CONTRADICTED in others:
                verdict.verdict = CONTRADICTED
            elif not all(o == SUPPORTED for o in others):
                verdict.verdict = NOT_SHOWN
        verdicts.append(verdict)
    families = [(name, task) for name, task in (("khop", "khop"), ("reasoning", "igsm")) if _groups(results, name)]
    for name, task in families:
        # answer-only iGSM models are compared among themselves (vld.data.igsm.objectives)
        for objective in sorted({r.get("objective") or "" for r in results if r["family"] == name}):
            subset = [r for r in results if r["family"] != name or (r.get("objective") or "") == objective]
            label = name + ("_answer_only" if objective == "answer_only" else "")
            verdicts += _reasoning_claims(subset, name, task, label)
    retrofit = _groups(results, "retrofit")
    reuse = _reuse_variant(retrofit)
    plain = reuse and _find(retrofit, pattern="base", k=0, objective=reuse.objective)
    if reuse and plain:
        effect, why = igsm_effect(retrofit[reuse], retrofit[plain], _learned_igsm(results, "retrofit"))
        verdicts.append(_verdict("6", "retrofit", f"{group_name(reuse)} vs {group_name(plain)} (same fine-tuning)",
                                 effect, why, directional))
    have = {v.claim for v in verdicts}
    missing = {"1": "no knowledge variants with and without VLD at one size",
               "2": "no reasoning variant with reuse beside its base model",
               "2c": "no base model trained longer", "3": "no cycle, sequence and inverse cycle at one factor",
               "4": "no native model of a VLD variant's effective depth", "5": "no layer-subset variants",
               "6": "no retrofit with and without reuse"}
    verdicts += [Verdict(c, "", "", None, NOT_SHOWN, f"not in this profile: {missing[c]}") for c in CLAIMS if c not in have]
    return sorted(verdicts, key=lambda v: (list(CLAIMS).index(v.claim), v.family))


def claims_table(results: list[dict]) -> Table | None:
    if not results:
        return None
    verdicts = claim_verdicts(results)
    return Table("claims", "The paper's claims, checked against this profile's results",
                 ["#", "claim", "family", "comparison", "effect [95% interval]", "verdict", "why"],
                 [v.row() for v in verdicts],
                 ["Verdicts follow the rule in docs/report.md#claims (computed from the results, never by hand).",
                  "Effects are positive when the side the paper favours is better: k-hop in error points (mean "
                  "over hop counts >= 2), iGSM in accuracy points, knowledge as relative change of absorbed bits.",
                  "One profile's models are far smaller than the paper's: a verdict here speaks for this scale only."])


def claims_metrics(results: list[dict]) -> dict:
    """{claim: {family: {...}}} for metrics.json (dvc exp show)."""
    out: dict = {}
    for v in claim_verdicts(results):
        out.setdefault(f"claim_{v.claim}", {})[v.family or "none"] = v.metrics()
    return out
