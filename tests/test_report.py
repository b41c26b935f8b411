"""The report: Wilson intervals, every table and figure from synthetic variant results."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vld.errors import UserError
from vld.report import khop, paper
from vld.report.build import build_report, load_results
from vld.result_schema import SCHEMA
from vld.stats import seeds_and_clusters_bootstrap, wilson_interval


# ---------------------------------------------------------------- Wilson

@pytest.mark.parametrize("successes, n, low, high", [
    # Roots of (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0 with z = 1.959964, solved
    # apart from the closed form the code uses.
    (5, 10, 0.236593, 0.763407),
    (0, 10, 0.0, 0.277533),
    (10, 10, 0.722467, 1.0),
    (250, 500, 0.456341, 0.543659),
    (1, 4, 0.045587, 0.699358),
])
def test_wilson_matches_hand_computed_values(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=1e-6)


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)


# ---------------------------------------------------------------- synthetic results

def igsm_scores(correct: int, n: int, baseline_hits: int = 10) -> dict:
    return {"n": n, "answer_correct": correct, "solution_correct": correct // 2,
            "answer_accuracy": correct / n, "solution_accuracy": (correct // 2) / n,
            "reasons": {"ok": correct, "wrong_answer": n - correct}, "by_op": {},
            "baseline": {"answer": "0", "source": "train", "source_frequency": 0.1,
                         "hits": baseline_hits, "n": n, "rate": baseline_hits / n},
            "decoding": {"strategy": "greedy", "kv_cache": True, "max_new_tokens": 64,
                         "batch_size": 32, "limit": None}}


def result(variant, family, pattern, k, n_layer, *, layers=None, d_model=64, seed=0,
           igsm=None, knowledge=None, scores=None, depth=True, khop=None, train_steps=100) -> dict:
    effective = n_layer * (k + 1)
    schedule = list(range(n_layer)) * (k + 1)
    params = 1000 * n_layer * d_model
    return {
        "schema": SCHEMA, "variant": variant, "family": family,
        "task": "knowledge" if knowledge else "khop" if khop else "igsm", "pattern": pattern, "k": k,
        "layers": layers, "seed": seed, "n_layer": n_layer, "d_model": d_model, "n_head": 4,
        "block": "gpt2", "vocab_size": 100, "effective_depth": effective,
        "vld": effective - n_layer, "schedule": schedule, "native_depth": k == 0,
        "params": params, "params_no_embed": params // 2, "seq_len": 128,
        "flops_per_token": 100 * effective, "flops_per_token_train": 300 * effective,
        "train_tokens_per_s": 5000.0 / (k + 1), "train_steps": train_steps, "train_tokens": 1000 * train_steps,
        "igsm": igsm or {}, "knowledge": knowledge or {}, "khop": khop or {}, "depth_use": {},
        "scores": scores or {},
        "depth": [{"virtual_layer": i, "base_layer": b, "visit": i // n_layer,
                   "update_norm": 1.0 + i, "relative_update": 0.5, "angle_deg": 30.0,
                   "update_cosine_next": None if i == effective - 1 else 0.1,
                   "logit_lens_loss": 3.0 - 0.1 * i} for i, b in enumerate(schedule)] if depth else [],
    }


def reasoning_set() -> list[dict]:
    tests = lambda c15, c20: {"op15": igsm_scores(c15, 100), "op20": igsm_scores(c20, 100)}
    return [
        result("r4-base", "reasoning", "base", 0, 4, igsm=tests(40, 20)),
        result("r4-cycle-x1", "reasoning", "cycle", 1, 4, igsm=tests(50, 25)),
        # Two seeds of one variant: pooled to 110/200.
        result("r4-cycle-x2-s0", "reasoning", "cycle", 2, 4, seed=0, igsm=tests(60, 30)),
        result("r4-cycle-x2-s1", "reasoning", "cycle", 2, 4, seed=1, igsm=tests(50, 30)),
        result("r4-sequence-x1", "reasoning", "sequence", 1, 4, igsm=tests(45, 22)),
        result("r8-base", "reasoning", "base", 0, 8, igsm=tests(55, 28)),
        result("r8-cycle-x1", "reasoning", "cycle", 1, 8, igsm=tests(58, 29)),
        result("r8-cycle-x1-first", "reasoning", "cycle", 1, 8, layers="0..3", igsm=tests(52, 26)),
        result("r8-cycle-x1-second", "reasoning", "cycle", 1, 8, layers="4..7", igsm=tests(61, 31)),
    ]


def knowledge_set() -> list[dict]:
    # Keys of vld.eval.knowledge.all_knowledge_measures; per-param only on one, to check both
    # the measure's own figure and the fallback (bits / params).
    bits = lambda e, c: {"absorbed_bits_entropy": e, "absorbed_bits_ce": c}
    return [
        result("k-small", "knowledge", "base", 0, 2, d_model=32,
               knowledge={**bits(1000.0, 800.0), "absorbed_bits_ce_per_param": 0.5}),
        result("k-big", "knowledge", "base", 0, 4, d_model=64, knowledge=bits(3000.0, 2500.0)),
        result("k-big-cycle-x1", "knowledge", "cycle", 1, 4, d_model=64, knowledge=bits(3100.0, 2450.0)),
        result("k-big-sequence-x1", "knowledge", "sequence", 1, 4, d_model=64,
               knowledge=bits(2900.0, 2400.0)),
    ]


def retrofit_set() -> list[dict]:
    return [
        result("rf-base", "retrofit", "base", 0, 4, scores={"iGSM-op15": 30.0}, depth=False),
        result("rf-cycle", "retrofit", "cycle", 1, 4, scores={"iGSM-op15": 34.5}, depth=False),
    ]


def khop_cells(errors: dict[int, float], sequences: int = 40, labelled: int = 16) -> dict:
    """Synthetic k-hop results: every sequence gets the same number of wrong positions."""
    hops = {}
    for k, error in errors.items():
        wrong = round(error * labelled)
        hops[str(k)] = {"sequences": sequences, "positions": sequences * labelled, "error": wrong / labelled,
                        "error_ci95": [wrong / labelled, wrong / labelled], "exact_match": float(wrong == 0),
                        "exact_match_ci95": [0.0, 1.0], "chance_error": 0.5,
                        "wrong_per_sequence": [wrong] * sequences, "labelled_per_sequence": labelled}
    return {"spec": {"alphabet": 4, "length": 16, "min_hops": 0, "max_hops": 4}, "bootstrap": 100, "hops": hops}


def tiny_depth_use() -> dict:
    """A real depth-use record (vld.eval.depth_use) of a tiny tied model on random tokens."""
    import math

    import torch

    from vld.eval.depth_use import depth_use
    from vld.model import ModelConfig, VLDTransformer

    torch.manual_seed(0)
    model = VLDTransformer(ModelConfig(vocab_size=11, n_layer=2, d_model=16, n_head=2, max_seq_len=9,
                                       schedule=[0, 1, 0, 1]))
    tokens = torch.randint(0, 11, (12, 9))

    def score(logits, batch):
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.roll(batch["tokens"], -1, 1).flatten(),
                                                 reduction="none").view(len(logits), -1).mean(1)
    return depth_use(model, [{"tokens": tokens}], score, max_sequences=12, chance={"loss": math.log(11)})


def khop_set() -> list[dict]:
    cycle = result("h-cycle-x1", "khop", "cycle", 1, 2, khop=khop_cells({0: 0.0, 2: 0.0625, 4: 0.375}), depth=False)
    cycle["depth_use"] = tiny_depth_use()
    return [
        result("h-base", "khop", "base", 0, 2, khop=khop_cells({0: 0.0, 2: 0.25, 4: 0.5}), depth=False),
        cycle,
        result("h-native4", "khop", "base", 0, 4, khop=khop_cells({0: 0.0, 2: 0.0, 4: 0.125}), depth=False),
    ]


def khop_table7_set() -> list[dict]:
    """Table 7 on k-hop beside h-native4 (no reuse): cycle x1 over every layer of 4, over the first
    two and over the last two."""
    cells = lambda k2, k4: khop_cells({0: 0.0, 2: k2, 4: k4})
    return [result("h4-cycle-x1", "khop", "cycle", 1, 4, khop=cells(0.0, 0.0625), depth=False),
            result("h4-first", "khop", "cycle", 1, 4, layers="0..1", khop=cells(0.0625, 0.25), depth=False),
            result("h4-second", "khop", "cycle", 1, 4, layers="2..3", khop=cells(0.0, 0.125), depth=False)]


def khop_retrofit_set(source: str = "h-base") -> list[dict]:
    """The k-hop base retrofitted: cycle x1 and the same fine-tuning without reuse (50 steps)."""
    out = [result("hrf-cycle", "khop_retrofit", "cycle", 1, 2, khop=khop_cells({0: 0.0, 2: 0.125, 4: 0.375}),
                  depth=False, train_steps=50),
           result("hrf-base", "khop_retrofit", "base", 0, 2, khop=khop_cells({0: 0.0, 2: 0.1875, 4: 0.4375}),
                  depth=False, train_steps=50)]
    for r in out:
        r["source"] = source
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------- the full report

@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "report"
    results = reasoning_set() + knowledge_set() + retrofit_set() + khop_set() + khop_table7_set() + khop_retrofit_set()
    written = build_report(results, out, "synthetic")
    return out, written


def test_every_file_is_written_and_parses(full_report):
    out, written = full_report
    names = sorted(p.name for p in written)
    assert names == sorted([
        "claims.md", "claims.csv", "table1.md", "table1.csv", "table1_long.csv", "table1_paper.csv", "figure3.png",
        "khop.md", "khop.csv", "khop_long.csv", "khop.png", "scaling.md", "scaling.csv", "scaling.png",
        "figure4.md", "figure4.csv", "figure4.png", "figure1.md", "figure1.csv", "figure1.png",
        "table7.md", "table7.csv", "table2.md", "table2.csv", "table2_paper.csv",
        "table7_khop.md", "table7_khop.csv", "table2_khop.md", "table2_khop.csv",
        "compute.md", "compute.csv", "depth.md", "depth.csv", "depth_reasoning.png",
        "depth_law.md", "depth_law.csv", "depth_law_khop_error_k_ge_2.png", "depth_law_khop_error_k_2.png",
        "depth_law_khop_error_k_4.png", "depth_law_reasoning_1_accuracy.png", "depth_use_khop.md",
        "depth_use_khop.csv", "depth_use_khop.png", "early_exit_khop.md", "early_exit_khop.csv",
        "early_exit_khop.png", "depth_regime.md", "depth_regime.csv",
        "depth_knowledge.png", "metrics.json", "report.md", "khop_error.csv", "knowledge_bits.csv"])
    for path in written:
        assert path.parent == out and path.is_file() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        elif path.suffix == ".csv":
            assert read_csv(path)
    report = (out / "report.md").read_text()
    for path in written:
        if path.name != "report.md" and path.suffix in (".csv", ".png", ".json"):
            assert f"({path.name})" in report, path.name
    assert "skipped" not in report


def two_level_quantiles(seeds: list[tuple[int, int]], level: float = 0.95) -> tuple[float, float]:
    """The 2.5% and 97.5% quantiles of the pooled accuracy when the seeds are drawn with
    replacement and each drawn seed's problems too, by exact enumeration (equal n per seed)."""
    import itertools
    import math

    n = seeds[0][1]

    def pmf(correct):  # Binomial(n, correct / n)
        p = correct / n
        return [math.comb(n, x) * p ** x * (1 - p) ** (n - x) for x in range(n + 1)]

    law = [0.0] * (len(seeds) * n + 1)
    for drawn in itertools.product(seeds, repeat=len(seeds)):
        total = [1.0]
        for correct, _ in drawn:
            own = pmf(correct)
            total = [sum(total[i] * own[x - i] for i in range(len(total)) if 0 <= x - i <= n)
                     for x in range(len(total) + n)]
        for x, p in enumerate(total):
            law[x] += p / len(seeds) ** len(seeds)
    cumulative, ends = 0.0, []
    for x, p in enumerate(law):
        cumulative += p
        while len(ends) < 2 and cumulative >= ((1 - level) / 2, (1 + level) / 2)[len(ends)]:
            ends.append(x / (len(seeds) * n))
    return ends[0], ends[1]


