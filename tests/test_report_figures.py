"""The report's figures read true: one style per variant in every figure, bounded sizes, claim 1's
band and intervals, no self-swap drawn, a line where the models did not learn."""

from __future__ import annotations

import copy

import matplotlib
import matplotlib.image
import numpy as np
import pytest

from test_report import igsm_scores, khop_cells, khop_set, knowledge_set, reasoning_set, result, retrofit_set
from vld.report import depth_use, figures
from vld.report.build import build_report
from vld.report.claims import FLAT_MARGIN
from vld.report.tables import variant_group

matplotlib.use("Agg")


@pytest.fixture
def drawn(monkeypatch):
    """Figures the report draws, kept open: every figure is closed right after it is saved."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    return kept


def legend_styles(fig) -> dict[str, tuple]:
    """legend label -> (colour, marker, fillstyle) of the labelled lines and error bars of `fig`."""
    out = {}
    for ax in fig.axes:
        lines = list(ax.lines) + [c.lines[0] for c in ax.containers if c.lines and c.lines[0] is not None]
        labels = {id(c.lines[0]): c.get_label() for c in ax.containers if c.lines and c.lines[0] is not None}
        for line in lines:
            label = labels.get(id(line), line.get_label())
            if label and not label.startswith("_"):
                out[label] = (matplotlib.colors.to_hex(line.get_color()), line.get_marker(), line.get_fillstyle())
    return out


def texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def seeded(results: list[dict], seeds: int = 3) -> list[dict]:
    out = []
    for r in results:
        for seed in range(seeds):
            out.append({**copy.deepcopy(r), "seed": seed})
    return out


def khop_variants_with_depth_use() -> list[dict]:
    """k-hop variants of several kinds (a native deeper model, a base trained twice as long),
    each with a depth-use record, two seeds each."""
    variants = khop_set()
    record = variants[1]["depth_use"]
    longer = result("h-base-2x", "khop", "base", 0, 2, khop=khop_cells({0: 0.0, 2: 0.25, 4: 0.5}), depth=False,
                    train_steps=200)
    for r in variants + [longer]:
        r["depth_use"] = copy.deepcopy(record)
        r["depth_use"]["schedule"] = r["schedule"]
        r["depth_use"]["ablations"] = [a for a in record["ablations"]
                                       if max(a["virtual_layers"]) < len(r["schedule"])]
    return seeded(variants + [longer], 2)


# ---------------------------------------------------------------- one style per variant

def test_every_variant_has_one_style_across_figures(drawn, tmp_path):
    results = khop_variants_with_depth_use()
    assert figures.khop_figure(results, tmp_path / "khop.png")
    assert depth_use.depth_use_figure(results, tmp_path / "use.png")
    khop_styles, use_styles = (legend_styles(fig) for fig in drawn)
    names = {"base, 2 layers, 100 steps", "base, 4 layers, 100 steps", "cycle x1, 2 layers, 100 steps",
             "base, 2 layers, 200 steps"}
    assert set(use_styles) == names and set(khop_styles) == names | {"best constant prediction"}
    for name in names:
        assert khop_styles[name] == use_styles[name], name
    assert len(set(use_styles.values())) == 4  # four variants, four looks
    # each is its variant's own style (vld.report.figures.variant_style), whatever else is drawn
    for r in results:
        style = figures.variant_style(variant_group(r), 100)
        name = figures.variant_label(variant_group(r), [variant_group(x) for x in results])
        assert use_styles[name] == (matplotlib.colors.to_hex(style.color), style.marker, style.fillstyle)


def test_variant_style_is_a_function_of_the_variant_alone():
    base, cycle = result("b", "khop", "base", 0, 2), result("c", "reasoning", "cycle", 1, 2)
    deep, longer = result("n", "khop", "base", 0, 4), result("l", "khop", "base", 0, 2, train_steps=300)
    style = lambda r, usual=100: figures.variant_style(variant_group(r), usual)
    assert (style(base).color, style(base).marker) == ("black", "o")
    assert style(cycle).color == "tab:orange" and style(cycle).marker == "s"
    assert style(cycle) == style({**cycle, "family": "knowledge", "d_model": 7})  # family and width do not change it
    assert style(deep).color != style(base).color  # a deeper native model never looks like the base
    assert (style(longer).color, style(longer).marker, style(longer).linestyle) == ("black", "<", "--")
    answer_only = {**base, "objective": "answer_only"}
    assert style(answer_only) != style(base)
    looks = {(s.color, s.marker, s.fillstyle) for s in map(style, (base, cycle, deep, longer, answer_only))}
    assert len(looks) == 5


# ---------------------------------------------------------------- sizes

def png_sizes(folder) -> dict[str, tuple[int, int]]:
    return {p.name: matplotlib.image.imread(p).shape[1::-1] for p in sorted(folder.glob("*.png"))}


def test_every_report_figure_is_bounded(tmp_path):
    # many k-hop variants and seeds (a wide early-exit grid), equal accuracies in Figure 1 (its
    # labels once stretched the image to 2864 px), the full synthetic report
    many = khop_variants_with_depth_use()
    for k in (1, 2, 3):
        for pattern in ("cycle", "sequence", "inverse_cycle")[k == 1:]:  # khop_set has cycle x1
            r = result(f"h-{pattern}-x{k}", "khop", pattern, k, 2, khop=khop_cells({0: 0.0, 2: 0.25}), depth=False)
            r["depth_use"] = copy.deepcopy(many[0]["depth_use"])
            many += seeded([r], 3)
    same = lambda name, pattern, k: result(name, "reasoning", pattern, k, 4, igsm={"op15": igsm_scores(0, 100)})
    equal = [same("r-base", "base", 0), same("r-cycle", "cycle", 1), same("r-seq", "sequence", 1)]
    bits = {"absorbed_bits_entropy": 5.0, "absorbed_bits_ce": 5.0}
    flat_knowledge = [result(f"k-{p}", "knowledge", p, k, 4, knowledge=bits) for p, k in
                      (("base", 0), ("cycle", 1), ("sequence", 1))]
    sets = {"many": many, "equal": equal + flat_knowledge,
            "full": seeded(reasoning_set()[:5]) + knowledge_set() + retrofit_set() + khop_set()}
    for name, results in sets.items():
        build_report(results, tmp_path / name, name)
        sizes = png_sizes(tmp_path / name)
        assert sizes, name
        for png, (width, height) in sizes.items():
            assert width <= figures.MAX_PIXELS and height <= figures.MAX_PIXELS, (name, png, width, height)
    assert png_sizes(tmp_path / "equal")["figure1.png"][1] < 600


# ---------------------------------------------------------------- what is drawn

def sequence_depth_use() -> dict:
    """A depth-use record of schedule 0 0 1 1: swap 0-1 swaps a layer with itself, skips 0 and 1
    run the same order, as do skips 2 and 3."""
    cell = lambda mean: {"error": {"mean": mean, "low": mean - 0.01, "high": mean + 0.01}}
    ablation = lambda kind, layers, mean: {"kind": kind, "virtual_layers": layers, "base_layers": [],
                                           "label": f"{kind} {layers}", "delta": cell(mean)}
    return {"metrics": ["error"], "schedule": [0, 0, 1, 1], "intact": cell(0.2),
            "ablations": [ablation("skip", [0], 0.1), ablation("skip", [1], 0.1), ablation("skip", [2], 0.3),
                          ablation("skip", [3], 0.3), ablation("swap", [0, 1], 0.0),
                          ablation("swap", [1, 2], 0.2), ablation("swap", [2, 3], 0.0)]}


def test_self_swaps_and_repeated_skips_are_not_drawn(drawn, tmp_path):
    r = result("h-seq", "khop", "sequence", 1, 2, depth=False)
    r["schedule"] = [0, 0, 1, 1]
    r["depth_use"] = sequence_depth_use()
    assert depth_use.depth_use_figure([r], tmp_path / "use.png")
    skip_ax, swap_ax = drawn[0].axes[:2]
    drawn_at = lambda ax: sorted(float(x) for bars in ax.containers for x in bars.lines[0].get_xdata())
    assert drawn_at(skip_ax) == [0.0, 2.0]
    assert drawn_at(swap_ax) == [1.5]  # swap 1-2 only: 0-1 and 2-3 swap a layer with itself


def test_figure4_draws_the_flat_band_and_the_interval(drawn, tmp_path):
    results = seeded(knowledge_set())
    for r in results:  # seed noise: +-2% on the VLD variants
        if r["k"]:
            r["knowledge"] = {key: v * (1 + 0.02 * (r["seed"] - 1)) for key, v in r["knowledge"].items()}
    assert figures.figure4(results, tmp_path / "f4.png")
    panel_c = drawn[0].axes[2]
    band = [p for p in panel_c.patches if p.get_label().startswith("flat")]
    assert len(band) == 1
    corners = band[0].get_path().transformed(band[0].get_patch_transform()).vertices[:, 1]
    assert (corners.min(), corners.max()) == pytest.approx((-100 * FLAT_MARGIN, 100 * FLAT_MARGIN))
    low, high = panel_c.get_ylim()
    assert low <= -200 * FLAT_MARGIN and high >= 200 * FLAT_MARGIN  # a flat change looks flat
    # the cycle point: mean of its seeds' cross-entropy bits over the base's, minus one
    cycle = [r["knowledge"]["absorbed_bits_ce"] for r in results if r["variant"] == "k-big-cycle-x1"]
    base = [r["knowledge"]["absorbed_bits_ce"] for r in results if r["variant"] == "k-big"]
    orange = matplotlib.colors.to_hex("tab:orange")
    points = [y for bars in panel_c.containers if matplotlib.colors.to_hex(bars.lines[0].get_color()) == orange
              for y in bars.lines[0].get_ydata()]
    assert points == [pytest.approx(100 * (np.mean(cycle) / np.mean(base) - 1))]
    bars = [c for c in panel_c.collections if isinstance(c, matplotlib.collections.LineCollection)]
    assert any(seg[1][1] - seg[0][1] > 0 for c in bars for seg in c.get_segments())  # an interval, not a point


def test_panels_say_when_the_models_did_not_learn(drawn, tmp_path):
    at_chance = [result("base", "reasoning", "base", 0, 2, igsm={"op2": igsm_scores(2, 100, baseline_hits=4)}),
                 result("cycle", "reasoning", "cycle", 1, 2, igsm={"op2": igsm_scores(3, 100, baseline_hits=4)})]
    assert figures.figure3(at_chance, tmp_path / "f3.png")
    assert figures.depth_figure(at_chance, tmp_path / "d.png", "reasoning")
    flat = [result(f"h{k}", "khop", p, k, 2, khop=khop_cells({0: 0.0, 2: 0.5, 4: 0.5}), depth=False)
            for p, k in (("base", 0), ("cycle", 1))]  # error 0.5 = the constant prediction's
    assert figures.khop_figure(flat, tmp_path / "k.png")
    for fig in drawn:
        assert "not learned" in texts(fig)
    drawn.clear()
    assert figures.figure3(reasoning_set(), tmp_path / "f3b.png")
    assert figures.khop_figure(khop_set(), tmp_path / "kb.png")
    assert all("not learned" not in texts(fig) for fig in drawn)


def test_legends_sit_outside_the_axes(drawn, tmp_path):
    assert figures.khop_figure(khop_set(), tmp_path / "k.png")
    fig = drawn[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the axes: it covers no data
