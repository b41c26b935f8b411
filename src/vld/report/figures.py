"""The report's figures (matplotlib, Agg backend, PNG). Each returns False when there is
nothing to plot, so the caller notes the skip instead of writing an empty figure.

Shared rules, so every figure reads the same way: one style per variant (`variant_style`), in
every figure; legends outside the axes (`legend_outside`), never over data; a line on a panel
whose models did not learn (`not_learned_note`); bounded image sizes (`save`)."""

from __future__ import annotations

import textwrap
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vld.report import khop, paper
from vld.report.claims import FLAT_MARGIN, LEARN_MARGIN, MIN_SERIAL_HOPS, RESAMPLES
from vld.report.tables import (KNOWLEDGE, MEASURE_LABELS, VariantGroup, best_variant, group_name, group_sort, knowledge_bits,
                               pattern_key, pooled_igsm, table1_results, test_names, variant_group)
from vld.stats import relative_change

PATTERN_COLORS = {"sequence": "tab:blue", "cycle": "tab:orange", "inverse_cycle": "tab:green"}
# Patterns a user defines get one of these by their name (a stable hash), never a base colour.
EXTRA_PATTERN_COLORS = ("tab:red", "gold", "tab:cyan", "tab:olive")
# Models without reuse: the colour says the depth, so a deeper native model never looks like the base.
NATIVE_COLORS = {1: "dimgray", 2: "black", 3: "saddlebrown", 4: "tab:purple", 6: "tab:brown", 8: "tab:gray",
                 12: "tab:pink", 16: "darkslateblue", 24: "darkgreen", 32: "maroon"}
K_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # by VLD factor k
LONGER_MARKERS = {2: "v", 3: "<", 4: ">"}  # base trained n x the usual steps (compute-matched)
MAX_PIXELS = 2400  # no report figure is larger than this on either side
DPI = 110


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    fillstyle: str = "full"
    linestyle: str = "-"

    def line(self) -> dict:
        """Keyword arguments for ax.plot / ax.errorbar."""
        return {"color": self.color, "marker": self.marker, "fillstyle": self.fillstyle,
                "linestyle": self.linestyle}


def usual_steps(groups) -> int | None:
    """The training steps most variants of a family use (a base trained longer is the exception)."""
    steps = Counter(g.train_steps for g in groups if g.train_steps)
    return max(sorted(steps), key=lambda s: steps[s]) if steps else None


def variant_label(group: VariantGroup, groups) -> str:
    """The variant's name in a legend: with its training steps when `groups` (the variants of
    the figure) differ in them, so a base trained longer is never named like the base."""
    return group_name(group, len({g.train_steps for g in groups}) > 1)