def test_table1_numbers_intervals_and_paper_columns(full_report):
    out, _ = full_report
    rows = {(r["pattern"], r["k"], r["n_layer"], r["test"]): r for r in read_csv(out / "table1_long.csv")}
    pooled = rows[("cycle", "2", "4", "op15")]
    assert (pooled["seeds"], pooled["n"], pooled["answer_correct"]) == ("2", "200", "110")
    assert pooled["answer_accuracy_pct"] == "55.00"
    # Two seeds (60/100, 50/100): the interval resamples seeds, then problems within a seed.
    # Its exact law: a seed pair (each of 4 equally likely) and a binomial count per drawn seed.
    low, high = two_level_quantiles([(60, 100), (50, 100)])
    assert float(pooled["ci95_low_pct"]) == pytest.approx(100 * low, abs=1.0)
    assert float(pooled["ci95_high_pct"]) == pytest.approx(100 * high, abs=1.0)
    wilson = wilson_interval(110, 200)  # pooled counts alone: narrower, training noise left out
    assert float(pooled["ci95_high_pct"]) - float(pooled["ci95_low_pct"]) > 100 * (wilson[1] - wilson[0])
    assert pooled["paper_accuracy_pct"] == "62.1"  # paper Table 1, cycle x2, 4L op15
    assert rows[("cycle", "2", "4", "op20")]["paper_accuracy_pct"] == "30.4"
    assert rows[("base", "0", "8", "op20")]["paper_accuracy_pct"] == ""  # paper has no 8L op20
    assert rows[("base", "0", "4", "op15")]["baseline_rate_pct"] == "10.00"
    # Layer-subset variants belong to Table 7, not Table 1.
    assert all(r["n"] != "0" for r in rows.values()) and len(rows) == 2 * 6

    wide = read_csv(out / "table1.csv")
    by_row = {(r["pattern"], r["VLD"]): r for r in wide}
    low, high = wilson_interval(50, 100)
    assert by_row[("cycle", "x1")]["4L op15 (ours)"] == f"50.0 [{100 * low:.1f}, {100 * high:.1f}] n=100"
    assert by_row[("cycle", "x1")]["paper 4L op15"] == "54.9"
    assert by_row[("cycle", "x1")]["paper 8L op15"] == "62.0"
    assert by_row[("sequence", "x1")]["8L op15 (ours)"] == ""
    assert by_row[("always the most common answer (train set)", "")]["4L op15 (ours)"] == "10.0"
    paper_rows = {(r["pattern"], r["VLD"]): r for r in read_csv(out / "table1_paper.csv")}
    assert paper_rows[("cycle", "x5")]["4L op15"] == "70.7"
    assert paper_rows[("base", "-")]["12L op15"] == "61.15"
    assert paper_rows[("cycle", "x1")]["12L op15"] == ""
    assert "paper" in (out / "table1.md").read_text()


