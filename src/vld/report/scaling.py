"""Virtual depth as a scaling dimension, in the report: k-hop error against effective depth per
line (native depth, cycle xk per recipe), learning curves (k-hop: the step at which each hop
count is solved; the other families: each metric's final value and the step of its best value)
and test-time depth (the trained model run with its core repeated other numbers of times).

Intervals are 95%, from resampling seeds and then test sequences (vld.stats); a learning curve
or a test-time-depth count is summarised over seeds by its median and range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vld.report import khop
from vld.report.claims import MIN_SERIAL_HOPS, trend_lines
from vld.report.tables import Table, VariantGroup, group_name, group_sort, variant_group
from vld.stats import seeds_and_clusters_bootstrap

SOLVED = 0.05  # a hop count counts as solved at the first curve step with error below this
RESAMPLES = 1000


def _by_group(results: list[dict]) -> dict[VariantGroup, list[dict]]:
    out: dict[VariantGroup, list[dict]] = {}
    for r in results:
        out.setdefault(variant_group(r), []).append(r)
    return out


# ---------------------------------------------------------------- error against effective depth

def scaling_lines(results: list[dict]) -> dict[str, list[VariantGroup]]:
    """{line name: its groups by effective depth}: native depth (the base pattern at one width,
    training length and recipe, >= 2 depths) and cycle xk on one model per recipe (claim 7's
    lines, x0 being cycle x0 or the base model), each with >= 2 points."""
    groups = _by_group(khop.khop_results(results))
    lines: dict[str, list[VariantGroup]] = {}
    native: dict[tuple, list[VariantGroup]] = {}
    for g in groups:
        if g.pattern == "base" and g.k == 0 and g.layers is None:
            native.setdefault((g.family, g.d_model, g.train_steps, g.recipe), []).append(g)
    for (family, d_model, steps, recipe), members in native.items():
        if len({g.n_layer for g in members}) > 1:
            name = f"{family}: native depth, width {d_model}, {steps} steps" + (f", recipe {recipe}" if recipe else "")
            lines[name] = sorted(members, key=lambda g: g.n_layer)
    for family in sorted({g.family for g in groups}):
        own = [g for g in groups if g.family == family]
        for (n_layer, d_model, steps, _, recipe), line in trend_lines(own).items():
            if len(line) > 1:
                name = (f"{family}: cycle xk on {n_layer} layers, width {d_model}, {steps} steps"
                        + (f", recipe {recipe}" if recipe else ""))
                lines[name] = [line[k] for k in sorted(line)]
    return lines


def _serial(members: list[dict]) -> tuple[float, tuple[float, float]] | None:
    """Mean error over the hop counts >= MIN_SERIAL_HOPS, pooled over seeds, with its interval."""
    hops = sorted(set.intersection(*({h for h in r["khop"]["hops"] if int(h) >= MIN_SERIAL_HOPS} for r in members)), key=int)
    if not hops:
        return None
    per_seed = [np.mean([khop.sequence_errors(r, h) for h in hops], axis=0) for r in members]
    if len({len(v) for v in per_seed}) != 1:
        return None
    point, interval = seeds_and_clusters_bootstrap(per_seed, RESAMPLES, seed=0)
    return point, interval


def scaling_table(results: list[dict]) -> Table | None:
    lines = scaling_lines(results)
    if not lines:
        return None
    found = khop.khop_results(results)
    groups = _by_group(found)
    pooled = khop.pooled_errors(found)
    hops = khop.hop_counts(found)
    rows = []
    for name, members in lines.items():
        for g in members:
            serial = _serial(groups[g])
            rows.append([name, group_name(g), groups[g][0]["effective_depth"], len(groups[g])]
                        + [pooled[g][h].cell() if h in pooled.get(g, {}) else "" for h in hops]
                        + [f"{serial[0]:.3f} [{serial[1][0]:.3f}, {serial[1][1]:.3f}]" if serial else ""])
    return Table("scaling", "Virtual depth as a scaling dimension: k-hop error against effective depth",
                 ["line", "variant", "effective depth", "seeds"] + [f"k={h}" for h in hops] + [f"mean k>={MIN_SERIAL_HOPS}"],
                 rows,
                 ["Per-position error [95% interval from resampling seeds, then test sequences]; a line is native "
                  "depth (untied layers) or cycle xk of one model (x0: its base), per loop recipe.",
                  f"mean k>={MIN_SERIAL_HOPS}: each sequence's error averaged over the hop counts that need serial depth.",
                  "paper, Table 1 (iGSM op15, cycle x0..x5 on 4 layers): 46.3, 54.9, 62.1, 61.6, 65.7, 70.7% accuracy."])


def scaling_figure(results: list[dict], path: Path) -> bool:
    from vld.report.figures import legend_outside, pyplot, save

    lines = scaling_lines(results)
    if not lines:
        return False
    groups = _by_group(khop.khop_results(results))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for name, members in lines.items():
        points = [(groups[g][0]["effective_depth"], _serial(groups[g])) for g in members]
        points = [(d, s) for d, s in points if s]
        if not points:
            continue
        x = np.array([d for d, _ in points])
        y = np.array([s[0] for _, s in points])
        low = y - np.array([s[1][0] for _, s in points])
        high = np.array([s[1][1] for _, s in points]) - y
        ax.errorbar(x, y, yerr=[low, high], marker="o", markersize=4, capsize=2, label=name,
                    linestyle="--" if "native" in name else "-")
    ax.set_xlabel("effective depth")
    ax.set_ylabel(f"per-position error, mean over k >= {MIN_SERIAL_HOPS}")
    ax.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    legend_outside(ax)
    ax.set_title("k-hop error against effective depth (95% intervals; seeds pooled)", fontsize=10)
    save(fig, path)
    return True


# ---------------------------------------------------------------- learning curves

def solved_step(curve: dict, hops: str) -> int | None:
    """The first curve step at which hop count `hops` has error below SOLVED (None: never)."""
    for step, error in zip(curve["steps"], curve.get(f"error_hop{hops}", [])):
        if error < SOLVED:
            return int(step)
    return None


def _curved(results: list[dict], family: str | None = None) -> dict[VariantGroup, list[dict]]:
    """Results with a learning curve by variant group: k-hop's (None) or `family`'s."""
    return _by_group([r for r in results if (r.get("learning_curve") or {}).get("steps")
                      and (r["family"] == family if family else r["task"] == "khop")])


def curve_families(results: list[dict]) -> list[str]:
    """The families besides k-hop whose results have learning curves (one table and figure each)."""
    return sorted({r["family"] for r in results if (r.get("learning_curve") or {}).get("steps") and r["task"] != "khop"})


def curve_metrics(members: list[dict]) -> list[str]:
    """The metric names of the seeds' learning curves, in their first order."""
    names: dict[str, None] = {}
    for r in members:
        names.update((name, None) for name in r["learning_curve"] if name != "steps")
    return list(names)


