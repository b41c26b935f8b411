"""bench/step_alternatives.py (issue 27) as a smoke test: each alternative it times must compute
the same function as the kernel it races, and the same gradients, within that alternative's
rounding, or the ratio it prints compares different work."""

import contextlib
import io
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import step_alternatives  # noqa: E402

ROW = re.compile(r"^\| h2 \| (?P<label>[^|]+) \| (?P<now>[\d.]+) \| (?P<alt>[\d.]+) \| (?P<ratio>[\d.]+)"
                 r" \|(?P<diff>[^|]*)\|(?P<grad>[^|]*)\|$")


@pytest.fixture(scope="module")
def rows():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        step_alternatives.main(["--shapes", "h2", "--repeats", "4", "--threads", "1"])
    parsed = {}
    for line in out.getvalue().splitlines():
        if match := ROW.match(line):
            parsed[match["label"].strip()] = match
    return parsed


def difference(rows, label: str, of: str = "diff") -> float:
    return float(rows[label][of])


def test_every_kernel_is_raced_and_timed(rows):
    linears = ["96->288", "96->96", "96->384", "384->96"]
    expected = ([f"linear {shape} (6336 rows)" for shape in linears] + [f"linear {shape} in bfloat16" for shape in linears]
                + ["a layer's four linears batched over seeds", "a layer's four linears in bfloat16", "GELU", "attention",
                   "loss (6336 rows x 10)"])
    assert sorted(rows) == sorted(expected)
    for match in rows.values():
        assert float(match["now"]) > 0 and float(match["alt"]) > 0


def test_alternatives_compute_the_same_function_within_their_rounding(rows):
    for shape in ["96->288", "96->96", "96->384", "384->96"]:
        # the batched GEMM sums in another order: fp32 rounding only
        assert difference(rows, f"linear {shape} (6336 rows)") < 1e-4
        # bfloat16 keeps 8 bits of mantissa: outputs of size ~1 move by ~1e-2, never by 1
        assert 1e-4 < difference(rows, f"linear {shape} in bfloat16") < 0.5
    # the tanh approximation of GELU is within 1e-3 of the exact one, and not equal to it
    assert 0 < difference(rows, "GELU") < 1e-3
    assert difference(rows, "attention") < 1e-4
    assert difference(rows, "attention", of="grad") < 1e-4
    for shape in ["96->288", "96->96", "96->384", "384->96"]:
        assert difference(rows, f"linear {shape} (6336 rows)", of="grad") < 1e-3  # summed over 6336 rows
        assert 1e-4 < difference(rows, f"linear {shape} in bfloat16", of="grad")


def test_one_hot_free_loss_is_the_same_loss_and_gradient_to_rounding(rows):
    # the loss value is F.cross_entropy's bit for bit (the same log-softmax and NLL kernels)
    assert difference(rows, "loss (6336 rows x 10)") == 0
    # each gradient entry is about 1/6336: leaving out the -1/rows at the targets would be off by 1.6e-4
    assert difference(rows, "loss (6336 rows x 10)", of="grad") < 1e-8


def test_unknown_shape_is_refused_before_timing(capsys):
    with pytest.raises(SystemExit) as exit_info:
        step_alternatives.main(["--shapes", "h2,w512"])
    assert exit_info.value.code == 2
    assert "--shapes: unknown w512" in capsys.readouterr().err
