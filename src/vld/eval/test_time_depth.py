"""Test-time depth: a trained looped model run with its core repeated other numbers of times
than it was trained with, exactly as if its schedule said so, scored on the k-hop test sets.

    found = test_time_depth(model, test_dir, {1: [0, 1], 2: [0, 1, 0, 1], ...}, trained=2)

Whether extra loops help, hold or hurt (Huginn-style extrapolation vs "overthinking") is read
from the error averaged over the serial hop counts (>= 2; all of them when the test has none):
DELTA = the mean over the counts above the trained one of that error, minus the error at the
trained count; "help" when DELTA < -MARGIN, "hurt" when DELTA > MARGIN, else "hold".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vld.depth_rules import MARGIN, serial_error


def verdict(by_repeats: dict[str, dict], trained: int) -> tuple[str, float | None]:
    """("help" | "hold" | "hurt", DELTA) by the rule above; ("untested", None) without counts above the trained one."""
    extra = [serial_error(cell["hops"]) for r, cell in by_repeats.items() if int(r) > trained]
    if not extra or str(trained) not in by_repeats:
        return "untested", None
    delta = float(np.mean(extra)) - serial_error(by_repeats[str(trained)]["hops"])
    return ("help" if delta < -MARGIN else "hurt" if delta > MARGIN else "hold"), delta


def test_time_depth(model, test_dir: str | Path, schedules: dict[int, list[int]], trained: int,
                    batch_size: int = 256) -> dict:
    """{"trained_repeats", "repeats": {r: {"effective_depth", "hops": {k: {"error",
    "wrong_per_sequence", "labelled_per_sequence"}}}}, "verdict", "delta"}; `schedules` maps each
    count r to the schedule that runs it. The model's own schedule is restored after."""
    from vld.data.khop import NO_LABEL, read_test_sets
    from vld.eval.khop import wrong_positions

    _, sets = read_test_sets(test_dir)
    saved = None if model.config.schedule is None else list(model.config.schedule)
    by_repeats: dict[str, dict] = {}
    try:
        for repeats, order in sorted(schedules.items()):
            model.set_schedule(order)
            hops = {}
            for k, (inputs, labels) in sorted(sets.items()):
                wrong = wrong_positions(model, inputs, labels, batch_size)
                labelled = (labels != NO_LABEL).sum(axis=1)
                hops[str(k)] = {"error": float(wrong.sum() / max(1, labelled.sum())), "wrong_per_sequence": wrong.tolist(),
                                "labelled_per_sequence": int(labelled[0])}
            by_repeats[str(repeats)] = {"effective_depth": len(order), "hops": hops}
    finally:
        model.set_schedule(saved)
    found, delta = verdict(by_repeats, trained)
    return {"trained_repeats": int(trained), "repeats": by_repeats, "verdict": found, "delta": delta}


__all__ = ["MARGIN", "serial_error", "test_time_depth", "verdict"]
