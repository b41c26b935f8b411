"""The report's plot data: the CSV files dvc.yaml's `plots:` section draws (dvc plots show / diff).

Each file is long-form, one row per point, with a `series` column (what the line is: a variant
group, a schedule, a trained model) that the templates in conf/plots/ colour by:

- khop_error.csv: series (variant group), hops, error, low, high (95% interval), seeds;
- knowledge_bits.csv: series (schedule), variant, seed, d_model, params, absorbed_bits (paper
  measure), absorbed_bits_ce (cross-entropy measure);
- loss_curves.csv: series (family/variant), seed, step, loss (training loss per step).
"""

from __future__ import annotations

import csv
from pathlib import Path

from vld.report import tables

def khop_rows(results: list[dict]) -> list[list]:
    from vld.report.khop import pooled_errors

    rows = []
    pooled = pooled_errors(results)
    steps = len({group.train_steps for group in pooled}) > 1  # a longer-trained baseline: say so
    for group in sorted(pooled, key=lambda g: tables.group_name(g, steps)):
        for hops, cell in sorted(pooled[group].items(), key=lambda kv: int(kv[0])):
            rows.append([tables.group_name(group, steps), int(hops), cell.error, *cell.interval, cell.seeds])
    return rows


def knowledge_rows(results: list[dict]) -> list[list]:
    rows = []
    for r in sorted((r for r in results if r["family"] == "knowledge"),
                    key=lambda r: (r.get("d_model") or 0, r["variant"], r.get("seed") or 0)):
        bits = tables.knowledge_bits(r, "entropy"), tables.knowledge_bits(r, "cross_entropy")
        if bits == (None, None):
            continue
        series = str(r["pattern"]).replace("_", " ") + (f" {tables.vld_label(r['k'])}" if r["k"] else "")
        rows.append([series, r["variant"], r.get("seed"), r.get("d_model"), r["params"],
                     *("" if b is None else b for b in bits)])
    return rows


def loss_rows(curves: list[dict]) -> list[list]:
    """`curves`: {"family", "variant", "seed", "loss_curve": [loss at step 1, 2, ...]} each."""
    return [[f"{c['family']}/{c['variant']}", c["seed"], step, loss]
            for c in sorted(curves, key=lambda c: (c["family"], c["variant"], c["seed"]))
            for step, loss in enumerate(c["loss_curve"], start=1)]


def write_plot_data(out_dir: Path, results: list[dict], curves: list[dict]) -> list[str]:
    """Write the plot files that have rows into `out_dir`; returns their names (DVC skips a plot
    whose file is absent)."""
    contents = {
        "khop_error.csv": (["series", "hops", "error", "low", "high", "seeds"], khop_rows(results)),
        "knowledge_bits.csv": (["series", "variant", "seed", "d_model", "params", "absorbed_bits",
                                "absorbed_bits_ce"], knowledge_rows(results)),
        "loss_curves.csv": (["series", "seed", "step", "loss"], loss_rows(curves)),
    }
    written = []
    for name, (header, rows) in contents.items():
        if not rows:
            continue
        written.append(name)
        with open(Path(out_dir) / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
    return written