def lower_is_better(metric: str) -> bool:
    return metric.startswith("error")  # error_hop<k>; accuracies and absorbed bits rise


def best_step(curve: dict, metric: str) -> int | None:
    """The first curve step at which `metric` has its best value (None: not in the curve)."""
    values = curve.get(metric)
    if not values:
        return None
    best = min(values) if lower_is_better(metric) else max(values)
    return int(curve["steps"][values.index(best)])


def _median_range(values: list[float], digits: int) -> str:
    low, high, mid = min(values), max(values), float(np.median(values))
    return f"{mid:.{digits}f}" + (f" [{low:.{digits}f}, {high:.{digits}f}]" if high > low else "")


def curves_table(results: list[dict]) -> Table | None:
    """k-hop: the step at which each hop count is solved, per variant."""
    groups = _curved(results)
    if not groups:
        return None
    hops = sorted({name[len("error_hop"):] for members in groups.values() for r in members
                   for name in r["learning_curve"] if name.startswith("error_hop")}, key=int)
    rows = []
    for g in sorted(groups, key=group_sort):
        members = groups[g]
        cells = []
        for h in hops:
            steps = [solved_step(r["learning_curve"], h) for r in members]
            done = sorted(s for s in steps if s is not None)
            spread = f" [{done[0]}, {done[-1]}]" if done and done[0] != done[-1] else ""
            cell = f"{int(np.median(done))}{spread}" if done else "never"
            cells.append(f"{cell} ({len(done)}/{len(members)})")
        last = members[0]["learning_curve"]["steps"][-1]
        rows.append([group_name(g, True), len(members), last] + cells)
    return Table("learning_curves", f"Learning curves: the step at which each hop count is solved (error < {SOLVED})",
                 ["variant", "seeds", "steps"] + [f"k={h}" for h in hops], rows,
                 [f"Median step over the seeds that solved it [their range] (seeds that did / seeds); 'never': no "
                  f"seed reached error < {SOLVED} on the held-out set (train.curve_sequences sequences per hop count, "
                  "scored every train.curve_every steps)."])