def test_table7_rows_and_paper_values(full_report):
    out, _ = full_report
    rows = {r["variant"]: r for r in read_csv(out / "table7.csv")}
    assert list(rows) == ["no VLD", "all layers", "layers 0..3 only", "layers 4..7 only"]
    assert rows["layers 0..3 only"]["paper 8L cycle op15"] == str(paper.TABLE7["first_half"])
    assert rows["layers 4..7 only"]["paper 8L cycle op15"] == str(paper.TABLE7["second_half"])
    assert rows["no VLD"]["paper 8L cycle op15"] == "60.5"
    assert rows["all layers"]["op15 (ours)"].startswith("58.0 [")


def test_khop_table7_and_retrofit_tables(full_report, tmp_path):
    out, _ = full_report
    rows = {r["variant"]: r for r in read_csv(out / "table7_khop.csv")}
    assert list(rows) == ["base, 4 layers", "cycle x1, 4 layers", "cycle x1, 4 layers, reusing 0..1",
                          "cycle x1, 4 layers, reusing 2..3"]
    assert [rows[v]["layers reused"] for v in rows] == ["none", "all", "0..1", "2..3"]
    assert [rows[v]["paper 8L cycle op15 (%)"] for v in rows] == ["60.5", "62.0", "54.2", "64.2"]
    # k>=2: each sequence's error averaged over hop counts 2 and 4 (one seed: a point interval)
    assert rows["cycle x1, 4 layers, reusing 0..1"]["k>=2"] == "0.156 [0.156, 0.156]"  # (0.0625 + 0.25) / 2
    assert rows["cycle x1, 4 layers, reusing 2..3"]["k=4"] == "0.125 [0.125, 0.125]"
    # the retrofit table: the source as trained, each retrofit, and a variant trained from scratch
    # for the source's steps plus the fine-tuning's (cycle x1 at 100 = 50 + 50)
    seeds = [result(f"h-base-50-s{s}", "khop", "base", 0, 2, seed=s, train_steps=50, depth=False,
                    khop=khop_cells({0: 0.0, 2: e, 4: 0.5})) for s, e in enumerate((0.25, 0.375))]
    for r in seeds:
        r["variant"] = "h-base-50"
    table = khop.khop_retrofit_table(khop_set() + seeds + khop_retrofit_set("h-base-50"))
    got = {(r[0], r[1]): r for r in table.rows}
    source = got[("source, as trained", "base, 2 layers")]
    assert source[3:5] == [50, 2]
    per_seed = [np.mean([[e] * 40, [0.5] * 40], axis=0) for e in (0.25, 0.375)]  # 40 sequences, 16 positions
    point, (low, high) = seeds_and_clusters_bootstrap(per_seed, khop.RESAMPLES, seed=0)
    assert point == pytest.approx(((0.25 + 0.5) / 2 + (0.375 + 0.5) / 2) / 2)
    assert source[-1] == f"{point:.3f} [{low:.3f}, {high:.3f}]" and low < point < high  # two seeds: a real interval
    assert got[("Cycle x1 (retrofit)", "cycle x1, 2 layers, from h-base-50")][3:5] == ["50 + 50", 1]
    scratch = [r for r in table.rows if r[0] == "trained from scratch, same total steps"]
    assert [(r[1], r[3]) for r in scratch] == [("base, 2 layers", 100), ("cycle x1, 2 layers", 100)]
    assert scratch[1][-1] == "0.219 [0.219, 0.219]"  # h-cycle-x1: (0.0625 + 0.375) / 2
    assert [r[0] for r in table.rows] == ["source, as trained", "Base (same fine-tuning, no reuse)",
                                          "trained from scratch, same total steps", "Cycle x1 (retrofit)",
                                          "trained from scratch, same total steps"]
    # in the full set the source, h-base, trained 100 steps: no variant has 100 + 50
    assert [r["row"] for r in read_csv(out / "table2_khop.csv")] == [
        "source, as trained", "Base (same fine-tuning, no reuse)", "Cycle x1 (retrofit)"]
    # the k-hop retrofits are neither rows of the k-hop table nor of the iGSM Table 2 analogue
    assert not any("from" in r["variant"] for r in read_csv(out / "khop.csv"))
    assert [r["variant"] for r in read_csv(out / "table2.csv")] == ["rf-base", "rf-cycle"]


