"""`vld.errors.run_cli`, the entry of every `python -m vld...` command, in a process of its own:
each way a command ends gives its exit code and message, and every one of them ends with the
garbage collector frozen (so the interpreter's exit does not collect the whole heap again); and
bench/bench_cli_exit.py, which times that ending against the interpreter's own, as a smoke test."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ENDING = textwrap.dedent("""
    import atexit, gc, sys
    from vld.errors import fail, run_cli
    # runs after run_cli's exit, before the interpreter's own clean-up
    atexit.register(lambda: print("frozen" if gc.get_freeze_count() > 0 else "not frozen", flush=True))

    def main():
        how = sys.argv[1]
        if how == "user_error":
            fail("train.max_steps", "must be >= 1, got 0")
        if how == "bug":
            raise RuntimeError("a bug, not the user's")
        if how == "interrupt":
            raise KeyboardInterrupt
        return {"none": None, "zero": 0, "three": 3}[how]

    run_cli(main)
    print("after run_cli")
""")


@pytest.mark.parametrize("how, code, stderr_line", [
    ("none", 0, None),
    ("zero", 0, None),
    ("three", 3, None),
    ("user_error", 2, "vld: error: train.max_steps: must be >= 1, got 0"),
    ("interrupt", 130, "vld: interrupted"),
    ("bug", 1, "RuntimeError: a bug, not the user's"),
])
def test_every_ending_has_its_code_and_leaves_the_collector_frozen(how, code, stderr_line):
    proc = subprocess.run([sys.executable, "-c", ENDING, how], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.splitlines() == ["frozen"]  # run_cli ends the process: nothing after it runs
    if stderr_line is None:
        assert proc.stderr == ""
    elif how == "bug":  # a bug keeps its traceback
        assert "Traceback" in proc.stderr and proc.stderr.rstrip().endswith(stderr_line)
    else:  # a user's error is one line
        assert proc.stderr == stderr_line + "\n"


def test_exit_bench_times_both_endings():
    bench = Path(__file__).resolve().parents[1] / "bench" / "bench_cli_exit.py"
    proc = subprocess.run([sys.executable, str(bench), "--rounds", "2", "--imports", "json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# CPU: ")  # a figure names the machine it came from
    rows = re.findall(r"^\| (\d) \| (run_cli|reference) \| [\d,]+ \| [\d.]+ \| ([\d.]+) \| ([\d.]+) \|$",
                      proc.stdout, re.MULTILINE)
    assert sorted((r, e) for r, e, _, _ in rows) == [("0", "reference"), ("0", "run_cli"), ("1", "reference"), ("1", "run_cli")]
    assert all(0 < float(exit_s) <= float(total) for _, _, exit_s, total in rows)
    assert re.search(r"^median exit s: run_cli [\d.]+, reference [\d.]+, run_cli / reference [\d.]+$", proc.stdout, re.MULTILINE)
