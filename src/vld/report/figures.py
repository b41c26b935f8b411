"""The report's figures (matplotlib, Agg backend, PNG). Each returns False when there is
nothing to plot, so the caller notes the skip instead of writing an empty figure."""

from __future__ import annotations

from pathlib import Path

from vld.report import paper
from vld.report.tables import (KNOWLEDGE, MEASURE_LABELS, knowledge_bits,
                               pattern_key, pooled_igsm, table1_results, test_names, variant_group)

# Fixed so the same results give the same picture.
COLORS = {"base": "black", "sequence": "tab:blue", "cycle": "tab:orange",
          "inverse_cycle": "tab:green"}
EXTRA_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def color(pattern: str, known: list[str]) -> str:
    if pattern in COLORS:
        return COLORS[pattern]
    others = sorted(p for p in known if p not in COLORS)
    return EXTRA_COLORS[others.index(pattern) % len(EXTRA_COLORS)] if pattern in others else "gray"


def _save(fig, path: Path) -> None:
    # No software/date metadata: the same results give the same bytes.
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)


def figure3(results: list[dict], path: Path) -> bool:
    """Accuracy vs effective depth: one panel per test, lines per (pattern, base layers),
    native-depth models as a black line; a last panel with the paper's op15 numbers."""
    reasoning = table1_results(results)
    if not reasoning:
        return False
    plt = _pyplot()
    pooled = pooled_igsm(reasoning)
    depth = {variant_group(r): r["effective_depth"] for r in reasoning}
    native = {variant_group(r) for r in reasoning if r["native_depth"]}
    tests = test_names(reasoning)
    patterns = sorted({g.pattern for g in pooled}, key=pattern_key)
    fig, axes = plt.subplots(1, len(tests) + 1, figsize=(4.6 * (len(tests) + 1), 4), squeeze=False)
    for ax, test in zip(axes[0], tests):
        points_of: dict[tuple, tuple] = {}
        for group in pooled:
            if test in pooled[group]:
                cell = pooled[group][test]
                low, high = cell.interval
                points_of[group] = (depth[group], 100 * cell.accuracy,
                                    100 * (cell.accuracy - low), 100 * (high - cell.accuracy))
        native_points = sorted(points_of[g] for g in points_of if g in native)
        if native_points:
            ax.errorbar([p[0] for p in native_points], [p[1] for p in native_points],
                        yerr=[[p[2] for p in native_points], [p[3] for p in native_points]],
                        color="black", marker="s", linestyle="--", capsize=3,
                        label="native depth (untied)")
        for size_index, n_layer in enumerate(sorted({g.n_layer for g in points_of})):
            for pattern in patterns:
                vld = [g for g in points_of if g.pattern == pattern and g.n_layer == n_layer and g not in native]
                if pattern == "base" or not vld:
                    continue
                # Each VLD curve starts at its base model (k = 0) when there is one.
                start_points = [g for g in points_of if g.n_layer == n_layer and g.pattern == "base" and g.k == 0]
                points = sorted(points_of[g] for g in vld + start_points)
                ax.errorbar([p[0] for p in points], [p[1] for p in points],
                            yerr=[[p[2] for p in points], [p[3] for p in points]],
                            color=color(pattern, patterns), marker="o", capsize=3,
                            linestyle=("-", "-.", ":")[size_index % 3],
                            label=f"{pattern.replace('_', ' ')} ({n_layer}L base)")
        rates = [p[test].baseline_rate for p in pooled.values()
                 if test in p and p[test].baseline_rate is not None]
        if rates:
            ax.axhline(100 * rates[0], color="gray", linestyle=":", label="most common answer")
        ax.set_title(f"ours: {test} (95% intervals)")
        ax.set_xlabel("effective depth")
        ax.set_ylabel("answer accuracy %")
        if ax.get_legend_handles_labels()[1]:  # labelled artists only
            ax.legend(fontsize=7)
    ax = axes[0][-1]
    for size in (4, 8):
        for pattern in ("cycle", "sequence", "inverse_cycle"):
            points = sorted(((k + 1) * size, values[(size, "op15")])
                            for (p, k), values in paper.TABLE1.items()
                            if (p == pattern or p == "base") and (size, "op15") in values)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                    color=COLORS[pattern], linestyle="-" if size == 4 else "-.",
                    label=f"{pattern.replace('_', ' ')} ({size}L base)")
    native_points = sorted(paper.NATIVE_OP15.items())
    ax.plot([p[0] for p in native_points], [p[1] for p in native_points], color="black",
            marker="s", linestyle="--", label="native depth")
    ax.set_title("paper: Table 1, op15")
    ax.set_xlabel("effective depth")
    ax.set_ylabel("answer accuracy %")
    ax.legend(fontsize=7)
    fig.suptitle("Figure 3: accuracy vs effective depth", y=1.03)
    _save(fig, path)
    return True