def test_the_compute_table_has_one_row_per_variant_with_its_seeds_and_the_hosts_speed():
    from vld.report.tables import compute_table

    seeds = [result("kh-base", "khop", "base", 0, 2, seed=s, train_steps=10) for s in range(3)]
    for r, rate, host in zip(seeds, (100.0, 200.0, 600.0), ([200.0, 190.0], [210.0, 180.0], [220.0, 170.0])):
        r.update(train_tokens_per_s=rate, train_host_gflops=host)
    older = result("kh-cycle", "khop", "cycle", 1, 2, train_steps=10)  # trained by a vld that did not time the host
    table = compute_table([*seeds, older])
    rows = {row[0]: dict(zip(table.columns, row)) for row in table.rows}
    assert len(table.rows) == 2
    assert rows["kh-base"]["seeds"] == 3 and rows["kh-base"]["train tokens/s"] == "300"
    assert rows["kh-base"]["host GFLOP/s, start and end"] == "210, 180"  # each end's mean over the seeds
    assert rows["kh-cycle"]["seeds"] == 1 and rows["kh-cycle"]["train tokens/s"] == "2,500"
    assert rows["kh-cycle"]["host GFLOP/s, start and end"] == ""
    assert "170 to 220 GFLOP/s (1.29x apart)" in " ".join(table.notes)  # over every timing, not the means
    assert not any("rate over every timing" in note for note in compute_table([older]).notes)


