"""Build the report: markdown + CSV tables, PNG figures, report.md and metrics.json.

`build_report(results, out_dir, profile_name)` writes everything into `out_dir` in one
atomic directory swap and returns the written paths. The report is the list of pieces in
`_pieces()`, in order; a piece without results (no knowledge variants, no layer-subset
variants, no retrofit) prints its skip note in report.md instead.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Callable

from vld.atomic import atomic_dir, check_replaceable
from vld.errors import fail
from vld.machine import machine_label
from vld.report import plot_data, tables
from vld.report.tables import Table
from vld.result_schema import check_result


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
    # One result per seed of a variant; names are unique within a family (reasoning "base" and
    # retrofit "base" may coexist).
    names: dict[tuple[str, str, str], int] = {}
    for result in results:
        key = (result["family"], str(result["variant"]), str(result.get("seed")))
        names[key] = names.get(key, 0) + 1
    duplicated = sorted(key for key, count in names.items() if count > 1)
    if duplicated:
        family, name, seed = duplicated[0]
        fail(f"results.{family}.{name}", f"more than one result for seed {seed} of this variant")
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


def _seed_metrics(r: dict) -> tuple[dict, dict]:
    """One result's numbers for metrics.json (finite ones only): (measures, counts). Over a
    variant's seeds the measures are averaged and the counts (test items) summed (_over_seeds)."""
    measures = {key: r.get(key) for key in ("params", "params_no_embed", "effective_depth",
                                             "flops_per_token", "train_tokens_per_s")}
    counts = {}
    for test, scores in sorted((r.get("igsm") or {}).items()):
        measures[f"igsm_{test}_answer_accuracy"] = scores.get("answer_accuracy")
        counts[f"igsm_{test}_n"] = scores.get("n")
        rate = (scores.get("baseline") or {}).get("rate")
        if rate is not None:
            measures[f"igsm_{test}_baseline_rate"] = rate
    for measure in tables.MEASURE_LABELS:
        bits = tables.knowledge_bits(r, measure)
        if bits is not None:
            measures[f"knowledge_{measure}_absorbed_bits"] = bits
    for hops, cell in sorted(((r.get("khop") or {}).get("hops") or {}).items(), key=lambda kv: int(kv[0])):
        measures[f"khop_k{hops}_error"] = cell["error"]
    return tuple({k: v for k, v in numbers.items() if _finite(v)} for numbers in (measures, counts))


def _over_seeds(per_seed: list[tuple[dict, dict]]) -> dict:
    """A variant's numbers from its seeds' (measures, counts) (_seed_metrics): each measure the
    mean over the seeds that have it, each count summed. Every seed is scored on the same test
    set, so the mean of the seeds' accuracies and errors is the pooled figure the report's tables show."""
    def combine(entries: list[dict], over) -> dict:
        keys = {key for entry in entries for key in entry}
        return {key: over([entry[key] for entry in entries if key in entry]) for key in keys}

    combined = {**combine([m for m, _ in per_seed], mean), **combine([c for _, c in per_seed], sum)}
    return dict(sorted(combined.items()))