def figure4(results: list[dict], path: Path) -> bool:
    """Absorbed bits: (a) vs parameters for models without VLD, (b, c) the change against the
    base model of the same size per pattern and VLD factor, under the paper's measure and the
    cross-entropy one. (b, c) plot changes from zero, so a few percent look like a few percent;
    with several seeds the bars span them (one seed: points only)."""
    knowledge = [r for r in results if r["family"] in KNOWLEDGE]
    if not any(knowledge_bits(r, m) is not None for r in knowledge for m in MEASURE_LABELS):
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    native = sorted((r for r in knowledge if r["native_depth"]), key=lambda r: r["params"])
    for measure, marker in (("entropy", "o"), ("cross_entropy", "s")):
        points = [(r["params"], knowledge_bits(r, measure)) for r in native]
        points = [p for p in points if p[1] is not None]
        if points:
            axes[0].plot([p[0] for p in points], [p[1] / 1000 for p in points], marker=marker,
                         label=MEASURE_LABELS[measure])
    axes[0].set_xscale("log")
    axes[0].set_xlabel("parameters (no VLD)")
    axes[0].set_ylabel("absorbed bits (thousands)")
    axes[0].set_title("(a) capacity vs parameters")
    if axes[0].get_legend_handles_labels()[1]:  # labelled artists only
        axes[0].legend(fontsize=7)
    patterns = sorted({str(r["pattern"]) for r in knowledge}, key=pattern_key)
    sizes = sorted({(r["n_layer"], r.get("d_model") or 0, r["params"]) for r in knowledge
                    if not r["native_depth"]})
    styles = ("-", "--", "-.", ":")
    for ax, measure in zip(axes[1:], ("entropy", "cross_entropy")):
        ax.axhline(0.0, color="gray", linewidth=0.8)
        for size_index, (n_layer, d_model, params) in enumerate(sizes):
            same = [r for r in knowledge if (r["n_layer"], r.get("d_model") or 0, r["params"])
                    == (n_layer, d_model, params) and r.get("layers") is None]
            base = [knowledge_bits(r, measure) for r in same if r["pattern"] == "base" and not r["k"]]
            base = [b for b in base if b is not None]
            if not base:
                continue
            reference = sum(base) / len(base)
            for offset, pattern in enumerate(p for p in patterns if p != "base"):
                changes = {}
                for r in same:
                    bits = knowledge_bits(r, measure)
                    if bits is not None and r["pattern"] in (pattern, "base"):
                        changes.setdefault(int(r["k"] or 0), []).append(100 * (bits / reference - 1))
                ks = sorted(changes)
                if len(ks) < 2:
                    continue
                mean = [sum(changes[k]) / len(changes[k]) for k in ks]
                low = [m - min(changes[k]) for m, k in zip(mean, ks)]
                high = [max(changes[k]) - m for m, k in zip(mean, ks)]
                ax.errorbar([k + 0.04 * (offset - 1) for k in ks], mean, yerr=[low, high], marker="o", capsize=2,
                            color=color(pattern, patterns), linestyle=styles[size_index % 4],
                            label=f"{pattern.replace('_', ' ')}, {params:,} params")
        ax.set_xlabel("VLD factor k (extra copies)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("absorbed bits vs base, %")
        ax.set_title(f"({'b' if measure == 'entropy' else 'c'}) fixed params: "
                     f"{'paper measure' if measure == 'entropy' else 'cross-entropy'}")
        if ax.get_legend_handles_labels()[1]:  # labelled artists only
            ax.legend(fontsize=7)
    fig.suptitle("Figure 4: knowledge capacity (paper: shape only, no numbers)", y=1.03)
    fig.tight_layout()
    _save(fig, path)
    return True


def figure1(pairs: list[dict], path: Path) -> bool:
    """Knowledge (x) vs reasoning (y) per (pattern, k); bubble area ~ effective depth."""
    if not pairs:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    patterns = sorted({p["pattern"] for p in pairs}, key=pattern_key)
    # Labels sit in a column beside the points, joined by a line: points of similar value
    # (e.g. all patterns at x1) would otherwise print their labels over each other.
    order = sorted(pairs, key=lambda p: (100 * p["accuracy"], p["knowledge_bits"]))
    xs = [p["knowledge_bits"] for p in pairs]
    span = (max(xs) - min(xs)) or max(1.0, abs(max(xs)) * 0.05)
    ys = [100 * p["accuracy"] for p in pairs]
    y_span = (max(ys) - min(ys)) or 1.0
    for rank, p in enumerate(order):
        x, y = p["knowledge_bits"], 100 * p["accuracy"]
        ax.scatter(x, y, s=40 * p["effective_depth"], color=color(p["pattern"], patterns), alpha=0.6,
                   edgecolors="black")
        label_y = min(ys) + y_span * (rank + 0.5) / len(order)
        ax.annotate(f"{p['pattern'].replace('_', ' ')} x{p['k']}" if p["k"] else p["pattern"], (x, y),
                    xytext=(max(xs) + 0.25 * span, label_y), fontsize=7, va="center",
                    arrowprops={"arrowstyle": "-", "color": "gray", "linewidth": 0.6})
    ax.set_xlim(min(xs) - 0.1 * span, max(xs) + 0.7 * span)
    ax.set_xlabel(f"knowledge: absorbed bits ({pairs[0]['knowledge_measure'].replace('_', '-')})")
    ax.set_ylabel(f"reasoning: answer accuracy % ({pairs[0]['test']})")
    ax.set_title("Figure 1: knowledge vs reasoning (bubble = effective depth)")
    _save(fig, path)
    return True


def depth_figure(results: list[dict], path: Path, kind: str) -> bool:
    """Per-virtual-layer depth use of every variant of one kind, four panels."""
    chosen = sorted((r for r in results if r["family"] == kind and r.get("depth")),
                    key=lambda r: (r["n_layer"], pattern_key(r["pattern"]), r["k"] or 0, r["variant"]))
    if not chosen:
        return False
    plt = _pyplot()
    panels = (("relative_update", "|h_{i+1} - h_i| / |h_i|"), ("angle_deg", "angle(h_i, h_{i+1}) deg"),
              ("update_cosine_next", "cos(update_i, update_{i+1})"), ("logit_lens_loss", "logit-lens loss (nats)"))
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    patterns = sorted({str(r["pattern"]) for r in chosen}, key=pattern_key)
    for ax, (metric, label) in zip(axes, panels):
        for index, r in enumerate(chosen):
            points = [(layer["virtual_layer"], layer.get(metric)) for layer in r["depth"]]
            points = [p for p in points if p[1] is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".",
                        color=color(str(r["pattern"]), patterns),
                        linestyle=("-", "--", "-.", ":")[index % 4], label=r["variant"])
        ax.set_xlabel("virtual layer")
        ax.set_title(label)
    if axes[0].get_legend_handles_labels()[1]:  # labelled artists only
        axes[0].legend(fontsize=6)
    fig.suptitle(f"Depth use per virtual layer ({kind} variants)", y=1.03)
    _save(fig, path)
    return True
