"""The paper's Table 2 on a real language model: the lm_retrofit family's lm-eval results
(schema vld.lm_eval/1, vld.pipeline.evaluate_lm), Base and Cycle per task beside the paper's
numbers.

Each cell is a task's first metric that lm-eval gives a standard error for, in percent, with a
95% interval of 1.96 standard errors (items only: over seeds, the mean's standard error
sqrt(sum se^2) / n assumes the seeds' errors independent)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from vld.report import paper
from vld.report.tables import Table, pattern_key

SCHEMA_PREFIX = "vld.lm_eval/"
# lm-eval task names (their start) -> the paper's Table 2 rows
PAPER_ROWS = (("minerva_math500", "Math500"), ("hendrycks_math500", "Math500"), ("gpqa", "GPQA"),
              ("aime", "AIME"), ("humaneval", "HumanEval pass@1"), ("mbpp", "MBPP"))


def is_lm_result(data) -> bool:
    return isinstance(data, dict) and str(data.get("schema", "")).startswith(SCHEMA_PREFIX)


def load_lm_results(sources) -> list[dict]:
    """The lm_eval results under result directories (other JSON files are ignored)."""
    results = []
    for source in [sources] if isinstance(sources, (str, Path)) else sources:
        path = Path(source)
        if not path.is_dir():
            continue
        for file in sorted(path.rglob("*.json")):
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # vld.report.build reports unreadable files
            if is_lm_result(data):
                results.append(data)
    return results


def stderr_name(metric: str) -> str:
    """The name of a metric's standard error as vld.eval.lm_harness.run_tasks writes them: "acc" ->
    "acc_stderr"; under a filter (HumanEval's, MBPP's) "pass@1.create_test" -> "pass@1_stderr.create_test"."""
    name, dot, filtered = metric.partition(".")
    return f"{name}_stderr{dot}{filtered}"


def headline(measures: dict) -> str | None:
    """A task's first metric with a standard error."""
    return next((name for name in measures if not name.partition(".")[0].endswith("_stderr")
                 and stderr_name(name) in measures), None)


def paper_row(task: str) -> str | None:
    return next((row for prefix, row in PAPER_ROWS if task.startswith(prefix)), None)


def _cell(seeds: list[dict], task: str, metric: str) -> str:
    values = [s["tasks"][task][metric] for s in seeds if metric in s["tasks"].get(task, {})]
    errors = [s["tasks"][task].get(stderr_name(metric)) for s in seeds]
    if not values:
        return ""
    mean = sum(values) / len(values)
    if any(not isinstance(e, (int, float)) or e != e for e in errors):
        return f"{100 * mean:.2f}"
    half = 1.96 * math.sqrt(sum(e * e for e in errors)) / len(errors)
    return f"{100 * mean:.2f} [{100 * (mean - half):.2f}, {100 * (mean + half):.2f}]"


def lm_table2(results: list[dict]) -> Table | None:
    if not results:
        return None
    variants: dict[str, list[dict]] = {}
    for r in sorted(results, key=lambda r: (pattern_key(r["pattern"]), r.get("k") or 0, r["variant"], r["seed"])):
        variants.setdefault(r["variant"], []).append(r)
    tasks = sorted({task for r in results for task in r["tasks"]})
    labels = {name: f"{name} ({'Base' if seeds[0]['pattern'] == 'base' else seeds[0]['pattern']}, depth"
                    f" {seeds[0]['effective_depth']}, {len(seeds)} seed{'s' * (len(seeds) > 1)})"
              for name, seeds in variants.items()}
    header = ["task", "metric", *labels.values(), "paper Base", "paper Cycle"]
    rows = []
    for task in tasks:
        metric = next((headline(r["tasks"][task]) for r in results if task in r["tasks"]), None)
        if metric is None:
            continue
        row_paper = paper.TABLE2.get(paper_row(task) or "", {})
        rows.append([task, metric, *(_cell(seeds, task, metric) for seeds in variants.values()),
                     row_paper.get("base", ""), row_paper.get("cycle", "")])
    if not rows:
        return None
    return Table("table2_lm", "Table 2 on a language model: lm_retrofit, Base vs Cycle (lm-eval, %)", header, rows,
                 ["Each cell: the task's first metric with a standard error, percent, [95% interval: 1.96 lm-eval"
                  " standard errors, items only]; seeds averaged.",
                  "paper: LLaMA-3.2-3B-Instruct + LoRA rank 4; its tasks' exact prompts and decoding are not given."])