def metrics_summary(results: list[dict], profile_name: str, lm_results: list[dict] = ()) -> dict:
    """Numbers for `dvc metrics show`: per family and variant, over its seeds (variants: {family:
    {name: {..., "seeds": n}}}, _over_seeds; n_variants counts variants, n_results their seeds'
    results), the best reasoning variant against the most-common-answer baseline (accuracy /
    baseline rate, on the first test), and every claim's verdict (vld.report.claims;
    `lm_results`: the lm-eval results, for claim 6 on a language model)."""
    variants: dict[str, dict] = {}
    for (family, name), seeds in sorted(tables.seeds_by_variant(results).items()):
        variants.setdefault(family, {})[name] = {**_over_seeds([_seed_metrics(r) for r in seeds]), "seeds": len(seeds)}
    summary: dict = {"profile": profile_name, "n_variants": sum(len(table) for table in variants.values()),
                     "n_results": len(results), "variants": variants}  # a result per seed
    reasoning = [r for r in results if r["family"] in tables.PRETRAINED_IGSM and r.get("igsm")]
    if reasoning:
        first = tables.test_names(reasoning)[0]
        key = f"igsm_{first}_answer_accuracy"
        scored = [(entry[key], name, entry.get(f"igsm_{first}_baseline_rate"))
                  for family in sorted({r["family"] for r in reasoning}) for name, entry in variants[family].items()
                  if key in entry]
        if scored:
            accuracy, name, rate = max(scored, key=lambda s: (s[0], s[1]))
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
    if results or lm_results:
        from vld.report.claims import claims_metrics

        summary["claims"] = claims_metrics(results, lm_results)
    return summary


@dataclass(frozen=True)
class Piece:
    """One part of the report: a table (markdown + CSV), figures, or both, and the note printed
    instead when the results hold nothing for it."""

    skip: str
    table: Callable[[list], Table | None] | None = None
    figures: Callable[[list, Path], list[str]] | None = None  # writes PNGs into a dir, returns names
    csv_only: tuple[Callable[[list], Table | None], ...] = ()  # long forms, written as CSV
    caption: str = ""  # under the figures


def _one(name: str, draw: Callable[[list, Path], bool]) -> Callable[[list, Path], list[str]]:
    return lambda results, where: [name] if draw(results, where / name) else []


def _depth_figures(results: list, where: Path) -> list[str]:
    from vld.report import figures

    return [f"depth_{family}.png" for family in sorted({r["family"] for r in results})
            if figures.depth_figure(results, where / f"depth_{family}.png", family)]


def _renamed(table: Table | None, name: str, title: str) -> Table | None:
    return None if table is None else dataclasses.replace(table, name=name, title=title)


def _depth_use_pieces(results: list) -> list[Piece]:
    """Per family with ablation results: ablations, early exit (tables and figures); then the
    regime of every variant and the depth laws of the profile."""
    from vld.report import depth_use as du

    pieces = []
    for family in sorted({r["family"] for r in results if (r.get("depth_use") or {}).get("metrics")}):
        own = lambda rs, f=family: [r for r in rs if r["family"] == f]
        pieces += [
            Piece("", lambda rs, f=family: _renamed(du.depth_use_table(own(rs, f)), f"depth_use_{f}",
                                                   f"Depth use ({f}): causal ablations per virtual layer"),
                  lambda rs, where, f=family: [p.name for p in [du.depth_use_figure(own(rs, f), where / f"depth_use_{f}.png",
                                                                                  title=f"Ablations ({f})")] if p]),
            Piece("", lambda rs, f=family: _renamed(du.early_exit_table(own(rs, f)), f"early_exit_{f}",
                                                   f"Early exit ({f}) through the logit lens"),
                  lambda rs, where, f=family: [p.name for p in [du.early_exit_figure(own(rs, f), where / f"early_exit_{f}.png",
                                                                                   title=f"Early exit ({f})")] if p]),
        ]
    from vld.report import figures

    laws = lambda rs: du.profile_depth_laws(rs)

    def law_figures(rs, where):
        names = []
        for label, law in laws(rs).items():
            slug = re.sub(r"[^a-z0-9]+", "_", label.lower().replace(">=", "ge")).strip("_")
            path = du.depth_law_figure(law, where / f"depth_law_{slug}.png", metric_label=label, title=f"Depth law: {label}",
                                       warning=figures.not_learned_note(rs, label.split(":")[0]))
            names += [path.name] if path else []
        return names

    def regimes(rs):
        table = du.regime_table(rs)
        return None if table is None else dataclasses.replace(table, notes=du.regime_lines(rs) + table.notes)

    pieces += [Piece("Depth regime skipped: no variant has ablation results (eval.ablations).", regimes),
               Piece("Depth law skipped: fewer than two depths in any family.", lambda rs: du.depth_law_table(laws(rs)),
                     law_figures)]
    return pieces


