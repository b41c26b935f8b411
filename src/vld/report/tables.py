"""The report's tables, computed from variant results (schema vld.variant/2, vld.result_schema.VariantResult).

Every builder returns a `Table` (our numbers, with the paper's beside where it gives them)
or None when the results hold nothing for it (the report then prints its piece's skip note).
Accuracies are percentages; seeds of the same variant (same VariantGroup: family, pattern, k,
layers, n_layer, d_model, training steps, objective) are pooled: correct and n summed. Intervals
are 95%: Wilson for one seed, a bootstrap over seeds and then problems within a seed for several
(vld.stats.seeds_and_problems_interval), so pooled seeds carry their training noise.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from statistics import mean
from typing import NamedTuple

from vld import host_speed
from vld.model.schedule import BUILTIN_PATTERNS
from vld.pipeline.families import families_where
from vld.report import paper
from vld.stats import seeds_and_problems_interval, wilson_interval

PATTERN_ORDER = tuple(BUILTIN_PATTERNS)
# The results each table reads, by what their family is (vld.pipeline.families).
PRETRAINED_IGSM = families_where(task="igsm", trained_by="pretrain")  # Tables 1, 3-7
RETROFITTED = families_where(task="igsm", trained_by="retrofit")  # Table 2 (k-hop: vld.report.khop)
KNOWLEDGE = families_where(task="knowledge")  # the knowledge table, Figure 1


@dataclass
class Table:
    name: str  # file stem
    title: str
    columns: list[str]
    rows: list[list]
    notes: list[str] = field(default_factory=list)
    paper: "Table | None" = None  # the paper's own numbers, shown beside ours


# ---------------------------------------------------------------- helpers

def pattern_key(pattern) -> tuple:
    pattern = str(pattern)
    return (PATTERN_ORDER.index(pattern) if pattern in PATTERN_ORDER else len(PATTERN_ORDER), pattern)


def test_key(name: str) -> tuple:
    match = re.fullmatch(r"op(\d+)", str(name))
    return (0, int(match.group(1)), "") if match else (1, 0, str(name))


def vld_label(k) -> str:
    return "-" if not k else f"x{k}"


def pct(value, digits: int = 1) -> str:
    return "" if value is None else f"{100 * value:.{digits}f}"


def fmt_num(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def fmt_int(value) -> str:
    return "" if value is None else f"{round(value):,}"


class VariantGroup(NamedTuple):
    """What makes a variant, apart from its seed: results with the same group are pooled."""

    family: str
    pattern: str
    k: int
    layers: str | None
    n_layer: int
    d_model: int | None
    train_steps: int | None = None  # a compute-matched baseline trains longer: not a seed of base
    objective: str | None = None  # iGSM: answer_only models are not seeds of solution-trained ones
    recipe: str | None = None  # the loop recipes' label (vld.train.recipe); None: none


def recipe_label(recipe: dict | None) -> str | None:
    """A result's recipe (its options set) as one label, None without one."""
    if not recipe:
        return None
    from vld.train.recipe import Recipe

    return Recipe(**recipe).label()


