"""Report pieces for depth use: ablation deltas, early exit, the regime line, the depth law.

Inputs are per-variant entries: either a variant result holding the output of
`vld.eval.depth_use.depth_use` (schema vld.depth_use/1) under "depth_use" (with "variant" and "kind" or "family"), or
that output itself with "variant" (and optionally "family") added. Table builders return a
`vld.report.tables.Table` or None when there is nothing to show; figure writers return the
PNG's path or None (nothing written). Rules: docs/depth_use.md.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping

from vld import depth_rules as rule
from vld.report.figures import (Style, legend_outside, not_learned_note, note, pyplot, save, usual_steps,
                                variant_label, variant_style)
from vld.report.tables import (Table, VariantGroup, group_name, recipe_label, seed_order, seeded_names,
                               variant_group)
from vld.result_schema import DEPTH_USE_SCHEMA

KIND_ORDER = ("skip", "swap", "revisit", "revisit_all")
SERIES_COLORS = ("black", "tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple",
                 "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def entries(results: list[dict]) -> list[dict]:
    """[{"variant", "family", "use", "seed", "group", "label"}] for every result that holds a
    depth-use record ("group": its VariantGroup, None for a bare depth-use record; "label": the
    variant's name, with the seed where the results hold several seeds of it, so that a table's
    rows of one seed are told from another's)."""
    out = []
    for r in results or []:
        use = r.get("depth_use") if isinstance(r.get("depth_use"), Mapping) else (
            r if r.get("schema") == DEPTH_USE_SCHEMA else None)
        if not use or not use.get("metrics"):
            continue
        out.append({"variant": str(r.get("variant", use.get("variant", "?"))),
                    "family": str(r.get("family") or r.get("kind") or use.get("family") or ""),
                    "use": use, "seed": str(r.get("seed")),
                    "group": variant_group(r) if {"family", "pattern", "n_layer"} <= set(r) else None})
    for e, label in zip(out, seeded_names(out)):
        e["label"] = label
    return sorted(out, key=lambda e: (e["family"], e["variant"], seed_order(e["seed"]), e["seed"]))


def _metrics(chosen: list[dict], metric: str | None) -> list[str]:
    if metric is not None:
        return [metric] if any(metric in e["use"]["metrics"] for e in chosen) else []
    return sorted({m for e in chosen for m in e["use"]["metrics"]})


def _cell(summary: Mapping | None, digits: int = 3) -> str:
    """'mean [low, high]' (or the mean alone without an interval; '' when undefined)."""
    if not summary or summary.get("mean") is None:
        return ""
    text = f"{summary['mean']:+.{digits}f}" if summary.get("signed") else f"{summary['mean']:.{digits}f}"
    if summary.get("low") is not None and summary.get("high") is not None:
        text += f" [{summary['low']:.{digits}f}, {summary['high']:.{digits}f}]"
    return text


def _delta(summary: Mapping | None) -> str:
    return _cell(dict(summary, signed=True) if summary else None)


def _num(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------- tables

def depth_use_table(results: list[dict], metric: str | None = None) -> Table | None:
    """Every ablation of every variant: change of each metric vs the intact model."""
    chosen = entries(results)
    metrics = _metrics(chosen, metric)
    if not chosen or not metrics:
        return None
    header = ["variant", "family", "ablation", "virtual layers", "base layers"]
    header += [f"intact-relative change: {m}" for m in metrics]
    rows = []
    for e in chosen:
        use = e["use"]
        rows.append([e["label"], e["family"], "intact (value)", "", ""]
                    + [_cell(use["intact"].get(m)) for m in metrics])
        for a in sorted(use["ablations"], key=lambda a: (KIND_ORDER.index(a["kind"]),
                                                         a["virtual_layers"])):
            rows.append([e["label"], e["family"], a["label"],
                         " ".join(str(v) for v in a["virtual_layers"]),
                         " ".join(str(b) for b in a["base_layers"])]
                        + [_delta(a["delta"].get(m)) for m in metrics])
    first = chosen[0]["use"]["interval"]
    notes = [
        "Change = ablated - intact per test sequence, mean [95% interval: "
        f"{first['method']}, {first['resamples']} resamples, seed {first['seed']}]. "
        "Higher metric = worse, so a positive change is a cost.",
        "skip i: virtual layer i passes its input through; swap i-j: virtual layers i and j "
        "run in the other order; revisit i <- f: the later visit i of a tied base layer adds "
        "the update its first visit f made instead of running again.",
        "Sequences: " + ", ".join(f"{e['label']} {e['use']['sequences']}" for e in chosen) + ".",
    ]
    return Table("depth_use", "Depth use: causal ablations per virtual layer", header, rows, notes)


def early_exit_table(results: list[dict], metric: str | None = None) -> Table | None:
    """The metric when the final norm and head read the residual after each virtual layer."""
    chosen = [e for e in entries(results) if e["use"].get("early_exit")]
    metrics = _metrics(chosen, metric)
    if not chosen or not metrics:
        return None
    header = ["variant", "family", "layers run", "last virtual layer", "base layer", "visit"]
    header += metrics
    rows = []
    for e in chosen:
        for x in e["use"]["early_exit"]:
            rows.append([e["label"], e["family"], x["layers_run"],
                         "embeddings" if x["virtual_layer"] is None else x["virtual_layer"],
                         "" if x["base_layer"] is None else x["base_layer"],
                         "" if x["visit"] is None else x["visit"]]
                        + [_cell(x["value"].get(m)) for m in metrics])
    notes = ["Final norm + head read after `layers run` virtual layers (0 = the embeddings); the "
             "last row of a variant is the model's own output. Mean [95% bootstrap interval "
             "over test sequences]."]
    return Table("early_exit", "Early exit through the logit lens", header, rows, notes)


def regime_table(results: list[dict]) -> Table | None:
    """One row per variant and metric: the regime the ablations point to, and why."""
    chosen = entries(results)
    rows = []
    for e in chosen:
        for m in e["use"]["metrics"]:
            r = (e["use"].get("regime") or {}).get(m)
            if not r:
                continue
            rows.append([e["label"], e["family"], m, r["verdict"], _num(r["gain"]),
                         _num(r["skip_max_share"], 2), _num(r["skip_spread_share"], 2),
                         _num(r["skip_median"]), _num(r["swap_median"]), r["why"]])
    if not rows:
        return None
    header = ["variant", "family", "metric", "regime", "gain over chance", "largest skip / gain",
              "skip spread / gain", "median skip", "median swap", "why"]
    notes = [f"compositional: some skip's interval low > {rule.COMPOSITIONAL_SKIP_SHARE:g} x gain "
             "over chance and the median swap costs more than the median skip; ensemble: every "
             f"skip's interval high < {rule.ENSEMBLE_SKIP_SHARE:g} x gain and skip costs differ by "
             f"<= {rule.ENSEMBLE_EVEN_SHARE:g} x gain; otherwise not shown (docs/depth_use.md). Each distinct "
             "operation counts once: a swap of two visits of one layer (zero by construction) is left out, "
             "skips that run the same order count once."]
    return Table("depth_regime", "Depth use: regime per variant", header, rows, notes)


def regime_lines(results: list[dict], metric: str | None = None) -> list[str]:
    """One line per family: the verdict of each of its variants (computed by the rule)."""
    by_family: dict[str, list[str]] = {}
    for e in entries(results):
        metrics = [metric] if metric else e["use"]["metrics"]
        for m in metrics:
            r = (e["use"].get("regime") or {}).get(m)
            if r:
                by_family.setdefault(e["family"] or "-", []).append(f"{e['label']} ({m}): {r['verdict']}")
    return [f"{family}: " + "; ".join(parts) for family, parts in sorted(by_family.items())]


def _interval(fit: Mapping, key: str) -> str:
    interval = (fit.get("interval") or {}).get(key)
    return "" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def depth_law_table(laws: Mapping[str, dict]) -> Table | None:
    """The fitted law per family/metric ({label: vld.depth_rules.depth_law(...)})."""
    rows = []
    for label, law in (laws or {}).items():
        if not law:
            continue
        for curve in ("native", "tied"):
            fit = law.get(curve)
            if fit:
                rows.append([label, curve, f"{fit['a']:.3f}", _interval(fit, "a"),
                             f"{fit['L0']:.3f}", _interval(fit, "L0"), f"{fit['c']:.3f}",
                             fit["n"], fit["seeds"], fit["interval_method"],
                             "yes" if fit["a_at_bound"] else ""])
        share = law.get("tied_share") or {}
        interval = share.get("interval")
        rows.append([label, "tied / native gain", _num(share.get("share")),
                     "" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]",
                     "", "", "", "", "", "depths " + " ".join(map(str, share.get("compared_depths", []))),
                     share.get("verdict", "")])
    if not rows:
        return None
    header = ["family / metric", "curve", "a", "a 95%", "L0", "L0 95%", "c", "points", "seeds",
              "interval", "a at grid bound / verdict"]
    notes = ["Fit L = c * depth^-a + L0 by least squares (c, L0 linear for each a; a searched "
             "on a grid, then refined). Native: models without reused layers; tied: VLD models "
             "and their base models. Intervals: bootstrap over seeds (>= 3 seeds), else the "
             "fit's covariance (normal; > 3 points), else none.",
             f"Tied / native gain: share S = sum of (base - tied) / sum of (base - native) "
             f"losses at depths both reach; {rule.AS_MUCH} if S >= {rule.SHARE_AS_MUCH:g}, "
             f"{rule.NOTHING} if S <= {rule.SHARE_NOTHING:g}, {rule.LESS} in between, judged on "
             "the interval's ends (docs/depth_use.md).",
             "Reference: Liu et al. 2026 (arXiv 2602.05970) fit a_l about 1 for depth in large "
             "language models."]
    return Table("depth_law", "Depth law: loss vs effective depth", header, rows, notes)


# ---------------------------------------------------------------- figures

def _styled(chosen: list[dict]) -> list[tuple[dict, Style, str, bool]]:
    """(entry, style, name, first seed of its variant) per entry: a variant's style and legend name
    (vld.report.figures); a bare depth-use record without its variant result gets a colour by
    its place and its variant's name."""
    groups = {e["group"] for e in chosen if e["group"] is not None}
    usual = usual_steps(groups)
    out, seen = [], set()
    for index, e in enumerate(chosen):
        if e["group"] is not None:
            style, name = variant_style(e["group"], usual), variant_label(e["group"], groups)
        else:
            style, name = Style(SERIES_COLORS[index % len(SERIES_COLORS)], "o"), e["variant"]
        out.append((e, style, name, name not in seen))
        seen.add(name)
    return out


def _pick_metric(chosen: list[dict], metric: str | None) -> str | None:
    metrics = _metrics(chosen, metric)
    if not metrics:
        return None
    return "loss" if metric is None and "loss" in metrics else metrics[0]


def _errorbar(ax, xs, cells, style, label=None, linestyle="none") -> None:
    points = [(x, c) for x, c in zip(xs, cells) if c and c.get("mean") is not None]
    if not points:
        return
    means = [c["mean"] for _, c in points]
    lows = [c["mean"] - c["low"] if c.get("low") is not None else 0.0 for _, c in points]
    highs = [c["high"] - c["mean"] if c.get("high") is not None else 0.0 for _, c in points]
    ax.errorbar([x for x, _ in points], means, yerr=[lows, highs], capsize=3, markersize=4, label=label,
                **dict(style.line(), linestyle=linestyle))


def _family_note(results: list[dict], chosen: list[dict]) -> str | None:
    families = {e["family"] for e in chosen}
    variants = [r for r in results or [] if r.get("family") in families and "pattern" in r]
    return next((text for f in sorted(families) if (text := not_learned_note(variants, f))), None)


def depth_use_figure(results: list[dict], path, metric: str | None = None,
                     title: str | None = None) -> Path | None:
    """Four panels per metric: skip, swap and revisit deltas per virtual layer (95%
    intervals) and the early-exit curve, one series per seed, each variant in its style. Only
    distinct operations are drawn (vld.depth_rules.distinct_ablations): a swap of two visits of
    one layer changes nothing by construction and is left out, as is a repeated skip."""
    chosen = entries(results)
    metric = _pick_metric(chosen, metric)
    if metric is None:
        return None
    chosen = [e for e in chosen if metric in e["use"]["metrics"]]
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    width = 0.6 / max(len(chosen), 1)
    depth = max(len(e["use"].get("schedule") or []) or 1 + max(
        (v for a in e["use"]["ablations"] for v in a["virtual_layers"]), default=0) for e in chosen)
    for index, (e, style, name, first) in enumerate(_styled(chosen)):
        use = e["use"]
        shift = (index - (len(chosen) - 1) / 2) * width
        ablations = rule.distinct_ablations(use["schedule"], use["ablations"]) if use.get("schedule") else use["ablations"]
        for ax, kind in zip(axes[:3], ("skip", "swap", "revisit")):
            chosen_ablations = [a for a in ablations if a["kind"] == kind]
            xs = [a["virtual_layers"][0] + (0.5 if kind == "swap" else 0.0) + shift
                  for a in chosen_ablations]
            _errorbar(ax, xs, [a["delta"].get(metric) for a in chosen_ablations], style)
        exits = use.get("early_exit") or []
        _errorbar(axes[3], [x["layers_run"] for x in exits], [x["value"].get(metric) for x in exits],
                  style, label=name if first else None, linestyle="-")
    titles = ("skip virtual layer i", "swap i, i+1 (plotted at i+0.5)",
              "revisit i replaced by first visit's update", "early exit")
    warning = _family_note(results, chosen)
    for ax, text in zip(axes, titles):
        ax.set_title(text, fontsize=9)
        ax.set_xlabel("virtual layers run (0 = embeddings)" if ax is axes[3] else "virtual layer i")
        ax.set_ylabel(f"{metric} after n layers" if ax is axes[3] else f"change in {metric} (ablated - intact)")
        if ax is not axes[3]:
            ax.axhline(0.0, color="gray", linewidth=0.8, linestyle=":")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax is not axes[3]:
            ax.set_xlim(-0.5, depth - 0.5)
        if not ax.containers:
            ax.text(0.5, 0.5, {axes[1]: "none (no swap changes the order)",
                               axes[2]: "none (no revisited layer)"}.get(ax, "none"),
                    ha="center", va="center", transform=ax.transAxes, color="gray")
        if warning:
            note(ax, warning)
    legend_outside(axes[3])
    fig.suptitle(title or "Depth use: ablations and early exit", y=1.02)
    fig.text(0.5, -0.04, "95% bootstrap intervals over test sequences; one series per seed; "
             "swaps of two visits of one layer (no change by construction) and repeated skips not drawn",
             ha="center", fontsize=8, color="dimgray")
    fig.tight_layout()
    return save(fig, path)


EXIT_COLUMNS = 4
MAX_FIGURE_INCHES = 20.0


def early_exit_figure(results: list[dict], path, metrics: list[str] | None = None,
                      title: str | None = None) -> Path | None:
    """One panel per variant (its seeds as lines of one style): each metric (e.g. the error per
    hop count) read after n virtual layers, to show at which depth each gets solved."""
    chosen = [e for e in entries(results) if e["use"].get("early_exit")]
    if not chosen:
        return None
    names = list(metrics) if metrics else sorted({m for e in chosen for m in e["use"]["metrics"]})
    chosen = [e for e in chosen if any(m in e["use"]["metrics"] for m in names)]
    if not chosen:
        return None
    panels: dict[str, list[dict]] = {}
    for e, _, name, _ in _styled(chosen):
        panels.setdefault(name, []).append(e)
    plt = pyplot()
    columns = min(EXIT_COLUMNS, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False, sharey=True,
                             figsize=(min(4.4 * columns, MAX_FIGURE_INCHES), min(3.6 * rows, MAX_FIGURE_INCHES)))
    warning = _family_note(results, chosen)
    for ax, (name, members) in zip(axes.flat, panels.items()):
        for seed_index, e in enumerate(members):
            exits = e["use"]["early_exit"]
            for index, m in enumerate(names):
                if m in e["use"]["metrics"]:
                    style = Style(SERIES_COLORS[index % len(SERIES_COLORS)], "o",
                                  linestyle=("-", "--", "-.", ":")[seed_index % 4])
                    _errorbar(ax, [x["layers_run"] for x in exits], [x["value"].get(m) for x in exits], style,
                              label=m if seed_index == 0 else None, linestyle=style.linestyle)
        ax.set_title(f"{name} ({len(members)} seed{'s' if len(members) > 1 else ''})", fontsize=9)
        ax.set_xlabel("virtual layers run (0 = embeddings)")
        ax.set_ylabel("metric (lower is better)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if warning:
            note(ax, warning)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    legend_outside(axes[0][-1])
    fig.suptitle(title or "Early exit through the logit lens", y=1.02)
    fig.text(0.5, -0.02, "95% bootstrap intervals over test sequences; one line style per seed",
             ha="center", fontsize=8, color="dimgray")
    fig.tight_layout()
    return save(fig, path)


def _law_cells(points: list[dict]) -> dict[tuple, list[float]]:
    """The losses of each model of the law over its seeds, keyed (tied, depth, pattern, base
    depth) as vld.depth_rules.tied_share tells models apart (a native model by its depth)."""
    cells: dict[tuple, list[float]] = {}
    for p in points:
        key = ((True, int(p["depth"]), str(p.get("pattern") or ""), int(p["base_depth"])) if p["tied"]
               else (False, int(p["depth"]), "", 0))
        cells.setdefault(key, []).append(float(p["loss"]))
    return cells


def depth_law_figure(law: Mapping | None, path, metric_label: str = "loss",
                     title: str | None = None, warning: str | None = None) -> Path | None:
    """Each model of the law (mean over seeds, 95% interval over seeds; one seed: the point)
    in its variant's style, tied models told apart by pattern; the fitted curves
    L = c * depth^-a + L0, native dashed, tied solid; the tied / native gain with its interval."""
    if not law or not law.get("points"):
        return None
    import numpy as np

    from vld.stats import bootstrap_ratio_interval

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    points = law["points"]
    cells = _law_cells(points)
    widths = {c: 0.0 for c in cells}
    ranked = sorted(cells)
    for c in ranked:  # models of one depth side by side
        same = [d for d in ranked if d[1] == c[1]]
        widths[c] = 0.12 * (same.index(c) - (len(same) - 1) / 2)
    ys = []
    for c in ranked:
        tied, depth, pattern, base = c
        values = cells[c]
        mean = float(np.mean(values))
        low, high = bootstrap_ratio_interval(values, resamples=1000, seed=depth)
        group = (VariantGroup("", pattern or "base", depth // base - 1, None, base, None) if tied
                 else VariantGroup("", "base", 0, None, depth, None))
        style = variant_style(group)
        seeds = f"{len(values)} seeds" if len(values) > 1 else "1 seed, no interval"
        ax.errorbar([depth + widths[c]], [mean], yerr=[[mean - low], [high - mean]], capsize=3, markersize=6,
                    label=f"{group_name(group)} ({seeds})", **dict(style.line(), linestyle="none"))
        ys += [low, high]
    depths = [p["depth"] for p in points]
    grid = np.linspace(min(depths), max(depths), 200)
    for name, colour, linestyle in (("native", "black", "--"), ("tied", "tab:red", "-")):
        fit = law.get(name)
        if fit:
            interval = (fit.get("interval") or {}).get("a")
            text = f"a = {fit['a']:.2f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else " (no interval)")
            ax.plot(grid, fit["c"] * grid ** -fit["a"] + fit["L0"], color=colour, linestyle=linestyle,
                    linewidth=1, label=f"fit {name}: {text}, L0 = {fit['L0']:.2f}")
    # A range of at least 10% of the level, so intervals that overlap look like they do.
    middle, half = (max(ys) + min(ys)) / 2, (max(ys) - min(ys)) / 2
    half = max(half * 1.15, 0.05 * abs(middle), 1e-3)
    ax.set_ylim(middle - half, middle + half)
    share = law.get("tied_share") or {}
    gain = "tied / native gain: "
    if share.get("share") is not None:
        interval = share.get("interval")
        gain += f"{share['share']:.2f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval
                                          else " (no interval: one seed per model)") + f" -> {share['verdict']}"
    else:
        gain += f"not computed ({share.get('why') or 'no tied depth reached natively'})"
    ax.set_xlabel(f"effective depth\n{gain}")
    ax.set_ylabel(metric_label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    legend_outside(ax)
    if warning:
        note(ax, warning)
    ax.set_title(title or f"Depth law: {metric_label} = c * depth^-a + L0", fontsize=10)
    return save(fig, path)


# ---------------------------------------------------------------- the profile's depth laws

def depth_law_points(results: list[dict], value_of: Callable[[dict], float | None]) -> list[dict]:
    """depth_law points from variant results (schema vld.variant/1) of one width and family.

    value_of(result) gives the metric (lower is better) or None to leave a result out; a
    result is tied unless `native_depth`, and a tied one's base depth is its `n_layer`."""
    points = []
    for r in results:
        value = value_of(r)
        if value is None or not math.isfinite(float(value)):
            continue
        tied = not r.get("native_depth")
        point = {"depth": int(r["effective_depth"]), "loss": float(value), "seed": r.get("seed"),
                 "tied": tied, "variant": r.get("variant"), "pattern": r.get("pattern")}
        if tied:
            point["base_depth"] = int(r["n_layer"])
        points.append(point)
    return points


def _law_results(results: list[dict], family: str) -> list[dict]:
    """A family's results at its most common width and training length (a compute-matched
    baseline trained longer is not a point of the depth law)."""
    own = [r for r in results if r["family"] == family and r.get("layers") is None]
    if not own:
        return []
    common = lambda key: max(sorted({str(r.get(key)) for r in own}), key=lambda v: sum(str(r.get(key)) == v for r in own))
    width, steps = common("d_model"), common("train_steps")
    return [r for r in own if str(r.get("d_model")) == width and str(r.get("train_steps")) == steps]


def _khop_error(hops_wanted):
    def value(r):
        hops = (r.get("khop") or {}).get("hops") or {}
        errors = [c["error"] for h, c in hops.items() if hops_wanted(int(h))]
        return sum(errors) / len(errors) if errors else None
    return value


def _knowledge_loss(r):
    intact = ((r.get("depth_use") or {}).get("intact") or {}).get("loss") or {}
    return intact.get("mean")


def _igsm_error(r):
    cells = list((r.get("igsm") or {}).values())
    n = sum(c["n"] for c in cells)
    return 1 - sum(c["answer_correct"] for c in cells) / n if n else None


def profile_depth_laws(results: list[dict]) -> dict[str, dict]:
    """{label: depth_law} per family (k-hop: the error over hop counts >= 2 and at each of
    them; knowledge: the loss; iGSM reasoning: 1 - answer accuracy), and per loop recipe
    ("<label>, recipe <recipe>": the tied models of that recipe against the plain natives)."""
    metrics = []
    khop_hops = sorted({int(h) for r in results for h in ((r.get("khop") or {}).get("hops") or {})})
    if khop_hops:
        metrics.append(("khop", "khop: error, k >= 2", _khop_error(lambda h: h >= 2)))
        metrics += [("khop", f"khop: error, k = {h}", _khop_error(lambda x, h=h: x == h)) for h in khop_hops if h >= 2]
    metrics += [("knowledge", "knowledge: loss (nats)", _knowledge_loss), ("reasoning", "reasoning: 1 - accuracy", _igsm_error)]
    laws = {}
    for family, label, value in metrics:
        own = _law_results(results, family)
        # One law per loop recipe: the native models (trained without one) against the tied
        # models of that recipe; a recipe's models never enter another recipe's fit.
        recipes = sorted({recipe_label(r.get("recipe")) for r in own} - {None})
        for recipe in [None] + recipes:
            members = [r for r in own if recipe_label(r.get("recipe")) == recipe
                       or (recipe is not None and r.get("native_depth") and not r.get("recipe"))]
            points = depth_law_points(members, value)
            if recipe is not None and not any(p["tied"] for p in points):
                continue
            if len({p["depth"] for p in points if not p["tied"]}) >= 2 or any(p["tied"] for p in points):
                laws[label + (f", recipe {recipe}" if recipe else "")] = rule.depth_law(points)
    return laws
