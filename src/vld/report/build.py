"""Build the report: markdown + CSV tables, PNG figures, report.md and metrics.json.

`build_report(results, out_dir, profile_name)` writes everything into `out_dir` in one
atomic directory swap and returns the written paths. Pieces without results (no knowledge
variants, no layer-subset variants, no retrofit) are skipped with a note in report.md.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from vld.atomic import atomic_dir, check_replaceable
from vld.errors import fail
from vld.eval.variant import check_result
from vld.report import tables
from vld.report.tables import Table


def load_results(sources) -> list[dict]:
    """Variant results from dicts, JSON file paths, or directories (searched recursively for
    *.json files whose "schema" is a variant result; other JSON files there are ignored)."""
    if isinstance(sources, (str, Path, dict)):
        sources = [sources]
    results = []
    for source in sources:
        if isinstance(source, dict):
            results.append(check_result(source, f"results[{len(results)}]"))
            continue
        path = Path(source)
        if path.is_dir():
            for file in sorted(path.rglob("*.json")):
                data = _read_json(file)
                if isinstance(data, dict) and str(data.get("schema", "")).startswith("vld.variant/"):
                    results.append(check_result(data, str(file)))
        elif path.is_file():
            results.append(check_result(_read_json(path), str(path)))
        else:
            fail(str(path), "no such results file or directory")
    # Variant names are unique within a kind (reasoning "base" and retrofit "base" may coexist).
    names: dict[tuple[str, str], int] = {}
    for result in results:
        key = (result["kind"], str(result["variant"]))
        names[key] = names.get(key, 0) + 1
    duplicated = sorted(key for key, count in names.items() if count > 1)
    if duplicated:
        kind, name = duplicated[0]
        fail(f"results.{kind}.{name}", "more than one result for this variant")
    return results


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        fail(str(path), f"cannot read a JSON result ({type(err).__name__})")


def _cell(value) -> str:
    return str(value).replace("|", "/").replace("\n", " ")


def markdown(table: Table, level: int = 2) -> str:
    lines = [f"{'#' * level} {table.title}", ""]
    lines.append("| " + " | ".join(_cell(c) for c in table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
    lines.append("")
    lines += [f"- {note}" for note in table.notes]
    if table.paper is not None:
        lines += ["", markdown(table.paper, level + 1)]
    return "\n".join(lines).rstrip() + "\n"


def csv_text(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows(table.rows)
    return buffer.getvalue()


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def metrics_summary(results: list[dict], profile_name: str) -> dict:
    """Numbers for `dvc metrics show`: per kind and variant (variants: {kind: {name: {...}}}),
    and the best reasoning variant against the most-common-answer baseline (accuracy /
    baseline rate, on the first test)."""
    variants: dict[str, dict] = {}
    for r in sorted(results, key=lambda r: (r["kind"], r["variant"])):
        entry = {key: r[key] for key in ("params", "params_no_embed", "effective_depth",
                                          "flops_per_token", "train_tokens_per_s")
                 if _finite(r.get(key))}
        for test, scores in sorted((r.get("igsm") or {}).items()):
            entry[f"igsm_{test}_answer_accuracy"] = scores.get("answer_accuracy")
            entry[f"igsm_{test}_n"] = scores.get("n")
            rate = (scores.get("baseline") or {}).get("rate")
            if rate is not None:
                entry[f"igsm_{test}_baseline_rate"] = rate
        for measure in tables.MEASURE_LABELS:
            bits = tables.knowledge_bits(r, measure)
            if bits is not None:
                entry[f"knowledge_{measure}_absorbed_bits"] = bits
        variants.setdefault(r["kind"], {})[r["variant"]] = {k: v for k, v in entry.items() if _finite(v)}
    summary: dict = {"profile": profile_name, "n_variants": len(results), "variants": variants}
    reasoning = [r for r in results if r["kind"] == "reasoning" and r.get("igsm")]
    if reasoning:
        first = tables.test_names(reasoning)[0]
        scored = [(r["igsm"][first]["answer_accuracy"], r["variant"], r["igsm"][first])
                  for r in reasoning if first in r["igsm"]
                  and r["igsm"][first].get("answer_accuracy") is not None]
        if scored:
            accuracy, name, scores = max(scored, key=lambda s: (s[0], s[1]))
            rate = (scores.get("baseline") or {}).get("rate")
            summary["best_reasoning"] = {
                "variant": name, "test": first, "answer_accuracy": accuracy,
                "baseline_rate": rate,
                "ratio_to_baseline": accuracy / rate if rate else None}
        # Table 1's verdict, over all tests and seeds: a number to compare experiments by
        best = tables.best_variant(tables.pooled_igsm(tables.table1_results(results)))
        if best is not None:
            summary["reasoning_verdict"] = {
                "variant": best.name, "n": best.n, "answer_accuracy": best.accuracy,
                "baseline_rate": best.baseline, "ratio_to_baseline": best.ratio, "learned": int(best.learned)}
    return summary


SKIP_NOTES = {
    "table1": "Table 1 skipped: no reasoning variants with iGSM results.",
    "figure3": "Figure 3 skipped: no reasoning variants with iGSM results.",
    "figure4": "Figure 4 skipped: no knowledge variants with absorbed-bits measures.",
    "figure1": "Figure 1 skipped: needs a knowledge and a reasoning result of the same pattern and factor.",
    "table7": "Table 7 skipped: no layer-subset variants (a `layers` range) in this profile.",
    "table2": "Table 2 analogue skipped: no retrofit variants in this profile.",
    "depth": "Depth use skipped: no variant has per-layer depth measurements.",
}


def build_report(results, out_dir, profile_name: str = "default") -> list[Path]:
    """Write the report for `results` (dicts, JSON paths or result directories) into
    `out_dir`, replacing it atomically; returns the written files (final paths)."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    results = load_results(results)
    written: list[str] = []
    from vld.report import figures

    with atomic_dir(out_dir) as tmp:
        def put(name: str, text: str) -> str:
            (tmp / name).write_text(text, encoding="utf-8")
            written.append(name)
            return name

        sections = [f"# vld report: profile `{profile_name}`", "",
                    f"{len(results)} variant results. Numbers labelled **paper** are the paper's "
                    "own (arXiv 2506.18233); everything else was measured by this pipeline.", ""]

        def add_table(table: Table | None, skip_key: str | None, figure: str | None = None):
            if table is None:
                if skip_key:
                    sections.extend([f"> {SKIP_NOTES[skip_key]}", ""])
                return
            put(f"{table.name}.md", markdown(table))
            put(f"{table.name}.csv", csv_text(table))
            if table.paper is not None:
                put(f"{table.paper.name}.csv", csv_text(table.paper))
            sections.append(markdown(table))
            links = [f"[{table.name}.csv]({table.name}.csv)"]
            if table.paper is not None:
                links.append(f"[{table.paper.name}.csv]({table.paper.name}.csv)")
            if figure:
                links.append(f"[{figure}]({figure})")
                sections.extend([f"![{table.title}]({figure})", ""])
            sections.extend(["Files: " + ", ".join(links), ""])

        add_table(tables.table1(results), "table1")
        long_form = tables.table1_long(results)
        if long_form is not None:
            put("table1_long.csv", csv_text(long_form))
            put("table1_paper.csv", csv_text(tables.table1_paper()))
            sections.append(markdown(tables.table1_paper(), 3))
            sections.extend(["Files: [table1_long.csv](table1_long.csv), "
                             "[table1_paper.csv](table1_paper.csv)", ""])

        if figures.figure3(results, tmp / "figure3.png"):
            written.append("figure3.png")
            sections.extend(["## Figure 3: accuracy vs effective depth", "",
                             "![Figure 3](figure3.png)", "",
                             "- Points from [table1_long.csv](table1_long.csv); error bars are 95% "
                             "Wilson intervals; the last panel is the paper's Table 1 (op15) and "
                             "12-layer native value.", ""])
        else:
            sections.extend([f"> {SKIP_NOTES['figure3']}", ""])

        knowledge = tables.knowledge_table(results)
        has_figure4 = figures.figure4(results, tmp / "figure4.png")
        if has_figure4:
            written.append("figure4.png")
        add_table(knowledge, "figure4", "figure4.png" if has_figure4 else None)
        if knowledge is not None and not has_figure4:
            sections.extend([f"> {SKIP_NOTES['figure4']}", ""])

        pairs = tables.figure1_pairs(results)
        has_figure1 = figures.figure1(pairs, tmp / "figure1.png")
        if has_figure1:
            written.append("figure1.png")
        add_table(tables.figure1_table(pairs), "figure1", "figure1.png" if has_figure1 else None)

        add_table(tables.table7(results), "table7")
        add_table(tables.table2(results), "table2")
        add_table(tables.compute_table(results), None)

        depth = tables.depth_table(results)
        add_table(depth, "depth")
        if depth is not None:
            for kind in ("reasoning", "knowledge", "retrofit"):
                name = f"depth_{kind}.png"
                if figures.depth_figure(results, tmp / name, kind):
                    written.append(name)
                    sections.extend([f"![depth use, {kind}]({name})", ""])

        summary = metrics_summary(results, profile_name)
        put("metrics.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        sections.extend(["## Summary metrics", "",
                         "[metrics.json](metrics.json) (for `dvc metrics show`).", ""])
        put("report.md", "\n".join(sections).rstrip() + "\n")
    return [out_dir / name for name in written]
