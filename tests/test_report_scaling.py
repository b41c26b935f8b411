"""The scaling pieces of the report (vld.report.scaling) on hand-made results: error against
effective depth per line and recipe, the step at which each hop count is solved, test-time depth."""

from __future__ import annotations

import pytest

from test_report import igsm_scores, khop_cells, read_csv, result
from vld.report import scaling
from vld.report.build import build_report


def khop(name, pattern, k, n_layer, errors, seed=0, recipe=None, **extra):
    r = result(f"{name}-s{seed}", "khop", pattern, k, n_layer, seed=seed, depth=False, khop=khop_cells(errors))
    if recipe:
        r["recipe"] = recipe
    r.update(extra)
    return r


def scaling_set():
    out = []
    for seed in (0, 1):
        out += [khop("base", "base", 0, 2, {0: 0.0, 2: 0.5, 3: 0.5}, seed),
                khop("native4", "base", 0, 4, {0: 0.0, 2: 0.25, 3: 0.375}, seed),
                khop("cycle_x1", "cycle", 1, 2, {0: 0.0, 2: 0.375, 3: 0.5}, seed),
                khop("scaled_x0", "cycle", 0, 2, {0: 0.0, 2: 0.5, 3: 0.5}, seed, recipe={"residual_scale": "visits"}),
                khop("scaled_x1", "cycle", 1, 2, {0: 0.0, 2: 0.25, 3: 0.25}, seed, recipe={"residual_scale": "visits"})]
    return out


def test_error_against_effective_depth_per_line_and_recipe():
    lines = scaling.scaling_lines(scaling_set())
    assert list(lines) == ["khop: native depth, width 64, 100 steps",
                           "khop: cycle xk on 2 layers, width 64, 100 steps",
                           "khop: cycle xk on 2 layers, width 64, 100 steps, recipe residual_scale=visits"]
    assert [g.n_layer for g in lines["khop: native depth, width 64, 100 steps"]] == [2, 4]
    assert [(g.pattern, g.k) for g in lines["khop: cycle xk on 2 layers, width 64, 100 steps"]] == [("base", 0), ("cycle", 1)]
    table = scaling.scaling_table(scaling_set())
    serial = {(row[0].split(", ")[-1], row[2]): row[-1] for row in table.rows}
    # every sequence has the same error: the mean over k = 2, 3 and a zero-width interval
    assert serial[("recipe residual_scale=visits", 4)] == "0.250 [0.250, 0.250]"
    assert serial[("100 steps", 4)] in ("0.312 [0.312, 0.312]", "0.438 [0.438, 0.438]")
    assert {row[2]: row[-1] for row in table.rows if "native" in row[0]} == {2: "0.500 [0.500, 0.500]",
                                                                            4: "0.312 [0.312, 0.312]"}
    assert all(row[3] == 2 for row in table.rows)  # seeds


def curve(steps, **errors):
    return {"steps": steps, **{f"error_hop{k[1:]}": v for k, v in errors.items()}}


def test_steps_at_which_each_hop_count_is_solved():
    steps = [0, 100, 200, 300]
    results = [khop("cycle_x1", "cycle", 1, 2, {0: 0.0, 2: 0.0}, seed,
                    learning_curve=curve(steps, k0=[0.5, 0.04, 0.0, 0.0], k2=errors))
               for seed, errors in enumerate([[0.6, 0.5, 0.3, 0.01], [0.6, 0.5, 0.04, 0.0], [0.6, 0.6, 0.6, 0.6]])]
    assert scaling.solved_step(results[0]["learning_curve"], "2") == 300
    assert scaling.solved_step(results[2]["learning_curve"], "2") is None
    table = scaling.curves_table(results + [khop("base", "base", 0, 2, {0: 0.0}, 0)])  # no curve: no row
    assert table.columns == ["variant", "seeds", "steps", "k=0", "k=2"]
    assert table.rows == [["cycle x1, 2 layers, 100 steps", 3, 300, "100 (3/3)", "250 [200, 300] (2/3)"]]
    results.append(khop("base", "base", 0, 2, {0: 0.0}, 0, learning_curve=curve(steps, k0=[0.5] * 4, k2=[0.5] * 4)))
    assert scaling.curves_table(results).rows[0][3:] == ["never (0/1)", "never (0/1)"]


def looped(seed, trained, errors_by_repeats, verdict, delta):
    return khop("looped_x1", "cycle", 1, 2, {0: 0.0, 2: 0.0}, seed, test_time_depth={
        "trained_repeats": trained, "verdict": verdict, "delta": delta,
        "repeats": {str(r): {"effective_depth": 2 * r, "hops": {"0": {"error": 0.0}, "2": {"error": e}}}
                    for r, e in errors_by_repeats.items()}})