def test_the_depth_table_names_the_seed_where_a_variant_has_several():
    from vld.report.tables import depth_table

    seeds = [result("kh-base", "khop", "base", 0, 2, seed=s) for s in (1, 0)]
    rows = depth_table([*seeds, result("kh-cycle", "khop", "cycle", 1, 2)]).rows
    assert [row[0] for row in rows] == ["kh-base seed 0"] * 2 + ["kh-base seed 1"] * 2 + ["kh-cycle"] * 4
    assert [row[4] for row in rows[:4]] == [0, 1, 0, 1]  # each seed's own virtual layers


def test_knowledge_figure1_retrofit_compute_depth_tables(full_report):
    out, _ = full_report
    know = {r["variant"]: r for r in read_csv(out / "figure4.csv")}
    assert know["k-big-cycle-x1"]["absorbed bits (paper measure)"] == "3100.0"
    assert know["k-big-cycle-x1"]["absorbed bits (cross-entropy)"] == "2450.0"
    assert know["k-small"]["bits/param (cross-entropy)"] == "0.5000"
    assert know["k-small"]["bits/param (paper)"] == f"{1000 / 64000:.4f}"
    assert "paper (Figure 4, no numbers printed)" in (out / "figure4.md").read_text()

    pairs = {(r["pattern"], r["VLD"]): r for r in read_csv(out / "figure1.csv")}
    # Knowledge side: the 4x64 size (3 variants); reasoning side: 4 base layers, op15.
    assert set(pairs) == {("base", "-"), ("cycle", "x1"), ("sequence", "x1")}
    assert pairs[("cycle", "x1")]["knowledge: absorbed bits"] == "2450.0"
    assert pairs[("cycle", "x1")]["reasoning: accuracy %"] == "50.0"
    assert pairs[("cycle", "x1")]["effective depth"] == "8"

    retro = {r["row"]: r for r in read_csv(out / "table2.csv")}
    assert retro["Base"]["iGSM-op15"] == "30.00" and retro["Cycle"]["iGSM-op15"] == "34.50"
    paper2 = {r["benchmark"]: r for r in read_csv(out / "table2_paper.csv")}
    assert (paper2["Math500"]["Base"], paper2["Math500"]["Cycle"]) == ("30.40", "35.40")

    compute = {r["variant"]: r for r in read_csv(out / "compute.csv")}
    assert compute["r4-cycle-x2-s0"]["effective depth"] == "12"
    assert compute["r4-cycle-x2-s0"]["FLOPs vs native same params"] == "3.00"
    assert compute["r4-cycle-x2-s0"]["train tokens/s"] == "1,667"
    assert compute["r4-cycle-x2-s0"]["params"] == "256,000"

    depth = [r for r in read_csv(out / "depth.csv") if r["variant"] == "r4-cycle-x1"]
    assert [r["base layer"] for r in depth] == ["0", "1", "2", "3"] * 2
    assert [r["visit"] for r in depth] == ["0"] * 4 + ["1"] * 4
    assert depth[-1]["cos(next update)"] == "" and depth[0]["cos(next update)"] == "0.100"