def variant_style(group: VariantGroup, usual: int | None = None) -> Style:
    """The one style of a variant in every figure: colour by pattern (a model without reuse: by
    its depth), marker by VLD factor; a base trained longer than `usual` steps gets a marker by
    how many times longer and a dashed line; an answer-only model an open marker and a dotted
    line, a layer-subset variant a half-filled marker."""
    answer_only = group.objective == "answer_only"
    if group.pattern == "base" and not group.k:
        color = NATIVE_COLORS.get(group.n_layer, "dimgray")
        if usual and group.train_steps and group.train_steps != usual:
            marker, linestyle = LONGER_MARKERS.get(round(group.train_steps / usual), "h"), "--"
        else:
            marker, linestyle = "o", "-"
    else:
        color = PATTERN_COLORS.get(group.pattern) or EXTRA_PATTERN_COLORS[
            zlib.crc32(group.pattern.encode()) % len(EXTRA_PATTERN_COLORS)]
        marker, linestyle = K_MARKERS[min(group.k, len(K_MARKERS) - 1)], "-"
    return Style(color, marker, "none" if answer_only else "left" if group.layers else "full",
                 ":" if answer_only else linestyle)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def legend_outside(ax, **kwargs) -> None:
    """The axes' legend to the right of the axes: it never hides data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def note(ax, text: str) -> None:
    """A warning line (e.g. the models did not learn) under the panel's x-axis label: call it
    after the label is set. Below the axes it never hides data."""
    below = 24 + 12 * (ax.get_xlabel().count("\n") + 1)  # points: tick labels, then the x label's lines
    ax.annotate(textwrap.fill(text, 64), xy=(0.5, 0.0), xycoords="axes fraction", xytext=(0, -below),
                textcoords="offset points", ha="center", va="top", fontsize=7, color="tab:red")


def not_learned_note(results: list[dict], family: str) -> str | None:
    """The line for panels of `family` when no model learned the task (iGSM: the report's
    learned verdict, vld.report.tables; k-hop: vld.report.khop.khop_learned), else None."""
    own = [r for r in results if r["family"] == family]
    if any(r.get("igsm") for r in own):
        best = best_variant(pooled_igsm(table1_results(own)))
        if best is not None and not best.learned:
            return (f"not learned: the best variant answers {100 * best.accuracy:.1f}% vs {100 * best.baseline:.1f}% "
                    "for the most common answer; differences are noise")
    if any((r.get("khop") or {}).get("hops") for r in own):
        if not khop_learned(own):
            return not_learned_text()
    return None


def save(fig, path: Path) -> Path:
    """Write the PNG (no software/date metadata: the same results give the same bytes)."""
    path = Path(path)
    # The tight box grows with anything drawn outside the axes; a lower resolution keeps the
    # image within MAX_PIXELS on each side whatever was drawn.
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    dpi = min(DPI, (MAX_PIXELS - 8) / (max(box.width, box.height) + 0.2))
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.1, metadata={"Software": None})
    pyplot().close(fig)
    return path


def _errorbar_point(ax, x, y, low, high, style: Style, **kwargs) -> None:
    ax.errorbar([x], [y], yerr=[[y - low], [high - y]], capsize=3, markersize=6, **dict(style.line(), linestyle="none"),
                **kwargs)


def figure3(results: list[dict], path: Path) -> bool:
    """Accuracy vs effective depth: one panel per test, a line per (pattern, base layers) with
    each variant's point in its style, native-depth models joined by a dashed line; a last
    panel with the paper's op15 numbers."""
    reasoning = table1_results(results)
    if not reasoning:
        return False
    plt = pyplot()
    pooled = pooled_igsm(reasoning)
    depth = {variant_group(r): r["effective_depth"] for r in reasoning}
    native = {variant_group(r) for r in reasoning if r["native_depth"]}
    usual = usual_steps(pooled)
    tests = test_names(reasoning)
    patterns = sorted({g.pattern for g in pooled if g.pattern != "base"}, key=pattern_key)
    warning = not_learned_note(reasoning, "reasoning")
    fig, axes = plt.subplots(1, len(tests) + 1, figsize=(4.2 * (len(tests) + 1), 4), squeeze=False)
    for ax, test in zip(axes[0], tests):
        cells = {g: pooled[g][test] for g in pooled if test in pooled[g]}
        ranked = sorted(cells, key=group_sort)
        # variants of one depth side by side, so their intervals do not hide each other
        shift = {g: 0.12 * (same.index(g) - (len(same) - 1) / 2)
                 for g in ranked for same in [[h for h in ranked if depth[h] == depth[g]]]}
        point = lambda g: (depth[g] + shift[g], 100 * cells[g].accuracy)
        for g in sorted(cells, key=lambda g: (depth[g], pattern_key(g.pattern), g.k)):
            low, high = cells[g].interval
            _errorbar_point(ax, *point(g), 100 * low, 100 * high, variant_style(g, usual), label=variant_label(g, pooled))
        native_line = sorted(point(g) for g in cells if g in native)
        if len(native_line) > 1:
            ax.plot(*zip(*native_line), color="black", linestyle="--", linewidth=1, label="native depth (untied)")
        for size_index, n_layer in enumerate(sorted({g.n_layer for g in cells})):
            for pattern in patterns:
                line = [g for g in cells if g.pattern == pattern and g.n_layer == n_layer and not g.layers]
                # each VLD curve starts at its base model (k = 0, same objective and training steps)
                start = [g for g in cells if g.n_layer == n_layer and g.pattern == "base" and not g.k
                         and line and (g.train_steps, g.objective) == (line[0].train_steps, line[0].objective)]
                if line:
                    xy = sorted(point(g) for g in line + start)
                    ax.plot(*zip(*xy), color=variant_style(line[0]).color, linewidth=1,
                            linestyle=("-", "-.", ":")[size_index % 3],
                            label=f"ours: {pattern.replace('_', ' ')} ({n_layer}L base)")
        rates = [c.baseline_rate for c in cells.values() if c.baseline_rate is not None]
        if rates:
            ax.axhline(100 * rates[0], color="gray", linestyle=":", label="most common answer")
        ax.set_title(f"ours: {test} (95% intervals)", fontsize=10)
        ax.set_xlabel("effective depth")
        ax.set_ylabel("answer accuracy %")
        if warning:
            note(ax, warning)
    ax = axes[0][-1]
    for size in (4, 8):
        for pattern in ("cycle", "sequence", "inverse_cycle"):
            points = sorted(((k + 1) * size, values[(size, "op15")])
                            for (p, k), values in paper.TABLE1.items()
                            if (p == pattern or p == "base") and (size, "op15") in values)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".",
                    color=PATTERN_COLORS[pattern], linestyle="-" if size == 4 else "-.",
                    label=f"paper: {pattern.replace('_', ' ')} ({size}L base)")
    native_points = sorted(paper.NATIVE_OP15.items())
    ax.plot([p[0] for p in native_points], [p[1] for p in native_points], color="black",
            marker=".", linestyle="--", label="paper: native depth")
    ax.set_title("paper: Table 1, op15", fontsize=10)
    ax.set_xlabel("effective depth")
    ax.set_ylabel("answer accuracy %")
    # One legend for the figure, right of the last panel: ours first, then the paper's lines.
    handles, labels = {}, []
    for a in axes[0]:
        for h, label in zip(*a.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    ax.legend([handles[label] for label in labels], labels, fontsize=7, loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.suptitle("Figure 3: accuracy vs effective depth", y=1.02)
    save(fig, path)
    return True


def knowledge_changes(knowledge: list[dict], measure: str) -> list[tuple[VariantGroup, float, tuple[float, float], int]]:
    """Every knowledge VLD variant against its base model (same size and training steps):
    (group, relative change, 95% interval over seeds, seeds of the smaller side), as claim 1
    computes it (vld.report.claims) for the cross-entropy measure."""
    groups: dict[VariantGroup, list[float]] = {}
    for r in knowledge:
        bits = knowledge_bits(r, measure)
        if bits is not None and r.get("layers") is None:
            groups.setdefault(variant_group(r), []).append(bits)
    out = []
    for g, bits in sorted(groups.items()):
        base = groups.get(g._replace(pattern="base", k=0))
        if g.k and base and min(base) > 0:
            value, interval = relative_change(bits, base, RESAMPLES, seed=0)
            out.append((g, value, interval, min(len(bits), len(base))))
    return out


def figure4(results: list[dict], path: Path) -> bool:
    """Absorbed bits: (a) vs parameters for models without VLD, (b, c) the change against the
    base model of the same size per variant, under the paper's measure and the cross-entropy
    one, with the 95% interval over seeds and claim 1's flat band (+-FLAT_MARGIN). (b, c) span at
    least twice the band, so a change the claims call flat looks flat."""
    knowledge = [r for r in results if r["family"] in KNOWLEDGE]
    if not any(knowledge_bits(r, m) is not None for r in knowledge for m in MEASURE_LABELS):
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    native = sorted((r for r in knowledge if r["native_depth"] and r.get("layers") is None), key=lambda r: r["params"])
    for measure, marker in (("entropy", "o"), ("cross_entropy", "s")):
        points = [(r["params"], knowledge_bits(r, measure)) for r in native]
        points = [p for p in points if p[1] is not None]
        if points:
            axes[0].plot([p[0] for p in points], [p[1] / 1000 for p in points], marker=marker, linestyle="none",
                         color="black" if measure == "entropy" else "tab:gray", fillstyle="none",
                         label=MEASURE_LABELS[measure].split(" (")[0] + " (each seed)")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("parameters (models without VLD)")
    axes[0].set_ylabel("absorbed bits (thousands)")
    axes[0].set_title("(a) capacity vs parameters", fontsize=10)
    if axes[0].get_legend_handles_labels()[1]:  # labelled artists only
        axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # under the axes
    usual = usual_steps({variant_group(r) for r in knowledge})
    band = 100 * FLAT_MARGIN
    single_seed = False
    for ax, measure in zip(axes[1:], ("entropy", "cross_entropy")):
        ax.axhspan(-band, band, color="tab:green", alpha=0.12, label=f"flat (claim 1): +-{band:g}%")
        ax.axhline(0.0, color="gray", linewidth=0.8)
        changes = knowledge_changes(knowledge, measure)
        ranked = sorted((c[0] for c in changes), key=group_sort)
        for g, value, (low, high), seeds in changes:
            same_k = [h for h in ranked if h.k == g.k]  # side by side, so no interval hides another
            shift = 0.1 * (same_k.index(g) - (len(same_k) - 1) / 2)
            _errorbar_point(ax, g.k + shift, 100 * value, 100 * low, 100 * high, variant_style(g, usual),
                            label=f"{variant_label(g, [c[0] for c in changes])}, d={g.d_model}"
                            + (" (1 seed: no interval)" if seeds < 2 else ""))
            single_seed |= seeds < 2
        ys = [100 * v for _, v, _, _ in changes] + [100 * i for *_, (lo, hi), _ in changes for i in (lo, hi)]
        reach = max([2 * band] + [abs(y) * 1.15 for y in ys])
        ax.set_ylim(-reach, reach)
        ks = sorted({g.k for g, *_ in changes}) or [1]
        ax.set_xlim(min(ks) - 0.5, max(ks) + 0.5)
        ax.set_xticks(ks)
        ax.set_xlabel("VLD factor k (extra visits)")
        ax.set_ylabel("absorbed bits vs base, % (95% interval)")
        ax.set_title(f"({'b' if measure == 'entropy' else 'c'}) fixed params: "
                     f"{'paper measure' if measure == 'entropy' else 'cross-entropy'}", fontsize=10)
        if not changes:
            ax.text(0.5, 0.5, "no VLD variant beside its base", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    if single_seed:
        note(axes[1], "one seed a side: points only, no interval (training noise unknown)")
    legend_outside(axes[2])
    fig.suptitle("Figure 4: knowledge capacity (paper: shape only, no numbers)", y=1.02)
    fig.tight_layout()
    save(fig, path)
    return True


def figure1(pairs: list[dict], path: Path) -> bool:
    """Knowledge (x) vs reasoning (y) per (pattern, k), each in its variant's style (legend
    beside the axes); marker area ~ effective depth."""
    if not pairs:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for p in sorted(pairs, key=lambda p: (pattern_key(p["pattern"]), p["k"])):
        group = VariantGroup("reasoning", p["pattern"], p["k"], None, p["n_layer"], None)
        style = variant_style(group)
        ax.scatter(p["knowledge_bits"], 100 * p["accuracy"], s=40 * p["effective_depth"], color=style.color,
                   marker=style.marker, alpha=0.6, edgecolors="black",
                   label=f"{group_name(group)} (depth {p['effective_depth']})")
    xs = [p["knowledge_bits"] for p in pairs]
    ys = [100 * p["accuracy"] for p in pairs]
    # Equal values would otherwise zoom to a hair's width: span at least 5 points / 5%.
    for values, setter, least in ((xs, ax.set_xlim, 0.05 * max(abs(v) for v in xs) or 1.0), (ys, ax.set_ylim, 5.0)):
        middle, half = (max(values) + min(values)) / 2, max((max(values) - min(values)) * 0.6, least / 2)
        setter(middle - half, middle + half)
    ax.set_ylim(max(0.0, ax.get_ylim()[0]), min(100.0, ax.get_ylim()[1]))
    ax.set_xlabel(f"knowledge: absorbed bits ({pairs[0]['knowledge_measure'].replace('_', '-')})")
    ax.set_ylabel(f"reasoning: answer accuracy % ({pairs[0]['test']})")
    ax.set_title("Figure 1: knowledge vs reasoning (marker area = effective depth)", fontsize=10)
    legend_outside(ax, markerscale=0.5)
    save(fig, path)
    return True


def depth_figure(results: list[dict], path: Path, kind: str) -> bool:
    """Per-virtual-layer depth use of every variant of one kind, four panels; seeds of a
    variant share its style (one legend entry)."""
    chosen = sorted((r for r in results if r["family"] == kind and r.get("depth")),
                    key=lambda r: (r["n_layer"], pattern_key(r["pattern"]), r["k"] or 0, r["variant"]))
    if not chosen:
        return False
    plt = pyplot()
    panels = (("relative_update", "|h_{i+1} - h_i| / |h_i|"), ("angle_deg", "angle(h_i, h_{i+1}), degrees"),
              ("update_cosine_next", "cos(update_i, update_{i+1})"), ("logit_lens_loss", "logit-lens loss (nats)"))
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    groups = {variant_group(r) for r in chosen}
    usual = usual_steps(groups)
    warning = not_learned_note(results, kind)
    for ax, (metric, label) in zip(axes, panels):
        labelled = set()
        for r in chosen:
            points = [(layer["virtual_layer"], layer.get(metric)) for layer in r["depth"]]
            points = [p for p in points if p[1] is not None]
            group = variant_group(r)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], markersize=4,
                        label=None if group in labelled else variant_label(group, groups),
                        **variant_style(group, usual).line())
                labelled.add(group)
        ax.set_xlabel("virtual layer")
        ax.set_ylabel(label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if warning:
            note(ax, warning)
    legend_outside(axes[-1])
    fig.suptitle(f"Depth use per virtual layer ({kind} variants; one line per seed)", y=1.02)
    fig.tight_layout()
    save(fig, path)
    return True


def khop_learned(results: list[dict]) -> bool:
    """Whether some variant's pooled error is LEARN_MARGIN below the constant prediction at a
    hop count >= MIN_SERIAL_HOPS (the bar claims 2-5 use, vld.report.claims)."""
    return any(cell.error < cell.chance - LEARN_MARGIN for cells in khop.pooled_errors(results).values()
               for hops, cell in cells.items() if int(hops) >= MIN_SERIAL_HOPS)


def not_learned_text() -> str:
    return (f"not learned: no variant's error is {LEARN_MARGIN} below the constant prediction at "
            f"k >= {MIN_SERIAL_HOPS}; differences are noise")


def khop_figure(results: list[dict], path: Path) -> bool:
    """Error against hop count, one line per variant (seeds pooled) in its style, 95% intervals
    drawn; the legend beside the axes."""
    found = khop.khop_results(results)
    if not found:
        return False
    plt = pyplot()
    pooled = khop.pooled_errors(found)
    groups = sorted(pooled, key=group_sort)
    usual = usual_steps(groups)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    offsets = np.linspace(-0.18, 0.18, len(groups)) if len(groups) > 1 else [0.0]
    for offset, group in zip(offsets, groups):
        hops = sorted(pooled[group], key=int)
        x = np.array([int(h) for h in hops]) + offset  # offsets keep the error bars apart
        y = np.array([pooled[group][h].error for h in hops])
        low = y - np.array([pooled[group][h].interval[0] for h in hops])
        high = np.array([pooled[group][h].interval[1] for h in hops]) - y
        ax.errorbar(x, y, yerr=[low, high], markersize=4, capsize=2, label=variant_label(group, groups),
                    **variant_style(group, usual).line())
    hops = khop.hop_counts(found)
    chance = [next(c[h].chance for c in pooled.values() if h in c) for h in hops]
    ax.plot([int(h) for h in hops], chance, color="gray", linestyle=":", linewidth=2, label="best constant prediction")
    ax.set_xlabel("hop count k")
    ax.set_ylabel("per-position error")
    ax.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    legend_outside(ax)
    if not khop_learned(found):
        note(ax, not_learned_text())
    ax.set_title("k-hop induction: error vs hop count (95% intervals; seeds pooled)", fontsize=10)
    save(fig, path)
    return True
