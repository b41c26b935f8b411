"""The host's reference GEMM (vld.host_speed): its arithmetic, that it draws no random numbers,
and that training records it without changing what training computes."""

from __future__ import annotations

import math

import pytest
import torch

from vld import host_speed
from vld.host_speed import END_KEY, START_KEY, gemm_rate, host_gflops, reference_gemm_flops


def test_the_rate_is_the_fastest_timed_call_after_an_untimed_warm_up():
    ticks = iter([10.0, 10.5, 20.0, 20.2, 30.0, 30.3])  # three timed calls: 0.5, 0.2 and 0.3 s
    rate = gemm_rate("blas", repeats=3, shape=(8, 4, 2), clock=lambda: next(ticks))
    assert rate == pytest.approx((8 * 4 * 2) * 2 / 0.2 / 1e9, rel=1e-12)
    assert next(ticks, None) is None  # the warm-up call is not timed: exactly 2 clock reads per repeat


def test_the_reference_gemm_and_its_flop_count():
    assert reference_gemm_flops() == 2 * 4096 * 1024 * 1024
    assert host_speed.REFERENCE_GEMM_NAME == "[4096 x 1024 -> 1024]"


@pytest.mark.parametrize("cpu_gemm", ["onednn", "blas"])
def test_it_draws_no_random_numbers_and_gives_a_finite_rate(cpu_gemm):
    torch.manual_seed(5)
    rate = gemm_rate(cpu_gemm, repeats=1, shape=(256, 128, 64))
    after = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(4))
    assert math.isfinite(rate) and rate > 0


def test_host_gflops_reads_a_training_runs_pair_or_none():
    assert host_gflops({START_KEY: 210.5, END_KEY: 198.0, "steps": 3}) == [210.5, 198.0]
    assert host_gflops({START_KEY: None, END_KEY: None}) is None  # trained off the CPU
    assert host_gflops({"train_tokens_per_s": 5.0}) is None  # an older vld's metrics
    assert host_gflops({START_KEY: 200.0}) is None
