"""The machine's own speed beside a run: one large GEMM's rate, timed where the run computes.

A training stage's tokens/s says how fast its step ran on whatever else shared the host, and a
shared host's speed moves between runs of the same code (docs/model.md, "The k-hop models'
GEMMs"). A fixed GEMM timed at the stage's start and end, in the GEMM
library and thread count the stage trains with, is a reference from the same run: two stages'
tokens/s compare where their host rates agree, and a slow run shows whether the host or the
code was slow. It never feeds a choice (the arithmetic must not depend on load) and draws no
random numbers, so the trained weights are the same with or without it.
"""

from __future__ import annotations

import time
from typing import Callable

# rows, in, out: large enough for either CPU library to run at its peak rate, small enough to
# time in tens of milliseconds
REFERENCE_GEMM = (4096, 1024, 1024)
REFERENCE_GEMM_NAME = "[{} x {} -> {}]".format(*REFERENCE_GEMM)
REPEATS = 3  # timed calls after one warm-up; the fastest counts (the least disturbed)


def reference_gemm_flops(shape: tuple[int, int, int] = REFERENCE_GEMM) -> int:
    """Multiply-adds of the forward [rows x in] @ [in x out], counted as 2 FLOPs each."""
    rows, in_features, out_features = shape
    return 2 * rows * in_features * out_features


def reference_gemm(cpu_gemm: str, shape: tuple[int, int, int] = REFERENCE_GEMM) -> Callable[[], object]:
    """One call of the reference GEMM's forward in `cpu_gemm`'s library (vld.model.linear), as
    a training step's linear layer runs it, on operands made once."""
    import torch

    from vld.model.linear import linear

    rows, in_features, out_features = shape
    # constant operands: a GEMM's speed does not depend on normal values, and no random state is drawn
    x = torch.full((rows, in_features), 0.5)
    weight = torch.full((out_features, in_features), 0.25)

    def call():
        with torch.no_grad():
            return linear(x, weight, cpu_gemm=cpu_gemm)

    return call


def gemm_rate(cpu_gemm: str, repeats: int = REPEATS, shape: tuple[int, int, int] = REFERENCE_GEMM,
              clock: Callable[[], float] = time.perf_counter) -> float:
    """GFLOP/s of the reference GEMM in `cpu_gemm`'s library on this process's current thread
    count: the fastest of `repeats` calls after one warm-up."""
    call = reference_gemm(cpu_gemm, shape)
    call()
    fastest = float("inf")
    for _ in range(max(1, repeats)):
        start = clock()
        call()
        fastest = min(fastest, clock() - start)
    return reference_gemm_flops(shape) / max(fastest, 1e-9) / 1e9


# a training run's metrics (vld.train.run.training_metrics): the rate at the fit's start and end
START_KEY, END_KEY = "host_gemm_gflops_start", "host_gemm_gflops_end"


def host_gflops(metrics: dict) -> list[float] | None:
    """[start, end] GFLOP/s from a training run's metrics; None where it has none (trained off
    the CPU, or by a vld that did not time the host)."""
    pair = [metrics.get(START_KEY), metrics.get(END_KEY)]
    return pair if all(isinstance(rate, (int, float)) for rate in pair) else None
