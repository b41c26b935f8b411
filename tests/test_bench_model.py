"""bench/bench_model.py's k-hop section (issue 27) as a smoke test: each GEMM library and compile
setting it is asked to race is the one the stacked models train with, and a mistyped one stops
it before any training."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_model.py"
sys.path.insert(0, str(ROOT / "bench"))  # as the other bench tests import their scripts


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
    # the host's speed before and after the runs, in the first library asked for
    host = re.search(r"^host: GFLOP/s of \[4096 x 1024 -> 1024\] in onednn, start \| end\s+(\d+) \|\s*(\d+)\s+([\d.]+)",
                     result.stdout, re.MULTILINE)
    assert host, result.stdout
    start, end, ratio = map(float, host.groups())
    assert start > 0 and end > 0 and abs(ratio - end / start) <= 0.01 + 1 / start


def test_khop_section_races_eager_against_compiled():
    result = run_bench("--small", "--quick", "--khop-models", "h2", "--khop-compile", "off,on", "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^positions/s, k-hop base \(h2\), this tree, compile (\w+)\s+([\d,]+)", result.stdout, re.MULTILINE)
    assert [setting for setting, _ in rows] == ["off", "on"]  # each worker checked it trained so
    assert all(float(rate.replace(",", "")) > 0 for _, rate in rows)


def test_a_bad_compile_choice_fails_in_one_line_before_training():
    result = run_bench("--khop-compile", "yes")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["vld: error: --khop-compile: expected off and/or on, got 'yes'"]
    assert "positions/s" not in result.stdout


def test_hf_section_bounds_the_ceiling_share_by_the_replayed_kernels():
    result = subprocess.run([sys.executable, str(SCRIPT), "--sections", "hf", "--quick", "--width", "64", "--heads", "2",
                             "--seq", "64", "--batch", "4", "--vocab", "64", "--layers", "2", "--threads", "1"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]

    def seconds(label: str) -> float:
        match = re.search(rf"^step s, {re.escape(label)}\s+([\d.]+)", result.stdout, re.MULTILINE)
        assert match, result.stdout
        return float(match.group(1))

    gemms, attention = seconds("its weight GEMMs alone (replayed)"), seconds("the attention (block-causal kernel)")
    gelu = seconds("the MLP's GELU (tanh form)")
    cap = float(re.search(r"most % reachable with both kept\s+(\d+)%", result.stdout).group(1))
    # printed to 4 decimals, the cap from unrounded seconds
    assert gemms > 0 and attention > 0 and gelu > 0
    assert abs(cap - 100 * gemms / (gemms + attention + gelu)) <= 3
    assert cap < 100


def test_gemm_section_gives_the_steps_gemms_as_a_share_of_a_large_gemm():
    result = subprocess.run([sys.executable, str(SCRIPT), "--sections", "gemm", "--quick", "--width", "64", "--heads", "2",
                             "--seq", "32", "--batch", "4", "--vocab", "16", "--layers", "1", "--threads", "1"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]

    def rates(label: str) -> tuple[float, float]:
        match = re.search(rf"^{re.escape(label)}\s+(\d+) \|\s*(\d+)\s", result.stdout, re.MULTILINE)
        assert match, result.stdout
        return float(match.group(1)), float(match.group(2))

    step = rates("all of one step's GEMMs, BLAS | oneDNN")
    large = rates("forward [4096 x 1024 -> 1024], BLAS | oneDNN")
    shares = re.search(r"^  the step's GEMMs / the large GEMM's rate\s+(\d+)% \|\s*(\d+)%", result.stdout, re.MULTILINE)
    assert shares, result.stdout
    for share, small, big in zip(map(float, shares.groups()), step, large):
        assert big > 0
        # the share comes from unrounded rates, printed rounded to whole GFLOP/s and per cent
        assert abs(share - 100 * small / big) <= 1 + 100 / big


def test_replays_that_outlast_their_step_are_flagged():
    from bench_model import replays_overrun

    assert replays_overrun(0.789, 0.700) is None
    assert replays_overrun(0.789, 0.789) is None
    note = replays_overrun(0.789, 0.845)
    assert note.startswith("# ") and "0.8450 s" in note and "0.7890 s" in note and "overestimates" in note
