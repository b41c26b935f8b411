"""vld.train.memory: a CPU training process keeps its freed memory, so a repeated step stops
faulting in fresh pages. Each case runs in a process of its own: the setting is process-wide
and cannot be undone, and the baseline needs glibc's defaults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vld.train.memory import on_glibc

pytestmark = pytest.mark.skipif(not on_glibc(), reason="the setting is glibc's (elsewhere keep_freed_memory is a no-op)")

TESTS = Path(__file__).resolve().parent

# A training step whose MLP activations (8192 x 1280 floats, 40 MiB) are above the largest mmap
# threshold glibc adapts to by default (32 MiB), so under the defaults every step maps them
# afresh; prints the minor page faults per step once the step has run 10 times.
STEP_FAULTS = textwrap.dedent("""
    import resource
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 1280), torch.nn.GELU(), torch.nn.Linear(1280, 64))
    opt = torch.optim.AdamW(net.parameters(), foreach=True)
    x = torch.randn(8192, 64)

    def step():
        net(x).square().mean().backward()
        opt.step()
        opt.zero_grad()

    for _ in range(10):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print("FAULTS", (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")


def faults_per_step(prelude: str, tmp_path: Path) -> float:
    script = tmp_path / "step_faults.py"
    script.write_text(prelude + STEP_FAULTS)
    out = subprocess.run([sys.executable, str(script)], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}).stdout
    return float(out.split("FAULTS")[-1])


@pytest.fixture(scope="module")
def default_faults(tmp_path_factory) -> float:
    """The step's page faults under glibc's defaults."""
    return faults_per_step("", tmp_path_factory.mktemp("default"))


def test_kept_memory_stops_the_steps_page_faults(tmp_path, default_faults):
    default = default_faults
    kept = faults_per_step("from vld.train.memory import keep_freed_memory\nassert keep_freed_memory()\n", tmp_path)
    # each 40 MiB activation or gradient is 10,240 pages
    assert default > 10_000
    assert kept < default / 10


def test_a_training_fit_keeps_freed_memory(tmp_path, default_faults):
    """vld.train.run.fit applies it: after the tiny golden run, the same step no longer faults."""
    prelude = textwrap.dedent(f"""
        import tempfile
        from golden_loss import golden_losses

        with tempfile.TemporaryDirectory(dir={str(tmp_path)!r}) as work:
            golden_losses(work)
    """)
    assert faults_per_step(prelude, tmp_path) < default_faults / 10


class RecordingLibc:
    """A C library whose mallopt accepts the trim threshold and mmap thresholds up to `mmap_limit`
    (glibc's own limit differs between versions), recording each call."""

    def __init__(self, mmap_limit: int):
        self.mmap_limit, self.calls = mmap_limit, []

    def mallopt(self, param: int, value: int) -> int:
        from vld.train import memory

        self.calls.append((param, value))
        return int(param == memory.M_TRIM_THRESHOLD or value <= self.mmap_limit)


@pytest.mark.parametrize("mmap_limit, expected", [
    (1 << 30, [1 << 30]),  # glibc 2.36 (here) takes the largest
    (32 << 20, [1 << 30, 32 << 20]),  # a glibc that caps it at 32 MiB: the fallback
    (1 << 20, [1 << 30, 32 << 20]),  # one that takes neither: not in effect
])
def test_the_mmap_threshold_falls_back_to_what_glibc_accepts(monkeypatch, mmap_limit, expected):
    from vld.train import memory

    libc = RecordingLibc(mmap_limit)
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: libc)
    assert memory.keep_freed_memory() is (mmap_limit >= 32 << 20)
    assert libc.calls == [(memory.M_TRIM_THRESHOLD, memory.TRIM_THRESHOLD)] + [(memory.M_MMAP_THRESHOLD, t) for t in expected]