def test_metrics_json_for_dvc(full_report):
    out, _ = full_report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["profile"] == "synthetic" and metrics["n_variants"] == 23
    assert metrics["variants"]["reasoning"]["r4-cycle-x1"]["igsm_op15_answer_accuracy"] == 0.5
    assert metrics["variants"]["reasoning"]["r4-cycle-x1"]["flops_per_token"] == 800
    assert metrics["variants"]["knowledge"]["k-big"]["knowledge_cross_entropy_absorbed_bits"] == 2500.0
    best = metrics["best_reasoning"]
    assert (best["variant"], best["test"], best["answer_accuracy"]) == ("r8-cycle-x1-second", "op15", 0.61)
    assert best["ratio_to_baseline"] == pytest.approx(6.1)
    verdict = metrics["reasoning_verdict"]  # Table 1's verdict: all tests, seeds pooled, no layer subsets
    assert (verdict["variant"], verdict["n"], verdict["learned"]) == ("cycle x1, 8 layers", 200, 1)
    assert verdict["answer_accuracy"] == pytest.approx(0.435) and verdict["ratio_to_baseline"] == pytest.approx(4.35)
    assert metrics["variants"]["khop"]["h-base"]["khop_k2_error"] == 0.25
    # every claim has a computed verdict (vld.report.claims), k-hop's from the synthetic errors
    # (one seed a side: not shown, the point effect still given; docs/report.md#claims)
    assert metrics["claims"]["claim_2"]["khop"]["verdict"] == "not shown"
    assert metrics["claims"]["claim_2"]["khop"]["effect"] == pytest.approx((0.25 + 0.5) / 2 - (0.0625 + 0.375) / 2)
    claims_rows = {(r["#"], r["family"]): r for r in read_csv(out / "claims.csv")}
    assert claims_rows[("2", "khop")]["why"] == "not shown: 1 seed(s), training noise unknown; 1 vs 1 seeds"
    assert claims_rows[("3", "khop")]["verdict"] == "**not shown**"  # a row for every reasoning family
    assert set(metrics["claims"]) == {f"claim_{c}" for c in ("1", "2", "2c", "3", "4", "5", "6", "7")}


def test_metrics_json_gives_each_variant_over_all_its_seeds(tmp_path):
    """dvc metrics show / diff compare variants: a variant's numbers are its seeds' together
    (errors and accuracies their mean, test counts their sum), not whichever seed came last."""
    from vld.report.build import metrics_summary

    tests = lambda c15: {"op15": igsm_scores(c15, 100)}
    results = [result("kh", "khop", "base", 0, 2, seed=s, khop=khop_cells({2: e}), depth=False)
               for s, e in ((0, 0.25), (1, 0.5), (2, 0.125))]
    results += [result("r", "reasoning", "base", 0, 2, seed=s, igsm=tests(c)) for s, c in ((0, 40), (1, 60))]
    results.append(result("r-cycle", "reasoning", "cycle", 1, 2, igsm=tests(45)))
    summary = metrics_summary(results, "seeds")
    assert (summary["n_variants"], summary["n_results"]) == (3, 6)
    variants = summary["variants"]
    assert variants["khop"]["kh"]["khop_k2_error"] == pytest.approx((0.25 + 0.5 + 0.125) / 3)
    assert variants["khop"]["kh"]["seeds"] == 3 and variants["khop"]["kh"]["params"] == 2 * 64 * 1000
    assert variants["reasoning"]["r"]["igsm_op15_answer_accuracy"] == pytest.approx(0.5)
    assert variants["reasoning"]["r"]["igsm_op15_n"] == 200 and variants["reasoning"]["r-cycle"]["seeds"] == 1
    # the best reasoning variant by its seeds' accuracy (0.5), not by its best seed's (0.6)
    best = metrics_summary(results, "seeds")["best_reasoning"]
    assert (best["variant"], best["answer_accuracy"]) == ("r", pytest.approx(0.5))