def family_curves_table(results: list[dict], family: str) -> Table | None:
    """A family's learning curves without a threshold that says "solved": per variant and metric,
    the final value and the step of the best value (median [range] over seeds)."""
    groups = _curved(results, family)
    if not groups:
        return None
    metrics = curve_metrics([r for members in groups.values() for r in members])
    rows = []
    for g in sorted(groups, key=group_sort):
        members = groups[g]
        cells = []
        for metric in metrics:
            have = [r["learning_curve"] for r in members if r["learning_curve"].get(metric)]
            cells += [_median_range([c[metric][-1] for c in have], 3) if have else "",
                      _median_range([best_step(c, metric) for c in have], 0) if have else ""]
        rows.append([group_name(g, True), len(members), members[0]["learning_curve"]["steps"][-1]] + cells)
    columns = [f"{metric} {what}" for metric in metrics for what in ("final", "best at step")]
    return Table(f"learning_curves_{family}", f"Learning curves ({family}): final value and the step of the best value",
                 ["variant", "seeds", "steps"] + columns, rows,
                 ["Median over seeds [range]; 'best at step': the first curve step with the best value (highest; "
                  "lowest for an error). Scored every train.curve_every steps on a fixed held-out set: iGSM "
                  "answer_accuracy_<test> on the first train.curve_sequences problems of each test set; knowledge "
                  "absorbed bits per token (entropy and cross-entropy measures) or Part 3.3 bits per person on an "
                  "evenly spread subset of at most train.curve_sequences evaluation windows or people (docs/recipes.md)."])


def family_curves_figure(results: list[dict], path: Path, family: str) -> bool:
    """One panel per metric, one line per variant: the median over seeds per step, the band
    their range."""
    from vld.report.figures import legend_outside, pyplot, save

    groups = _curved(results, family)
    if not groups:
        return False
    metrics = curve_metrics([r for members in groups.values() for r in members])
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics) + 2.5, 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, g in enumerate(sorted(groups, key=group_sort)):
            curves = [r["learning_curve"] for r in groups[g] if r["learning_curve"].get(metric)]
            steps = curves[0]["steps"] if curves else []
            curves = [c for c in curves if c["steps"] == steps]  # seeds of one variant share their steps
            if not curves:
                continue
            values = np.array([c[metric] for c in curves])
            color = f"C{i % 10}"  # a variant's color in every panel
            ax.plot(steps, np.median(values, axis=0), color=color, linewidth=1.2,
                    label=f"{group_name(g, True)} ({len(curves)} seeds)" if ax is axes[0][-1] else None)
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=color, alpha=0.15)
        ax.set_title(metric, fontsize=8)
        ax.set_xlabel("step", fontsize=8)
    legend_outside(axes[0][-1])
    fig.suptitle(f"Learning curves ({family}): median over seeds per step, band = range", fontsize=10)
    save(fig, path)
    return True


def curves_figure(results: list[dict], path: Path) -> bool:
    """k-hop: one panel per variant, one line per seed and hop count."""
    from vld.report.figures import pyplot, save

    groups = _curved(results)
    if not groups:
        return False
    plt = pyplot()
    ordered = sorted(groups, key=group_sort)
    cols = min(3, len(ordered))
    rows = -(-len(ordered) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharey=True)
    colors = plt.get_cmap("viridis")
    for ax, g in zip(axes.flat, ordered):
        for r in groups[g]:
            curve = r["learning_curve"]
            names = sorted((n for n in curve if n.startswith("error_hop")), key=lambda n: int(n[len("error_hop"):]))
            for i, name in enumerate(names):
                ax.plot(curve["steps"], curve[name], color=colors(i / max(1, len(names) - 1)), linewidth=0.8, alpha=0.7,
                        label=f"k={name[len('error_hop'):]}" if r is groups[g][0] else None)
        ax.axhline(SOLVED, color="gray", linestyle=":", linewidth=1)
        ax.set_title(group_name(g, True), fontsize=8)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(ordered):]:
        ax.axis("off")
    axes[0][0].set_ylabel("held-out error")
    axes[0][0].legend(fontsize=6)
    fig.suptitle("Learning curves: error per hop count (one line per seed)", fontsize=10)
    save(fig, path)
    return True