def test_test_time_depth_table_and_report_files(tmp_path):
    results = [looped(0, 2, {1: 0.5, 2: 0.2, 3: 0.1}, "help", -0.1), looped(1, 2, {1: 0.4, 2: 0.2, 3: 0.3}, "hurt", 0.1)]
    table = scaling.test_time_table(results, "khop")
    name = "cycle x1, 2 layers, 100 steps"
    assert [row[:4] for row in table.rows] == [[name, "1", 2, 2], [name, "2 (trained)", 4, 2], [name, "3", 6, 2]]
    assert [row[5] for row in table.rows] == ["0.450", "0.200", "0.200"]  # k=2, mean over seeds
    assert table.rows[0][-1] == "help 1, hurt 1; delta median +0.000" and table.rows[1][-1] == ""
    out = tmp_path / "report"
    written = {p.name for p in build_report(results + scaling_set(), out, "synthetic")}
    assert {"scaling.md", "scaling.png", "test_time_depth_khop.md", "test_time_depth_khop.png"} <= written
    assert read_csv(out / "test_time_depth_khop.csv")[1]["repeats"] == "2 (trained)"
    report = (out / "report.md").read_text()
    assert "Test-time depth (khop)" in report and "Virtual depth as a scaling dimension" in report


def curved(variant, family, pattern, k, seed, curve, **extra):
    """A hand-made knowledge or reasoning result with a learning curve."""
    knowledge = {"absorbed_bits_entropy": 1000.0, "absorbed_bits_ce": 800.0} if family == "knowledge" else None
    igsm = None if knowledge else {"op2": igsm_scores(50, 100)}
    r = result(f"{variant}-s{seed}", family, pattern, k, 2, seed=seed, depth=False, knowledge=knowledge, igsm=igsm)
    r.update(learning_curve=curve, **extra)
    return r


def test_knowledge_and_reasoning_curves_final_value_and_best_step(tmp_path):
    steps = [0, 50, 100]
    knowledge = [curved("cycle_x1", "knowledge", "cycle", 1, seed, {"steps": steps, "absorbed_bits_ce_per_token": ce,
                                                                       "absorbed_bits_entropy_per_token": ent})
                 for seed, ce, ent in ((0, [-0.5, 1.5, 1.0], [0.0, 2.0, 3.0]), (1, [-0.5, 0.5, 2.0], [0.0, 2.0, 3.0]),
                                       (2, [-0.5, 1.0, 1.0], [0.0, 3.0, 3.0]))]
    reasoning = [curved("base", "reasoning", "base", 0, seed, {"steps": steps, "answer_accuracy_op2": acc})
                 for seed, acc in ((0, [0.0, 0.5, 0.25]), (1, [0.0, 0.25, 0.75]))]
    reasoning.append(curved("answer_only", "reasoning", "base", 0, 0, {"steps": steps, "answer_accuracy_op2": [0.0, 0.0, 1.0]},
                            objective="answer_only"))
    results = knowledge + reasoning + scaling_set()
    assert scaling.curve_families(results) == ["knowledge", "reasoning"]
    assert scaling.curves_table(results) is None  # the k-hop table: k-hop curves only
    table = scaling.family_curves_table(results, "knowledge")
    assert table.columns == ["variant", "seeds", "steps", "absorbed_bits_ce_per_token final",
                             "absorbed_bits_ce_per_token best at step", "absorbed_bits_entropy_per_token final",
                             "absorbed_bits_entropy_per_token best at step"]
    # final: median [range] over seeds; best: the first step with the highest value, median [range]
    assert table.rows == [["cycle x1, 2 layers, 100 steps", 3, 100, "1.000 [1.000, 2.000]", "50 [50, 100]",
                           "3.000", "100 [50, 100]"]]
    table = scaling.family_curves_table(results, "reasoning")
    assert table.rows == [["base, 2 layers, 100 steps", 2, 100, "0.500 [0.250, 0.750]", "75 [50, 100]"],
                          ["base, 2 layers, 100 steps, answer only", 1, 100, "1.000", "100"]]
    assert scaling.best_step({"steps": steps, "error_hop2": [0.5, 0.1, 0.1]}, "error_hop2") == 50  # an error: lowest
    out = tmp_path / "report"
    written = {p.name for p in build_report(results, out, "synthetic")}
    assert {"learning_curves_knowledge.md", "learning_curves_knowledge.png", "learning_curves_reasoning.md",
            "learning_curves_reasoning.png"} <= written and "learning_curves.png" not in written
    assert read_csv(out / "learning_curves_reasoning.csv")[1]["answer_accuracy_op2 final"] == "1.000"
    assert "Learning curves (knowledge)" in (out / "report.md").read_text()