def test_missing_pieces_are_skipped_with_notes(tmp_path):
    written = build_report(reasoning_set()[:3], tmp_path / "rep", "reasoning-only")
    names = {p.name for p in written}
    assert {"table1.csv", "figure3.png", "compute.csv", "report.md", "metrics.json"} <= names
    assert not names & {"figure4.png", "figure4.csv", "figure1.png", "table7.csv", "table2.csv"}
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "Figure 4 skipped" in report and "Table 7 skipped" in report
    assert "Figure 1 skipped" in report and "Table 2 analogue skipped" in report

    only_knowledge = build_report(knowledge_set(), tmp_path / "rep2", "k")
    assert "Table 1 skipped" in (tmp_path / "rep2" / "report.md").read_text()
    assert "figure4.png" in {p.name for p in only_knowledge}

    empty = build_report([], tmp_path / "rep3", "empty")
    assert {p.name for p in empty} == {"report.md", "metrics.json"}


def test_same_results_give_identical_files(tmp_path):
    results = reasoning_set()[:4] + knowledge_set()
    first = build_report(results, tmp_path / "a", "p")
    second = build_report(results, tmp_path / "b", "p")
    for a, b in zip(first, second):
        assert a.name == b.name and a.read_bytes() == b.read_bytes(), a.name