# ---------------------------------------------------------------- test-time depth

def _looped(results: list[dict], family: str) -> dict[VariantGroup, list[dict]]:
    return _by_group([r for r in results if r["family"] == family and (r.get("test_time_depth") or {}).get("repeats")])


def test_time_families(results: list[dict]) -> list[str]:
    return sorted({r["family"] for r in results if (r.get("test_time_depth") or {}).get("repeats")})


def test_time_table(results: list[dict], family: str) -> Table | None:
    from vld.depth_rules import MARGIN, serial_error

    groups = _looped(results, family)
    if not groups:
        return None
    hops = sorted({h for members in groups.values() for r in members for found in r["test_time_depth"]["repeats"].values()
                   for h in found["hops"]}, key=int)
    rows = []
    for g in sorted(groups, key=group_sort):
        members = groups[g]
        trained = members[0]["test_time_depth"]["trained_repeats"]
        verdicts = [r["test_time_depth"]["verdict"] for r in members]
        deltas = [r["test_time_depth"]["delta"] for r in members if r["test_time_depth"].get("delta") is not None]
        summary = ", ".join(f"{v} {verdicts.count(v)}" for v in ("help", "hold", "hurt", "untested") if v in verdicts)
        if deltas:
            summary += f"; delta median {np.median(deltas):+.3f}"
        counts = sorted({int(c) for r in members for c in r["test_time_depth"]["repeats"]})
        for repeats in counts:
            cells = [r["test_time_depth"]["repeats"].get(str(repeats)) for r in members]
            cells = [c for c in cells if c]
            errors = [np.mean([c["hops"][h]["error"] for c in cells if h in c["hops"]]) for h in hops]
            rows.append([group_name(g, True), f"{repeats}" + (" (trained)" if repeats == trained else ""),
                         cells[0]["effective_depth"], len(cells)]
                        + [f"{e:.3f}" for e in errors]
                        + [f"{np.mean([serial_error(c['hops']) for c in cells]):.3f}", summary if repeats == counts[0] else ""])
    return Table(f"test_time_depth_{family}", f"Test-time depth ({family}): the trained model with its core run other numbers of times",
                 ["variant", "repeats", "effective depth", "seeds"] + [f"k={h}" for h in hops]
                 + [f"mean k>={MIN_SERIAL_HOPS}", "extra loops (seeds)"], rows,
                 ["Error per hop count, mean over seeds, with the looped core run `repeats` times exactly as if the "
                  "schedule said so (cycle xk: 1 .. 2(k+1)+1 repeats; a prelude / core / coda model: 1 .. 4x its loops).",
                  f"Per seed: delta = the mean over the counts above the trained one of the error at k >= {MIN_SERIAL_HOPS}, "
                  f"minus the error at the trained count; help when delta < -{MARGIN}, hurt when > {MARGIN}, else hold."])


def test_time_figure(results: list[dict], path: Path, family: str) -> bool:
    from vld.depth_rules import serial_error
    from vld.report.figures import legend_outside, pyplot, save

    groups = _looped(results, family)
    if not groups:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for g in sorted(groups, key=group_sort):
        members = groups[g]
        counts = sorted({int(c) for r in members for c in r["test_time_depth"]["repeats"]})
        per_seed = [[serial_error(r["test_time_depth"]["repeats"][str(c)]["hops"]) for c in counts] for r in members]
        values = np.array(per_seed)
        line, = ax.plot(counts, values.mean(axis=0), marker="o", markersize=3, label=group_name(g, True))
        ax.fill_between(counts, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.15)
        trained = members[0]["test_time_depth"]["trained_repeats"]
        ax.plot([trained], [values.mean(axis=0)[counts.index(trained)]], marker="*", markersize=12, color=line.get_color())
    ax.set_xlabel("repeats of the looped core at test time (star: as trained)")
    ax.set_ylabel(f"error, mean over k >= {MIN_SERIAL_HOPS}")
    ax.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    legend_outside(ax)
    ax.set_title(f"Test-time depth ({family}): mean over seeds, band = range", fontsize=10)
    save(fig, path)
    return True


__all__ = ["SOLVED", "best_step", "curve_families", "curve_metrics", "curves_figure", "curves_table",
           "family_curves_figure", "family_curves_table", "lower_is_better", "scaling_figure", "scaling_lines",
           "scaling_table", "solved_step", "test_time_families", "test_time_figure", "test_time_table"]