def seeds_by_variant(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """{(family, variant name): its results, one per seed}, in the results' order."""
    seeds: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        seeds.setdefault((r["family"], r["variant"]), []).append(r)
    return seeds


def seed_order(seed) -> int:
    """A result's seed as a sort key (seeds in number order; none, or a non-number, first)."""
    return int(seed) if str(seed).isdigit() else -1


def seeded_names(results: list[dict]) -> list[str]:
    """Each result's variant name, with its seed where `results` hold several seeds of that
    variant (family and name), so that a table's rows of one seed are told from another's."""
    count = Counter((r.get("family"), r.get("variant")) for r in results)
    return [str(r.get("variant")) + (f" seed {r.get('seed')}" if count[r.get("family"), r.get("variant")] > 1 else "")
            for r in results]


def variant_group(result: dict) -> VariantGroup:
    layers = result.get("layers")
    return VariantGroup(result["family"], str(result["pattern"]), int(result["k"] or 0),
                        None if layers is None else str(layers), int(result["n_layer"]), result.get("d_model"),
                        result.get("train_steps"), result.get("objective"), recipe_label(result.get("recipe")))


def group_name(group: VariantGroup, steps: bool = False) -> str:
    """A readable name: "cycle x1, 2 layers", "base, 4 layers", "cycle x1, 8 layers, reusing 4..7"
    (with `steps`, the training steps too: "base, 2 layers, 4000 steps")."""
    return (group.pattern.replace("_", " ") + (f" {vld_label(group.k)}" if group.k else "")
            + f", {group.n_layer} layers" + (f", reusing {group.layers}" if group.layers else "")
            + (f", {group.train_steps} steps" if steps and group.train_steps else "")
            + (", answer only" if group.objective == "answer_only" else "")
            + (f", recipe {group.recipe}" if group.recipe else ""))


INTERVAL_RESAMPLES = 2000  # bootstrap resamples of a pooled accuracy's interval


@dataclass
class Pooled:
    n: int = 0
    correct: int = 0
    solution_correct: int | None = 0  # None: answer-only models write no solution
    seeds: int = 0
    baseline_rate: float | None = None
    per_seed: list[tuple[int, int]] = field(default_factory=list)  # (correct, n) of each seed

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        if len(self.per_seed) > 1:
            return seeds_and_problems_interval([[counts] for counts in self.per_seed], INTERVAL_RESAMPLES)[1]
        return wilson_interval(self.correct, self.n)

    def cell(self) -> str:
        if not self.n:
            return ""
        low, high = self.interval
        return f"{pct(self.accuracy)} [{pct(low)}, {pct(high)}] n={self.n}"


def pooled_igsm(results: list[dict]) -> dict[VariantGroup, dict[str, Pooled]]:
    """variant group -> test name -> pooled counts over seeds."""
    out: dict[tuple, dict[str, Pooled]] = {}
    for result in results:
        for test, scores in (result.get("igsm") or {}).items():
            cell = out.setdefault(variant_group(result), {}).setdefault(test, Pooled())
            cell.n += int(scores["n"])
            cell.correct += int(scores["answer_correct"])
            solved = scores.get("solution_correct", 0)
            if cell.solution_correct is not None:  # stays None once an answer-only result is in
                cell.solution_correct = None if solved is None else cell.solution_correct + int(solved)
            cell.seeds += 1
            if int(scores["n"]):
                cell.per_seed.append((int(scores["answer_correct"]), int(scores["n"])))
            baseline = (scores.get("baseline") or {}).get("rate")
            if baseline is not None:
                cell.baseline_rate = baseline
    return out


def test_names(results: list[dict]) -> list[str]:
    return sorted({t for r in results for t in (r.get("igsm") or {})}, key=test_key)


def _reasoning(results: list[dict]) -> list[dict]:
    return [r for r in results if r["family"] in PRETRAINED_IGSM and r.get("igsm")]


def table1_results(results: list[dict]) -> list[dict]:
    """Reasoning results with iGSM scores, layer-subset variants excepted (those are Table 7's)."""
    return [r for r in _reasoning(results) if r.get("layers") is None]


def group_sort(group: VariantGroup) -> tuple:
    return (group.n_layer, group.d_model or 0, pattern_key(group.pattern), group.k, group.layers or "",
            group.train_steps or 0, group.objective or "", group.recipe or "")


# ---------------------------------------------------------------- Table 1

# A setting counts as learned when the best variant answers at least this many times as often
# as always giving the most common train answer (the bar of docs/igsm_learnability.md).
LEARNED_RATIO = 3.0


@dataclass
class BestVariant:
    """The variant group with the highest answer accuracy over all its test problems."""
    group: VariantGroup
    n: int
    accuracy: float
    baseline: float  # the most-common-answer rate over the same problems

    @property
    def ratio(self) -> float | None:
        return self.accuracy / self.baseline if self.baseline else None

    @property
    def learned(self) -> bool:
        return self.ratio is not None and self.ratio >= LEARNED_RATIO

    @property
    def name(self) -> str:
        return group_name(self.group)


def best_variant(pooled: dict[tuple, dict[str, Pooled]]) -> BestVariant | None:
    best = None
    for group, tests in pooled.items():
        cells = [c for c in tests.values() if c.n and c.baseline_rate is not None]
        n = sum(c.n for c in cells)
        if n:
            found = BestVariant(group, n, sum(c.correct for c in cells) / n,
                                  sum(c.baseline_rate * c.n for c in cells) / n)
            if best is None or (found.accuracy, found.baseline) > (best.accuracy, best.baseline):
                best = found
    return best


def ratio_text(ratio: float, bar: float = LEARNED_RATIO) -> str:
    """The ratio to one decimal, or to as many more as it takes for the printed figure to fall
    on the same side of the bar as the ratio: 2.97 is "2.97x", never a "3.0x" that is not learned."""
    for digits in range(1, 7):
        text = f"{ratio:.{digits}f}"
        if (float(text) >= bar) == (ratio >= bar):
            return f"{text}x"
    return f"{ratio!r}x"


def learning_verdict(pooled: dict[tuple, dict[str, Pooled]]) -> str | None:
    """One line on whether any variant learned. Without it, a table of zeros (or of noise around
    the baseline) reads like a finding about depth."""
    best = best_variant(pooled)
    if best is None:
        return None
    ratio = ratio_text(best.ratio) if best.ratio is not None else "no baseline"
    facts = (f"the best variant ({best.name}) answers {pct(best.accuracy)}% of its {best.n} test problems, "
             f"against {pct(best.baseline)}% for always giving the most common train answer ({ratio}; "
             f"learned means at least {LEARNED_RATIO:g}x)")
    if best.learned:
        return f"Learned: {facts}."
    return (f"**Not learned**: {facts}. Differences between rows are noise here, not effects of "
            "depth; train longer or on an easier setting (docs/igsm_learnability.md).")


def table1(results: list[dict]) -> Table | None:
    """Accuracy by pattern, VLD factor, base layers and test (not layer-subset variants)."""
    reasoning = table1_results(results)
    if not reasoning:
        return None
    pooled = pooled_igsm(reasoning)
    tests = test_names(reasoning)
    sizes = sorted({g.n_layer for g in pooled})
    columns = [(size, test) for size in sizes for test in tests]
    # answer-only models are rows of their own: the paper's rows are solution-trained
    row_keys = sorted({(g.pattern, g.k, g.objective == "answer_only") for g in pooled},
                      key=lambda row: (row[2], pattern_key(row[0]), row[1]))

    def cell(pattern, k, answer_only, size, test) -> Pooled | None:
        # Several widths at one depth would be distinct rows of the paper; keep them apart
        # by pooling only identical groups and reporting the first width's cell.
        for group in sorted(pooled, key=group_sort):
            if (group.pattern == pattern and group.k == k and (group.objective == "answer_only") == answer_only
                    and group.n_layer == size and test in pooled[group]):
                return pooled[group][test]
        return None

    header = ["pattern", "VLD"] + [f"{size}L {test} (ours)" for size, test in columns]
    header += [f"paper {size}L {test}" for size, test in paper.TABLE1_COLUMNS]
    rows = []
    for pattern, k, answer_only in row_keys:
        row = [pattern + (" (answer only)" if answer_only else ""), vld_label(k)]
        for size, test in columns:
            found = cell(pattern, k, answer_only, size, test)
            row.append(found.cell() if found else "")
        paper_row = {} if answer_only else paper.TABLE1.get((pattern, k), {})
        row += [fmt_num(paper_row.get(col)) for col in paper.TABLE1_COLUMNS]
        rows.append(row)
    sources = sorted({str((scores.get("baseline") or {}).get("source")) for r in reasoning
                      for scores in r["igsm"].values() if scores.get("baseline")})
    baseline_row = [f"always the most common answer ({'/'.join(sources)} set)" if sources
                    else "always the most common answer", ""]
    for size, test in columns:
        rates = [p[test].baseline_rate for g, p in pooled.items()
                 if g.n_layer == size and test in p and p[test].baseline_rate is not None]
        baseline_row.append(pct(rates[0]) if rates else "")
    baseline_row += [""] * len(paper.TABLE1_COLUMNS)
    rows.append(baseline_row)
    notes = [
        "Ours: answer accuracy % [95% interval: Wilson for one seed, else a bootstrap over seeds, then "
        "problems within a seed] and n = test problems (seeds pooled); "
        "greedy decoding through the KV cache, answers judged by the iGSM judge.",
        "VLD xk = k extra visits of the reused layers: effective depth (k+1) x L.",
        f"paper: Table 1 of {paper.PAPER}, {paper.TABLE1_N_TEST} test problems per test; "
        "columns match ours only where the base-layer count and the test op agree.",
    ]
    verdict = learning_verdict(pooled)
    if verdict:
        notes.insert(0, verdict)
    return Table("table1", "Table 1: iGSM accuracy by pattern, VLD factor and test op",
                 header, rows, notes)


def table1_long(results: list[dict]) -> Table | None:
    """Table 1 in long form (one row per variant group and test), for CSV and plots."""
    reasoning = table1_results(results)
    if not reasoning:
        return None
    pooled = pooled_igsm(reasoning)
    effective = {variant_group(r): r["effective_depth"] for r in reasoning}
    native = {variant_group(r): bool(r["native_depth"]) for r in reasoning}
    header = ["pattern", "k", "n_layer", "d_model", "effective_depth", "native_depth", "test",
              "seeds", "n", "answer_correct", "answer_accuracy_pct", "ci95_low_pct",
              "ci95_high_pct", "solution_accuracy_pct", "baseline_rate_pct", "paper_accuracy_pct"]
    rows = []
    for group in sorted(pooled, key=group_sort):
        pattern, k, n_layer, d_model = group.pattern, group.k, group.n_layer, group.d_model
        for test in sorted(pooled[group], key=test_key):
            cell = pooled[group][test]
            low, high = cell.interval
            paper_value = paper.TABLE1.get((pattern, k), {}).get((n_layer, test))
            rows.append([pattern, k, n_layer, d_model, effective[group], native[group], test,
                         cell.seeds, cell.n, cell.correct, pct(cell.accuracy, 2), pct(low, 2),
                         pct(high, 2), pct(cell.solution_correct / cell.n if cell.n and cell.solution_correct is not None else None, 2),
                         pct(cell.baseline_rate, 2), fmt_num(paper_value)])
    return Table("table1_long", "Table 1 (long form)", header, rows)


def table1_paper() -> Table:
    header = ["pattern", "VLD"] + [f"{size}L {test}" for size, test in paper.TABLE1_COLUMNS]
    header.append("12L op15")  # the native 12-layer model, given in the paper's text
    rows = [[pattern, vld_label(k)] + [fmt_num(values.get(col)) for col in paper.TABLE1_COLUMNS]
            + [fmt_num(paper.NATIVE_OP15[12], 2) if (pattern, k) == ("base", 0) else ""]
            for (pattern, k), values in paper.TABLE1.items()]
    return Table("table1_paper", "paper: Table 1 (iGSM accuracy %, 500 test problems each)",
                 header, rows, [f"paper: {paper.PAPER}"])


# ---------------------------------------------------------------- Table 7

def table7(results: list[dict]) -> Table | None:
    """Layer-subset reuse: no VLD, all layers, and each reused subset, per base-layer count."""
    reasoning = _reasoning(results)
    subsets = [r for r in reasoning if r.get("layers") is not None]
    if not subsets:
        return None
    pooled = pooled_igsm(reasoning)
    tests = test_names(subsets)
    header = ["base layers", "variant", "pattern", "VLD", "layers reused"]
    header += [f"{t} (ours)" for t in tests] + [f"paper {paper.TABLE7_BASE_LAYERS}L cycle op15"]
    rows = []
    for n_layer in sorted({r["n_layer"] for r in subsets}):
        sub_groups = sorted({variant_group(r) for r in subsets if r["n_layer"] == n_layer},
                            key=group_sort)
        ks = sorted({g.k for g in sub_groups})
        patterns = sorted({g.pattern for g in sub_groups}, key=pattern_key)
        wanted = [(g, "no VLD", "none") for g in pooled
                  if g.family in PRETRAINED_IGSM and g.n_layer == n_layer and g.pattern == "base" and g.layers is None]
        wanted += [(g, "all layers", "all") for g in sorted(pooled, key=group_sort)
                   if g.family in PRETRAINED_IGSM and g.n_layer == n_layer and g.pattern in patterns
                   and g.k in ks and g.layers is None]
        half = n_layer // 2
        for g in sub_groups:
            which = {f"0..{half - 1}": "first_half", f"{half}..{n_layer - 1}": "second_half"}.get(g.layers)
            wanted.append((g, f"layers {g.layers} only", which))
        for group, label, paper_key in wanted:
            row = [n_layer, label, group.pattern, vld_label(group.k), group.layers or "all"]
            row += [pooled[group][t].cell() if t in pooled[group] else "" for t in tests]
            row.append(fmt_num(paper.TABLE7.get(paper_key)) if paper_key else "")
            rows.append(row)
    notes = ["Layer ranges are 0-based inclusive; the paper's layers 1-4 / 5-8 of its 8-layer "
             "model are our first / second half (0..L/2-1, L/2..L-1).",
             "paper: Table 7 (8-layer model, cycle, op15): " + ", ".join(
                 f"{paper.TABLE7_LABELS[k]} {v}" for k, v in paper.TABLE7.items()) +
             "; exact orders not given."]
    return Table("table7", "Table 7: layer-subset reuse", header, rows, notes)


# ---------------------------------------------------------------- Table 2 (retrofit)

def table2(results: list[dict]) -> Table | None:
    retrofit = [r for r in results if r["family"] in RETROFITTED]
    if not retrofit:
        return None
    benchmarks = sorted({b for r in retrofit for b in (r.get("scores") or {})})
    tests = test_names(retrofit)
    header = ["variant", "row", "pattern", "VLD", "effective depth"] + benchmarks
    header += [f"iGSM {t}" for t in tests]
    rows = []
    for r in sorted(retrofit, key=lambda r: (pattern_key(r["pattern"]), r["k"] or 0, r["variant"])):
        label = "Base" if r["pattern"] == "base" and not r["k"] else str(r["pattern"]).replace("_", " ").title()
        row = [r["variant"], label, r["pattern"], vld_label(r["k"]), r["effective_depth"]]
        row += [fmt_num((r.get("scores") or {}).get(b), 2) for b in benchmarks]
        for t in tests:
            scores = (r.get("igsm") or {}).get(t)
            if scores:
                cell = Pooled(n=scores["n"], correct=scores["answer_correct"])
                row.append(cell.cell())
            else:
                row.append("")
        rows.append(row)
    paper_table = Table(
        "table2_paper", "paper: Table 2 (LLaMA-3.2-3B-Instruct + LoRA, %)",
        ["benchmark", "Base", "Cycle"],
        [[b, fmt_num(v["base"], 2), fmt_num(v["cycle"], 2)] for b, v in paper.TABLE2.items()],
        ["paper: which layers are cycled, the factor, lr and epochs are not given."])
    return Table("table2", "Table 2 analogue: retrofit, Base vs Cycle", header, rows,
                 ["Scores as given by the retrofit stage (percent); iGSM cells as in Table 1."],
                 paper=paper_table)


# ---------------------------------------------------------------- compute

def compute_table(results: list[dict]) -> Table | None:
    """One row per trained variant (its seeds together): size, depth, FLOPs, and the training
    stage's tokens/s beside the host's own speed measured in the same stage."""
    if not results:
        return None
    native_flops = {(r["family"], r["n_layer"], r.get("d_model")): r.get("flops_per_token")
                    for r in results if r["native_depth"]}
    header = ["variant", "family", "pattern", "VLD", "layers", "base layers", "d_model",
              "effective depth", "params", "params w/o embeddings", "seq_len",
              "forward FLOPs/token", "training FLOPs/token", "FLOPs vs native same params",
              "seeds", "host GFLOP/s, start and end", "train tokens/s"]
    rows = []
    for seeds in sorted(seeds_by_variant(results).values(), key=lambda s: (s[0]["family"], s[0]["n_layer"], s[0].get("d_model") or 0,
                                                          pattern_key(s[0]["pattern"]), s[0]["k"] or 0, s[0]["variant"])):
        r = seeds[0]  # a variant's seeds share its model, so everything but the measured rates
        base = native_flops.get((r["family"], r["n_layer"], r.get("d_model")))
        flops = r.get("flops_per_token")
        ratio = f"{flops / base:.2f}" if base and flops else ""
        rates = [s["train_tokens_per_s"] for s in seeds if s.get("train_tokens_per_s") is not None]
        host = [s["train_host_gflops"] for s in seeds if s.get("train_host_gflops")]
        host_cell = ", ".join(fmt_int(mean(pair[i] for pair in host)) for i in (0, 1)) if host else ""
        rows.append([r["variant"], r["family"], r["pattern"], vld_label(r["k"]), r.get("layers") or "",
                     r["n_layer"], r.get("d_model", ""), r["effective_depth"], fmt_int(r["params"]),
                     fmt_int(r.get("params_no_embed")), r.get("seq_len", ""), fmt_int(flops),
                     fmt_int(r.get("flops_per_token_train")), ratio, len(seeds), host_cell,
                     fmt_int(mean(rates) if rates else None)])
    notes = ["Parameters count tied weights once; FLOPs per token are the model's own count "
             "(2 x block params x effective depth + attention + head; training = 3 x forward).",
             "Train tokens/s as measured by the training stage, per seed, the mean over the variant's seeds "
             "(seeds trained together share one rate).",
             f"Host GFLOP/s: one float32 GEMM {host_speed.REFERENCE_GEMM_NAME} timed by the training stage at "
             "its start and end, in the GEMM library and thread count it trained with (mean over seeds): the "
             "machine's own speed then. Two variants' tokens/s compare only where their host rates agree; "
             "a shared host's speed moves between runs and within one."]
    timed = [rate for r in results for rate in (r.get("train_host_gflops") or ())]
    if timed:
        notes.append(f"The host's rate over every timing of these stages: {min(timed):,.0f} to {max(timed):,.0f} "
                     f"GFLOP/s ({max(timed) / min(timed):.2f}x apart).")
    notes.append("paper: no FLOP-, latency- or throughput-matched figures are given.")
    return Table("compute", "Compute: parameters, depth, FLOPs and throughput", header, rows, notes)


# ---------------------------------------------------------------- knowledge (Figure 4 data)

# Keys of vld.eval.knowledge.all_knowledge_measures (random-token data sets).
KNOWLEDGE_KEYS = {"entropy": "absorbed_bits_entropy", "cross_entropy": "absorbed_bits_ce"}
BIO_KEY = "bio_capacity_bits"  # biographies (Physics of LMs Part 3.3 capacity)
MEASURE_LABELS = {"entropy": "paper measure (H1 - sum of prediction entropies)",
                  "cross_entropy": "cross-entropy measure (H1 - sum of -log2 p(true token))"}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def knowledge_bits(result: dict, measure: str) -> float | None:
    """Absorbed bits of a knowledge result under `measure` ("entropy" | "cross_entropy")."""
    return _number((result.get("knowledge") or {}).get(KNOWLEDGE_KEYS[measure]))


def knowledge_per_param(result: dict, key: str) -> float | None:
    """Bits per parameter: the knowledge measure's own `<key>_per_param` (tied weights once),
    else bits / params of the result."""
    knowledge = result.get("knowledge") or {}
    own = _number(knowledge.get(f"{key}_per_param"))
    bits = _number(knowledge.get(key))
    if own is not None:
        return own
    return None if bits is None or not result.get("params") else bits / result["params"]


def knowledge_table(results: list[dict]) -> Table | None:
    knowledge = [r for r in results if r["family"] in KNOWLEDGE]
    if not knowledge:
        return None
    has_bio = any(_number((r.get("knowledge") or {}).get(BIO_KEY)) is not None for r in knowledge)
    header = ["variant", "pattern", "VLD", "base layers", "d_model", "effective depth", "params",
              "params w/o embeddings", "absorbed bits (paper measure)",
              "absorbed bits (cross-entropy)", "bits/param (paper)", "bits/param (cross-entropy)"]
    if has_bio:
        header += ["bio capacity bits (Part 3.3)", "bio bits/param"]
    rows = []
    for r in sorted(knowledge, key=lambda r: (r["params"], pattern_key(r["pattern"]), r["k"] or 0,
                                              r["variant"])):
        per_param = [knowledge_per_param(r, KNOWLEDGE_KEYS[m]) for m in ("entropy", "cross_entropy")]
        row = [r["variant"], r["pattern"], vld_label(r["k"]), r["n_layer"], r.get("d_model", ""),
               r["effective_depth"], fmt_int(r["params"]), fmt_int(r.get("params_no_embed")),
               fmt_num(knowledge_bits(r, "entropy")), fmt_num(knowledge_bits(r, "cross_entropy"))]
        row += ["" if v is None else f"{v:.4f}" for v in per_param]
        if has_bio:
            bio = _number((r.get("knowledge") or {}).get(BIO_KEY))
            bio_pp = knowledge_per_param(r, BIO_KEY)
            row += [fmt_num(bio), "" if bio_pp is None else f"{bio_pp:.4f}"]
        rows.append(row)
    return Table("figure4", "Figure 4 data: absorbed bits (knowledge capacity)", header, rows,
                 [paper.FIGURE4_NOTE,
                  "The paper measure rewards a confident wrong prediction; the cross-entropy "
                  "measure scores the true token and is the sound estimator.",
                  "Bits/param as computed by vld.eval.knowledge (all parameters, tied once)."])


# ---------------------------------------------------------------- depth use

def depth_table(results: list[dict]) -> Table | None:
    with_depth = [r for r in results if r.get("depth")]
    if not with_depth:
        return None
    header = ["variant", "family", "pattern", "VLD", "virtual layer", "base layer", "visit",
              "update norm", "update / |h|", "angle (deg)", "cos(next update)", "logit-lens loss"]
    rows = []
    with_depth.sort(key=lambda r: (r["family"], r["n_layer"], pattern_key(r["pattern"]), r["k"] or 0, r["variant"],
                                   seed_order(r.get("seed"))))
    for r, name in zip(with_depth, seeded_names(with_depth)):
        for layer in r["depth"]:
            rows.append([name, r["family"], r["pattern"], vld_label(r["k"]),
                         layer["virtual_layer"], layer["base_layer"], layer.get("visit", ""),
                         fmt_num(layer.get("update_norm"), 3), fmt_num(layer.get("relative_update"), 3),
                         fmt_num(layer.get("angle_deg"), 1), fmt_num(layer.get("update_cosine_next"), 3),
                         fmt_num(layer.get("logit_lens_loss"), 3)])
    notes = ["Means over every token of the probe windows, per virtual layer (0-based; visit = "
             "earlier visits of the same base layer). Logit-lens loss in nats, read after the layer.",
             "High update cosines = a smooth flow (procedural assembly); near-zero cosines with small, "
             "even rotations = ensemble averaging (Liu et al. 2026, arXiv 2602.05970).",
             "paper: no per-layer analysis is given."]
    return Table("depth", "Depth use per virtual layer", header, rows, notes)


# ---------------------------------------------------------------- Figure 1 pairing

def figure1_pairs(results: list[dict]) -> list[dict]:
    """(pattern, k) pairs with a knowledge result and a reasoning result.

    Knowledge side: the (n_layer, d_model) size with the most knowledge variants (the fixed-size
    pattern sweep), cross-entropy absorbed bits (paper measure if absent). Reasoning side:
    the smallest base-layer count with VLD variants, first test, seeds pooled.
    """
    knowledge = [r for r in results if r["family"] in KNOWLEDGE and r.get("layers") is None]
    reasoning = table1_results(results)
    if not knowledge or not reasoning:
        return []
    sizes: dict[tuple, int] = {}
    for r in knowledge:
        sizes[(r["n_layer"], r.get("d_model"))] = sizes.get((r["n_layer"], r.get("d_model")), 0) + 1
    size = max(sorted(sizes, key=lambda s: (s[0], s[1] or 0)), key=lambda s: sizes[s])
    know = {}
    for r in knowledge:
        if (r["n_layer"], r.get("d_model")) == size:
            bits = knowledge_bits(r, "cross_entropy")
            measure = "cross_entropy"
            if bits is None:
                bits, measure = knowledge_bits(r, "entropy"), "entropy"
            if bits is not None:
                know.setdefault((str(r["pattern"]), int(r["k"] or 0)), (bits, measure))
    pooled = pooled_igsm(reasoning)
    tests = test_names(reasoning)
    vld_sizes = sorted({g.n_layer for g in pooled if g.k > 0}) or sorted({g.n_layer for g in pooled})
    n_layer = vld_sizes[0]
    depth = {variant_group(r): r["effective_depth"] for r in reasoning}
    pairs = []
    for group in sorted(pooled, key=group_sort):
        key = (group.pattern, group.k)
        if group.n_layer != n_layer or key not in know or tests[0] not in pooled[group]:
            continue
        cell = pooled[group][tests[0]]
        pairs.append({"pattern": key[0], "k": key[1], "knowledge_bits": know[key][0],
                      "knowledge_measure": know[key][1], "accuracy": cell.accuracy,
                      "test": tests[0], "n_layer": n_layer, "effective_depth": depth[group]})
    return pairs


def figure1_table(pairs: list[dict]) -> Table | None:
    if not pairs:
        return None
    header = ["pattern", "VLD", "effective depth", "knowledge: absorbed bits", "measure",
              "reasoning: accuracy %", "test", "reasoning base layers"]
    rows = [[p["pattern"], vld_label(p["k"]), p["effective_depth"], fmt_num(p["knowledge_bits"]),
             p["knowledge_measure"], pct(p["accuracy"]), p["test"], p["n_layer"]] for p in pairs]
    return Table("figure1", "Figure 1 data: knowledge vs reasoning", header, rows,
                 ["paper: Figure 1 is a schematic; it prints no numbers."])