def test_bad_results_are_one_line_user_errors(tmp_path):
    bad = reasoning_set()[0]
    del bad["native_depth"]
    with pytest.raises(UserError, match=r"results\[0\]\.native_depth"):
        load_results([bad])
    with pytest.raises(UserError, match=r"results\.reasoning\.r4-base: more than one"):
        load_results([reasoning_set()[0], reasoning_set()[0]])
    # The same name in two kinds is two variants.
    same_name = {**retrofit_set()[0], "variant": "r4-base"}
    assert len(load_results([reasoning_set()[0], same_name])) == 2
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="broken.json"):
        load_results([broken])
    with pytest.raises(UserError, match="missing-dir"):
        load_results([tmp_path / "missing-dir"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("not ours")
    with pytest.raises(UserError, match="not written by vld"):
        build_report(reasoning_set()[:1], foreign, "p")


def test_cli_reads_a_results_directory(tmp_path):
    results_dir = tmp_path / "eval"
    for r in reasoning_set()[:2]:
        (results_dir / r["variant"]).mkdir(parents=True)
        (results_dir / r["variant"] / "result.json").write_text(json.dumps(r))
    (results_dir / "unrelated.json").write_text(json.dumps({"loss": 1.0}))
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "-m", "vld.report", "--results", str(results_dir),
                          "--out", str(out), "--profile", "cli"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads((out / "metrics.json").read_text())["n_variants"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    run = subprocess.run([sys.executable, "-m", "vld.report", "--results", str(empty), "--out",
                          str(tmp_path / "r2")], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"vld: error: --results: no variant or lm-eval results found in {empty}"]


def test_user_defined_pattern_and_unknown_factor_are_reported(tmp_path):
    custom = result("r4-middle", "reasoning", "middle_cycle", 1, 4,
                    igsm={"op15": igsm_scores(47, 100)})
    explicit = {**result("r4-order", "reasoning", "custom", 1, 4, igsm={"op15": igsm_scores(41, 100)}),
                "k": None}
    build_report(reasoning_set()[:2] + [custom, explicit], tmp_path / "rep", "p")
    rows = {(r["pattern"], r["VLD"]): r for r in read_csv(tmp_path / "rep" / "table1.csv")}
    assert rows[("middle_cycle", "x1")]["4L op15 (ours)"].startswith("47.0 [")
    assert rows[("middle_cycle", "x1")]["paper 4L op15"] == ""  # not a pattern of the paper
    assert rows[("custom", "-")]["4L op15 (ours)"].startswith("41.0 [")
    assert list(rows)[:2] == [("base", "-"), ("cycle", "x1")]  # the paper's patterns first


def test_table1_says_whether_any_variant_learned(full_report, tmp_path):
    out, _ = full_report
    # best Table 1 group over both tests: r8 cycle x1, (58 + 29) / 200, against 10 / 100 each
    assert ("- Learned: the best variant (cycle x1, 8 layers) answers 43.5% of its 200 test problems, against "
            "10.0% for always giving the most common train answer (4.3x; learned means at least 3x).\n"
            ) in (out / "table1.md").read_text()

    at_chance = [result("base", "reasoning", "base", 0, 2, igsm={"op2": igsm_scores(2, 100, baseline_hits=4)}),
                 result("cycle", "reasoning", "cycle", 1, 2, igsm={"op2": igsm_scores(3, 100, baseline_hits=4)})]
    build_report(at_chance, tmp_path / "report", "chance")
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["reasoning_verdict"]["learned"] == 0
    assert ("- **Not learned**: the best variant (cycle x1, 2 layers) answers 3.0% of its 100 test problems, "
            "against 4.0% for always giving the most common train answer (0.8x; learned means at least 3x). "
            "Differences between rows are noise here, not effects of depth; train longer or on an easier "
            "setting (docs/igsm_learnability.md).\n") in (tmp_path / "report" / "report.md").read_text()


def test_learning_ratio_is_never_printed_across_the_bar(tmp_path):
    """cpu-2h's cycle x2 answered 2.97x the most-common-answer rate: rounded to one decimal that
    read "3.0x" beside "learned means at least 3x" and a Not learned verdict."""
    from vld.report.tables import ratio_text

    assert [ratio_text(r) for r in (2.97, 2.9996, 3.04, 3.0, 0.8, 4.25)] == [
        "2.97x", "2.9996x", "3.0x", "3.0x", "0.8x", "4.2x"]
    near = [result("base", "reasoning", "base", 0, 2, igsm={"op2": igsm_scores(297, 1000, baseline_hits=100)})]
    build_report(near, tmp_path / "near", "near")
    report = (tmp_path / "near" / "report.md").read_text()
    assert "- **Not learned**: the best variant (base, 2 layers) answers 29.7% of its 1000 test problems, " \
           "against 10.0% for always giving the most common train answer (2.97x; learned means at least 3x)." in report


def test_a_panel_without_labelled_lines_asks_for_no_legend(tmp_path):
    """The tiny profile's case: one knowledge model, no VLD variant to compare with it; (b, c)
    hold only their unlabelled zero line, and matplotlib warns when asked for a legend there."""
    import warnings

    from vld.report.figures import figure4

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert figure4(knowledge_set()[:1], tmp_path / "figure4.png")


def test_report_lists_the_machines_that_trained_its_models(tmp_path):
    """report.md names each machine and run setting with its model count, says when there are
    several (a seed's weights differ between them), and counts results without a record."""
    intel = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_vendor": "GenuineIntel", "cpu_family": 6, "cpu_model": 207,
             "cpu_flags": ["avx2", "avx512f"], "cores": 2, "torch": "2.13.0", "threads": 2, "cpu_gemm": "blas",
             "precision": "32-true"}
    amd = {**intel, "cpu": "AMD EPYC", "cpu_vendor": "AuthenticAMD", "cpu_family": 25, "cpu_model": 17,
           "cpu_gemm": "onednn", "threads": 1}
    results = khop_set() + khop_table7_set()[:1]  # the last without a record
    for r, machine in zip(results, [intel, intel, amd]):
        r["trained_on"] = machine
    intel_line = ("- Intel(R) Xeon(R) Processor (GenuineIntel, family 6 model 207), avx2 avx512f, torch 2.13.0, "
                  "threads 2, cpu_gemm blas, precision 32-true: 2 models")
    amd_line = ("- AMD EPYC (AuthenticAMD, family 25 model 17), avx2 avx512f, torch 2.13.0, "
                "threads 1, cpu_gemm onednn, precision 32-true: 1 model")
    build_report(results, tmp_path / "mixed", "p")
    lines = (tmp_path / "mixed" / "report.md").read_text().splitlines()
    assert lines[4].startswith("Trained on 2 machines or settings: the same seed trains to other weights")
    assert lines[5:10] == ["", amd_line, intel_line,  # sorted by label
                           "- not recorded (trained before vld recorded its machine): 1 model", ""]

    for r in results:
        r["trained_on"] = intel
    build_report(results, tmp_path / "one", "p")
    lines = (tmp_path / "one" / "report.md").read_text().splitlines()
    assert lines[4:8] == ["Trained on:", "", intel_line.replace(": 2 models", ": 4 models"), ""]
