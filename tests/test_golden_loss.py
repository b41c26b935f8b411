"""The first losses of tests/golden_loss.py's tiny CPU run equal the recorded ones: a refactor that
changes numerics (model, loss, optimiser, schedule, data order) is caught here. Re-record a
deliberate change with `python tests/golden_loss.py --write`."""

from __future__ import annotations

import json
import math

import pytest
from golden_loss import GOLDEN_FILE, compare, golden_losses


# hardware.cpu_gemm: the default (auto: this CPU's library) and each library set explicitly. The
# tiny model's GEMMs are below vld.model.linear.MIN_MACS, where both libraries run F.linear, so
# the golden curve holds for both; oneDNN's own kernels are checked in tests/test_linear.py.
@pytest.mark.parametrize("cpu_gemm", ["auto", "onednn", "blas"])
def test_loss_curve_equals_the_golden_file(tmp_path, cpu_gemm):
    golden = json.loads(GOLDEN_FILE.read_text())
    assert len(golden["losses"]) == 10 and golden["losses"][-1] < golden["losses"][0] < math.log(64) + 0.1
    losses = golden_losses(tmp_path, cpu_gemm)
    diffs = compare(losses, golden)
    assert not diffs, "numerics changed (re-record with `python tests/golden_loss.py --write` if deliberate): " + "; ".join(diffs)


def test_compare_reports_a_changed_loss():
    golden = {"losses": [4.0, 3.5]}
    assert compare([4.0, 3.5], golden) == []
    assert compare([4.0, 3.5 * (1 + 1e-5)], golden) == [f"step 2: {3.5 * (1 + 1e-5)!r} != 3.5"]
    assert compare([4.0], golden) == ["1 losses, the golden file has 2"]