def _scaling_pieces(results: list) -> list[Piece]:
    """Error against effective depth, learning curves, and test-time depth per family."""
    from vld.report import scaling

    def looped(family):
        name = f"test_time_depth_{family}.png"
        return Piece("", lambda rs: scaling.test_time_table(rs, family),
                     lambda rs, where: [name] if scaling.test_time_figure(rs, where / name, family) else [])

    def curved(family):
        name = f"learning_curves_{family}.png"
        return Piece("", lambda rs: scaling.family_curves_table(rs, family),
                     lambda rs, where: [name] if scaling.family_curves_figure(rs, where / name, family) else [])

    return [Piece("", scaling.scaling_table, _one("scaling.png", scaling.scaling_figure)),
            Piece("", scaling.curves_table, _one("learning_curves.png", scaling.curves_figure)),
            *[curved(family) for family in scaling.curve_families(results)],
            *[looped(family) for family in scaling.test_time_families(results)]]


def trained_on_lines(results: list[dict]) -> list[str]:
    """report.md's list of what trained the models it compares (each result's `trained_on`,
    vld.machine), with the count of models per machine and run setting. Where there are several,
    it says so: the same seed trains to other weights on each, so only seeds make them comparable."""
    counts = Counter(machine_label(r["trained_on"]) if r.get("trained_on") else None for r in results)
    recorded = sorted((label, n) for label, n in counts.items() if label is not None)
    if not recorded and not counts.get(None):
        return []
    if len(recorded) > 1:
        head = (f"Trained on {len(recorded)} machines or settings: the same seed trains to other weights "
                "on each, so compare the seeds' spread, not one run's digits.")
    else:
        head = "Trained on:"
    lines = [f"- {label}: {n} model{'s' if n != 1 else ''}" for label, n in recorded]
    if counts.get(None):
        lines.append(f"- not recorded (trained before vld recorded its machine): {counts[None]} "
                     f"model{'s' if counts[None] != 1 else ''}")
    return [head, "", *lines, ""]


def _pieces(results: list, lm_results: list = ()) -> list[Piece]:
    """`lm_results`: the lm_retrofit family's lm-eval results (their own schema, vld.report.lm_table2)."""
    from vld.report import claims, figures, khop
    from vld.report.lm_table2 import lm_table2

    figure1 = lambda results, path: figures.figure1(tables.figure1_pairs(results), path)
    return [
        Piece("Claims skipped: no results.", lambda results: claims.claims_table(results, list(lm_results))),
        Piece("Table 1 skipped: no reasoning variants with iGSM results.", tables.table1,
              csv_only=(tables.table1_long, lambda results: tables.table1_paper() if tables.table1_results(results) else None)),
        Piece("Figure 3 skipped: no reasoning variants with iGSM results.", None, _one("figure3.png", figures.figure3),
              caption="Figure 3: accuracy vs effective depth. Points from table1_long.csv; error bars are 95% intervals "
                      "(Wilson for one seed, else seeds and problems resampled); the last panel is the paper's Table 1 (op15) and 12-layer native value."),
        Piece("k-hop skipped: no k-hop variants in this profile.", khop.khop_table, _one("khop.png", figures.khop_figure),
              csv_only=(khop.khop_long,)),
        *_scaling_pieces(results),
        Piece("Figure 4 skipped: no knowledge variants with absorbed-bits measures.", tables.knowledge_table,
              _one("figure4.png", figures.figure4)),
        Piece("Figure 1 skipped: needs a knowledge and a reasoning result of the same pattern and factor.",
              lambda results: tables.figure1_table(tables.figure1_pairs(results)), _one("figure1.png", figure1)),
        Piece("Table 7 skipped: no layer-subset variants (a `layers` range) in this profile.", tables.table7),
        Piece("Table 7 on k-hop skipped: no layer-subset k-hop variants in this profile.", khop.khop_table7),
        Piece("Table 2 analogue skipped: no retrofit variants in this profile.", tables.table2),
        Piece("", lambda results: lm_table2(list(lm_results))),
        Piece("Table 2 on k-hop skipped: no k-hop retrofit variants in this profile.", khop.khop_retrofit_table),
        Piece("Compute skipped: no results.", tables.compute_table),
        Piece("Depth use skipped: no variant has per-layer depth measurements.", tables.depth_table, _depth_figures),
        *_depth_use_pieces(results),
    ]


