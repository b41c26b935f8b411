"""The k-hop pieces of the report: error by variant and hop count, in tables (the figure:
vld.report.figures.khop_figure).

Per-position error, pooled over seeds: each variant's per-sequence error rates on the shared
test sequences, with a 95% interval from resampling seeds and sequences
(vld.stats.seeds_and_clusters_bootstrap). The chance line is the error of the best
constant prediction on the same test labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vld.stats import seeds_and_clusters_bootstrap
from vld.report.tables import Table, VariantGroup, fmt_int, group_name, group_sort, variant_group

RESAMPLES = 1000


def khop_results(results: list[dict]) -> list[dict]:
    return [r for r in results if (r.get("khop") or {}).get("hops")]


def sequence_errors(result: dict, hops: str) -> np.ndarray:
    """Per-sequence error rate of one result at one hop count."""
    cell = result["khop"]["hops"][hops]
    return np.asarray(cell["wrong_per_sequence"], dtype=np.float64) / max(1, cell["labelled_per_sequence"])


def hop_counts(results: list[dict]) -> list[str]:
    return sorted({h for r in khop_results(results) for h in r["khop"]["hops"]}, key=int)


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
    """Variant group -> hop count -> error pooled over the group's seeds."""
    groups: dict[VariantGroup, list[dict]] = {}
    for r in khop_results(results):
        groups.setdefault(variant_group(r), []).append(r)
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
