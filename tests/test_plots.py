"""DVC plots of the report's data: the plot files' rows, and `dvc plots show` / `dvc plots diff`
on the project's plot definitions and offline page, in a temporary repository (real DVC)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_report import khop_cells, knowledge_set, result
from vld.report.build import build_report

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ("khop_error", "knowledge_bits", "loss_curves")
TICKS = "max(1, min(ceil(width / 40), span(domain('x'))))"  # vega-lite's default count, at most the span


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def khop_results() -> list[dict]:
    # two seeds of base with the same errors: pooled, 2 seeds, a zero-width interval
    cells = khop_cells({0: 0.0, 2: 0.25})
    return [result("h-base", "khop", "base", 0, 2, khop=cells, depth=False, seed=0),
            result("h-base", "khop", "base", 0, 2, khop=cells, depth=False, seed=1),
            result("h-cycle", "khop", "cycle", 1, 2, khop=khop_cells({0: 0.0, 2: 0.125}), depth=False)]


CURVES = [{"family": "reasoning", "variant": "base", "seed": 1, "loss_curve": [2.5, 2.0]},
          {"family": "khop", "variant": "cycle", "seed": 0, "loss_curve": [1.5, 1.25, 1.0]}]


def test_plot_files_hold_every_point(tmp_path):
    written = build_report(khop_results() + knowledge_set(), tmp_path / "report", "p", CURVES)
    assert {p.name for p in written} >= {f"{name}.csv" for name in PLOTS}
    out = tmp_path / "report"
    assert rows(out / "khop_error.csv") == [
        ["series", "hops", "error", "low", "high", "seeds"],
        ["base, 2 layers", "0", "0.0", "0.0", "0.0", "2"], ["base, 2 layers", "2", "0.25", "0.25", "0.25", "2"],
        ["cycle x1, 2 layers", "0", "0.0", "0.0", "0.0", "1"], ["cycle x1, 2 layers", "2", "0.125", "0.125", "0.125", "1"]]
    # knowledge_set: params = 1000 * n_layer * d_model; k-small's own per-param figure is not a plot column
    assert rows(out / "knowledge_bits.csv") == [
        ["series", "variant", "seed", "d_model", "params", "absorbed_bits", "absorbed_bits_ce"],
        ["base", "k-small", "0", "32", "64000", "1000.0", "800.0"],
        ["base", "k-big", "0", "64", "256000", "3000.0", "2500.0"],
        ["cycle x1", "k-big-cycle-x1", "0", "64", "256000", "3100.0", "2450.0"],
        ["sequence x1", "k-big-sequence-x1", "0", "64", "256000", "2900.0", "2400.0"]]
    assert rows(out / "loss_curves.csv") == [
        ["series", "seed", "step", "loss"],
        ["khop/cycle", "0", "1", "1.5"], ["khop/cycle", "0", "2", "1.25"], ["khop/cycle", "0", "3", "1.0"],
        ["reasoning/base", "1", "1", "2.5"], ["reasoning/base", "1", "2", "2.0"]]
    report = (out / "report.md").read_text()
    assert all(f"({name}.csv)" in report for name in PLOTS)


def test_a_plot_without_data_writes_no_file(tmp_path):
    written = build_report(knowledge_set(), tmp_path / "report", "p")
    assert [p.name for p in written if p.stem in PLOTS] == ["knowledge_bits.csv"]


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()}
    env.update(DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@e", PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _page(path: Path) -> str:
    page = path.read_text()
    # offline: no script loaded from anywhere, and the renderer is on the page itself
    assert not re.search(r"<script[^>]*\bsrc\s*=", page)
    assert "vegaEmbed" in page and "vega-lite" in page
    return page


def test_dvc_plots_show_and_diff_offline(tmp_path):
    """The project's plot definitions (dvc.yaml) and offline page (.dvc/config) in a git + DVC
    repository holding a report: `dvc plots show` draws the three plots from the data, and
    `dvc plots diff` draws the workspace against a commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copy(ROOT / "conf/profiles/tiny.yaml", repo / "params.yaml")  # dvc.yaml's foreach reads it
    shutil.copytree(ROOT / "conf/plots", repo / "conf/plots")
    build_report(khop_results() + knowledge_set(), repo / "results/report", "p", CURVES)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        _dvc(repo, *cmd)
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "report"]):
        _dvc(repo, *cmd)

    shown = _dvc(repo, "dvc", "plots", "show", "-o", str(tmp_path / "show"))
    assert shown.stdout.strip() == (tmp_path / "show/index.html").as_uri()
    page = _page(tmp_path / "show/index.html")
    for name in PLOTS:
        assert f'<div id = "{name}">' in page and f"vegaEmbed('#{name}', spec)" in page
    assert '"hops": "2", "error": "0.125"' in page  # the data is in the spec, by field
    # hop counts, widths and steps are integers: their axes tick at whole numbers only. d3 picks a
    # step of 1, 2 or 5 x 10^k at least (domain span) / (tick count), so at most span ticks give
    # whole steps (vega's tickMinStep allows span + 1: 0, 0.5, 1, 1.5, 2 for hop counts 0..2)
    specs = {name: json.loads(spec) for spec, name in re.findall(r"var spec = (\{.*\});\s*vegaEmbed\('#(\w+)', spec\)",
                                                                  page)}
    assert set(specs) == set(PLOTS)
    for name, x in (("khop_error", "hops"), ("knowledge_bits", "d_model"), ("loss_curves", "step")):
        axes = [layer["encoding"]["x"] for layer in specs[name]["layer"]]
        assert axes and all(axis["field"] == x and axis["axis"] == {"tickCount": {"expr": TICKS}} for axis in axes)

    with open(repo / "results/report/loss_curves.csv", "a") as handle:
        handle.write("khop/cycle,0,4,0.75\n")
    _dvc(repo, "dvc", "plots", "diff", "HEAD", "-o", str(tmp_path / "diff"))
    page = _page(tmp_path / "diff/index.html")
    assert '"rev": "HEAD"' in page and '"rev": "workspace"' in page and '"loss": "0.75"' in page


def test_the_report_stage_reads_each_pretrained_seeds_curve(tmp_path, monkeypatch):
    from vld.errors import UserError
    from vld.pipeline.params import load_pipeline
    from vld.pipeline.report import training_curves

    shutil.copy(ROOT / "conf/profiles/tiny.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    # the tiny profile's pretrained variants and seeds (its retrofit is not a pretraining curve)
    trained = [("reasoning", "base", 0), ("reasoning", "cycle_x1", 0), ("reasoning", "answer_only", 0),
               ("knowledge", "w16", 0), ("khop", "base", 0), ("khop", "cycle_x1", 0), ("khop", "cycle_x1", 1),
               ("khop", "cycle_x1_layers1-1", 0)]
    for n, (family, variant, seed) in enumerate(trained):
        folder = tmp_path / f"results/pretrain/{family}/{variant}/seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"loss_curve": [float(n), 0.5], "steps": 2}))
    curves = training_curves(load_pipeline("params.yaml"))
    assert sorted((c["family"], c["variant"], c["seed"], tuple(c["loss_curve"])) for c in curves) == sorted(
        (family, variant, seed, (float(n), 0.5)) for n, (family, variant, seed) in enumerate(trained))

    (tmp_path / "results/pretrain/khop/cycle_x1/seed1/metrics.json").write_text("{}")
    with pytest.raises(UserError, match=r"results/pretrain/khop/cycle_x1/seed1/metrics.json: no readable loss_curve"):
        training_curves(load_pipeline("params.yaml"))