def build_report(results, out_dir, profile_name: str = "default", curves: list[dict] = ()) -> list[Path]:
    """Write the report for `results` (dicts, JSON paths or result directories: variant results
    and lm-eval results, vld.report.lm_table2) into `out_dir`, replacing it atomically; returns
    the written files (final paths). `curves`: the training loss curves for loss_curves.csv
    (vld.report.plot_data.loss_rows)."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    from vld.report.lm_table2 import is_lm_result, load_lm_results

    sources = [results] if isinstance(results, (str, Path, dict)) else list(results)
    # lm-eval results (the lm_retrofit family's own schema), as dicts (the report stage reads
    # every evaluation file) or under result directories
    lm_results = [s for s in sources if is_lm_result(s)] + load_lm_results(
        [s for s in sources if isinstance(s, (str, Path))])
    results = load_results([s for s in sources if not is_lm_result(s)])
    written: list[str] = []

    with atomic_dir(out_dir) as tmp:
        def put(name: str, text: str) -> None:
            (tmp / name).write_text(text, encoding="utf-8")
            written.append(name)

        sections = [f"# vld report: profile `{profile_name}`", "",
                    f"{len(results)} variant results. Numbers labelled **paper** are the paper's "
                    "own (arXiv 2506.18233); everything else was measured by this pipeline.", "",
                    *trained_on_lines(results)]
        for piece in _pieces(results, lm_results):
            table = piece.table(results) if piece.table else None
            pictures = piece.figures(results, tmp) if piece.figures else []
            written.extend(pictures)
            if table is None and not pictures:
                if piece.skip:
                    sections.extend([f"> {piece.skip}", ""])
                continue
            links = []
            if table is not None:
                put(f"{table.name}.md", markdown(table))
                put(f"{table.name}.csv", csv_text(table))
                links.append(f"[{table.name}.csv]({table.name}.csv)")
                if table.paper is not None:
                    put(f"{table.paper.name}.csv", csv_text(table.paper))
                    links.append(f"[{table.paper.name}.csv]({table.paper.name}.csv)")
                sections.append(markdown(table))
            for extra in piece.csv_only:
                long_form = extra(results)
                if long_form is not None:
                    put(f"{long_form.name}.csv", csv_text(long_form))
                    links.append(f"[{long_form.name}.csv]({long_form.name}.csv)")
            for picture in pictures:
                sections.extend([f"![{picture}]({picture})", ""])
                links.append(f"[{picture}]({picture})")
            if piece.caption:
                sections.extend([f"- {piece.caption}", ""])
            sections.extend(["Files: " + ", ".join(links), ""])

        plotted = plot_data.write_plot_data(tmp, results, list(curves))
        written.extend(plotted)
        summary = metrics_summary(results, profile_name, lm_results)
        put("metrics.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
        sections.extend(["## Summary metrics", "",
                         "[metrics.json](metrics.json) (for `dvc metrics show`).", ""])
        if plotted:
            sections.extend(["Plot data for `dvc plots show`: " + ", ".join(f"[{n}]({n})" for n in plotted), ""])
        put("report.md", "\n".join(sections).rstrip() + "\n")
    return [out_dir / name for name in written]
