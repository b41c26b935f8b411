"""The k-hop pieces of the report: error by variant and hop count, in tables (the figure:
vld.report.figures.khop_figure); Table 7 (layer-subset reuse) and the retrofit table on k-hop.

Per-position error, pooled over seeds: each variant's per-sequence error rates on the shared
test sequences, with a 95% interval from resampling seeds and sequences
(vld.stats.seeds_and_clusters_bootstrap). The chance line is the error of the best
constant prediction on the same test labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vld.pipeline.families import families_where
from vld.report import paper
from vld.stats import seeds_and_clusters_bootstrap
from vld.report.tables import Table, VariantGroup, fmt_int, group_name, group_sort, variant_group, vld_label

RESAMPLES = 1000
# The k-hop results each table reads, by what their family is (vld.pipeline.families).
PRETRAINED_KHOP = families_where(task="khop", trained_by="pretrain")
RETROFITTED_KHOP = families_where(task="khop", trained_by="retrofit")
MIN_SERIAL_HOPS = 2  # hop counts that need serial depth (0 and 1 do not)


def khop_results(results: list[dict]) -> list[dict]:
    """Pretrained k-hop results (the retrofits have a table of their own)."""
    return [r for r in results if r["family"] in PRETRAINED_KHOP and (r.get("khop") or {}).get("hops")]


def _members(results: list[dict]) -> dict[VariantGroup, list[dict]]:
    """Results by variant group (a group's seeds)."""
    out: dict[VariantGroup, list[dict]] = {}
    for r in results:
        out.setdefault(variant_group(r), []).append(r)
    return out


def sequence_errors(result: dict, hops: str) -> np.ndarray:
    """Per-sequence error rate of one result at one hop count."""
    cell = result["khop"]["hops"][hops]
    return np.asarray(cell["wrong_per_sequence"], dtype=np.float64) / max(1, cell["labelled_per_sequence"])


def hop_counts(results: list[dict]) -> list[str]:
    return sorted({h for r in results for h in ((r.get("khop") or {}).get("hops") or {})}, key=int)


@dataclass
class PooledError:
    error: float
    interval: tuple[float, float]
    seeds: int
    sequences: int
    chance: float

    def cell(self) -> str:
        return f"{self.error:.3f} [{self.interval[0]:.3f}, {self.interval[1]:.3f}]"


def pooled_errors(results: list[dict]) -> dict[VariantGroup, dict[str, PooledError]]:
    """Variant group -> hop count -> error pooled over the group's seeds, of the pretrained k-hop results."""
    return _pooled(_members(khop_results(results)))


def _pooled(groups: dict[VariantGroup, list[dict]]) -> dict[VariantGroup, dict[str, PooledError]]:
    out: dict[VariantGroup, dict[str, PooledError]] = {}
    for group, members in groups.items():
        out[group] = {}
        for hops in hop_counts(members):
            with_hops = [r for r in members if hops in r["khop"]["hops"]]
            per_seed = [sequence_errors(r, hops) for r in with_hops]
            if len({len(v) for v in per_seed}) != 1:
                continue  # different test sets: not comparable
            point, interval = seeds_and_clusters_bootstrap(per_seed, RESAMPLES, seed=int(hops))
            out[group][hops] = PooledError(point, interval, len(per_seed), len(per_seed[0]),
                                           with_hops[0]["khop"]["hops"][hops]["chance_error"])
    return out


def _steps_differ(groups) -> bool:
    return len({g.train_steps for g in groups}) > 1


def khop_table(results: list[dict]) -> Table | None:
    found = khop_results(results)
    if not found:
        return None
    pooled = pooled_errors(found)
    hops = hop_counts(found)
    info = {variant_group(r): r for r in found}
    steps = _steps_differ(pooled)
    header = ["variant", "effective depth", "params", "training FLOPs", "seeds"] + [f"k={h}" for h in hops]
    rows = []
    for group in sorted(pooled, key=group_sort):
        r = info[group]
        train_flops = (r.get("flops_per_token_train") or 0) * (r.get("train_tokens") or 0)
        seeds = max((c.seeds for c in pooled[group].values()), default=0)
        rows.append([group_name(group, steps), r["effective_depth"], fmt_int(r["params"]),
                     f"{train_flops:.3g}" if train_flops else "", seeds]
                    + [pooled[group][h].cell() if h in pooled[group] else "" for h in hops])
    chance = {h: next(c[h].chance for c in pooled.values() if h in c) for h in hops}
    rows.append(["best constant prediction (chance)", "", "", "", ""] + [f"{chance[h]:.3f}" for h in hops])
    spec = found[0]["khop"].get("spec", {})
    notes = [
        "Per-position error (positions labelled NONE included, the hop token excluded) [95% interval "
        "from resampling seeds and test sequences]; seeds pooled.",
        f"Test: {found[0]['khop']['hops'][hops[0]]['sequences']} sequences per hop count; alphabet "
        f"{spec.get('alphabet')}, length {spec.get('length')}, hops {spec.get('min_hops')}..{spec.get('max_hops')}.",
        "Training FLOPs = training FLOPs per token x positions seen; a VLD xk model and the base "
        "model trained (k+1) times as many steps match in training FLOPs, the native model of the same "
        "effective depth in FLOPs per token.",
        "paper: no k-hop results (published depth-2..6 errors after 100k steps: docs/khop.md).",
    ]
    return Table("khop", "k-hop induction: per-position error by hop count", header, rows, notes)


def khop_long(results: list[dict]) -> Table | None:
    """One row per result (seed) and hop count, and one per pooled group: for CSV and plots."""
    found = khop_results(results)
    if not found:
        return None
    header = ["variant", "group", "seed", "train_steps", "effective_depth", "params", "k", "sequences",
              "error", "error_ci95_low", "error_ci95_high", "exact_match", "exact_ci95_low", "exact_ci95_high",
              "chance_error"]
    rows = []
    for r in sorted(found, key=lambda r: (group_sort(variant_group(r)), r.get("seed") or 0, r["variant"])):
        for h, cell in sorted(r["khop"]["hops"].items(), key=lambda kv: int(kv[0])):
            rows.append([r["variant"], group_name(variant_group(r), True), r.get("seed"), r.get("train_steps"),
                         r["effective_depth"], r["params"], int(h), cell["sequences"], round(cell["error"], 5),
                         round(cell["error_ci95"][0], 5), round(cell["error_ci95"][1], 5),
                         round(cell["exact_match"], 5), round(cell["exact_match_ci95"][0], 5),
                         round(cell["exact_match_ci95"][1], 5), round(cell["chance_error"], 5)])
    for group, cells in sorted(pooled_errors(found).items(), key=lambda kv: group_sort(kv[0])):
        for h, c in sorted(cells.items(), key=lambda kv: int(kv[0])):
            rows.append(["pooled", group_name(group, True), "all", group.train_steps, "", "", int(h), c.sequences,
                         round(c.error, 5), round(c.interval[0], 5), round(c.interval[1], 5), "", "", "",
                         round(c.chance, 5)])
    return Table("khop_long", "k-hop (long form)", header, rows)


# ---------------------------------------------------------------- Table 7 and Table 2 on k-hop

def serial_error(members: list[dict]) -> PooledError | None:
    """Error over the hop counts >= MIN_SERIAL_HOPS that every member was tested at (each test
    sequence's errors averaged over them), pooled over seeds, with its interval."""
    hops = sorted(set.intersection(*({h for h in r["khop"]["hops"] if int(h) >= MIN_SERIAL_HOPS} for r in members)),
                  key=int)
    if not hops:
        return None
    per_seed = [np.mean([sequence_errors(r, h) for h in hops], axis=0) for r in members]
    if len({len(v) for v in per_seed}) != 1:
        return None
    point, interval = seeds_and_clusters_bootstrap(per_seed, RESAMPLES, seed=0)
    chance = float(np.mean([members[0]["khop"]["hops"][h]["chance_error"] for h in hops]))
    return PooledError(point, interval, len(per_seed), len(per_seed[0]), chance)


def _error_cells(members: list[dict], hops: list[str]) -> list[str]:
    """One group's cells: each hop count's pooled error, then the serial error."""
    pooled = _pooled({variant_group(members[0]): members})[variant_group(members[0])]
    serial = serial_error(members)
    return [pooled[h].cell() if h in pooled else "" for h in hops] + [serial.cell() if serial else ""]


def khop_table7(results: list[dict]) -> Table | None:
    """Layer-subset reuse on k-hop (the paper's Table 7): per base-layer count with subsets, the
    model without reuse, the same pattern over every layer, and each subset."""
    found = khop_results(results)
    groups = _members(found)
    subsets = [g for g in groups if g.layers is not None]
    if not subsets:
        return None
    hops = [h for h in hop_counts(found) if int(h) >= MIN_SERIAL_HOPS]
    header = ["base layers", "variant", "layers reused", "effective depth", "seeds"]
    header += [f"k={h}" for h in hops] + [f"k>={MIN_SERIAL_HOPS}", f"paper {paper.TABLE7_BASE_LAYERS}L cycle op15 (%)"]
    rows = []
    for n_layer, d_model, steps in sorted({(g.n_layer, g.d_model or 0, g.train_steps or 0) for g in subsets}):
        own = lambda g: g.n_layer == n_layer and (g.d_model or 0) == d_model and (g.train_steps or 0) == steps
        reused = sorted((g for g in subsets if own(g)), key=group_sort)
        kinds = {(g.pattern, g.k) for g in reused}
        wanted = [(g, "none") for g in groups if own(g) and g.pattern == "base" and g.layers is None]
        wanted += [(g, "all") for g in sorted(groups, key=group_sort)
                   if own(g) and (g.pattern, g.k) in kinds and g.layers is None]
        half = n_layer // 2
        wanted += [(g, {f"0..{half - 1}": "first_half", f"{half}..{n_layer - 1}": "second_half"}.get(g.layers))
                   for g in reused]
        for group, paper_key in wanted:
            members = groups[group]
            rows.append([n_layer, group_name(group), group.layers or ("all" if group.k else "none"),
                         members[0]["effective_depth"], len(members)] + _error_cells(members, hops)
                        + [f"{paper.TABLE7[paper_key]:.1f}" if paper_key else ""])
    notes = ["Per-position error [95% interval resampling seeds, then test sequences], seeds pooled; "
             f"k>={MIN_SERIAL_HOPS}: each test sequence's error averaged over those hop counts (claim 5 compares "
             "this between the last and the first layer subset).",
             "Layer ranges are 0-based inclusive; the paper's layers 1-4 / 5-8 of its 8-layer model are our "
             "first / second half.",
             "paper: Table 7 (8-layer model, cycle, iGSM op15 accuracy, higher is better): " + ", ".join(
                 f"{paper.TABLE7_LABELS[k]} {v}" for k, v in paper.TABLE7.items()) + "."]
    return Table("table7_khop", "Table 7 on k-hop: layer-subset reuse (error, lower is better)", header, rows, notes)


def khop_retrofit_table(results: list[dict]) -> Table | None:
    """Retrofit on k-hop (the paper's Table 2): each source as trained, its retrofits, and the
    pretrained variant of the retrofit's schedule at the same total steps (trained from scratch)."""
    retrofit = _members([r for r in results if r["family"] in RETROFITTED_KHOP and (r.get("khop") or {}).get("hops")])
    if not retrofit:
        return None
    pretrained = _members(khop_results(results))
    by_name = {r["variant"]: g for g, members in pretrained.items() for r in members}
    hops = [h for h in hop_counts([r for rs in retrofit.values() for r in rs]) if int(h) >= MIN_SERIAL_HOPS]
    header = ["row", "variant", "effective depth", "training steps", "seeds"]
    header += [f"k={h}" for h in hops] + [f"k>={MIN_SERIAL_HOPS}"]
    rows, shown = [], set()
    for group in sorted(retrofit, key=lambda g: (retrofit[g][0]["source"], group_sort(g))):
        members = retrofit[group]
        source = by_name.get(members[0]["source"])
        source_steps = source.train_steps if source else None
        if source is not None and source not in shown:
            shown.add(source)
            rows.append(["source, as trained", group_name(source), pretrained[source][0]["effective_depth"],
                         source_steps, len(pretrained[source])] + _error_cells(pretrained[source], hops))
        total = (source_steps or 0) + (group.train_steps or 0)
        label = "Base (same fine-tuning, no reuse)" if group.pattern == "base" and not group.k else \
            f"{group.pattern.replace('_', ' ').title()} {vld_label(group.k)} (retrofit)"
        rows.append([label, f"{group_name(group)}, from {members[0]['source']}", members[0]["effective_depth"],
                     f"{source_steps} + {group.train_steps}", len(members)] + _error_cells(members, hops))
        scratch = [g for g in pretrained if g.pattern == group.pattern and g.k == group.k and g.layers is None
                   and source and g.n_layer == source.n_layer and g.d_model == source.d_model and g.train_steps == total]
        for g in scratch:
            if g not in shown:
                shown.add(g)
                rows.append(["trained from scratch, same total steps", group_name(g), pretrained[g][0]["effective_depth"],
                             g.train_steps, len(pretrained[g])] + _error_cells(pretrained[g], hops))
    notes = ["Per-position error [95% interval resampling seeds, then test sequences], seeds pooled; seed s of a "
             "retrofit fine-tunes seed s of its source, on the source's stream from the step where its training "
             "stopped. Training steps: the source's + the fine-tuning's.",
             "Claim 6 compares the retrofit with reuse against the Base row (the same fine-tuning without reuse).",
             "paper: Table 2 retrofits LLaMA-3.2-3B-Instruct with LoRA (Math500 30.4 -> 35.4, ...; the iGSM "
             "Table 2 analogue shows them); no k-hop numbers."]
    return Table("table2_khop", "Table 2 on k-hop: retrofit (error, lower is better)", header, rows, notes)
