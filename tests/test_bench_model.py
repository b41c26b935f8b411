"""bench/bench_model.py's k-hop section (issue 27) as a smoke test: each GEMM library it is asked
to race is the one the stacked models train with, and a mistyped library stops it before any
training."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_model.py"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--sections", "khop", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_unknown_cpu_gemm_fails_in_one_line_before_training():
    result = run_bench("--khop-cpu-gemm", "onednn,mkl")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "vld: error: --khop-cpu-gemm: unknown CPU GEMM library 'mkl' (known: auto, onednn, blas)"]
    assert "positions/s" not in result.stdout and "k-hop stages" not in result.stdout  # no run started


def test_khop_section_races_each_library():
    result = run_bench("--small", "--quick", "--khop-models", "h2", "--khop-cpu-gemm", "onednn,blas",
                       "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^positions/s, k-hop base \(h2\), this tree, cpu_gemm (\w+)\s+([\d,]+)\s+([\d.]+)",
                      result.stdout, re.MULTILINE)
    assert [library for library, _, _ in rows] == ["onednn", "blas"]
    rates = [float(rate.replace(",", "")) for _, rate, _ in rows]
    assert all(rate > 0 for rate in rates)
    # the printed ratio is the row's rate over the first row's
    assert abs(float(rows[1][2]) - rates[1] / rates[0]) < 0.006  # the rates are printed rounded
