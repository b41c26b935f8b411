"""A training run killed mid-way (os._exit right after step 6, the last checkpoint at step 4)
and run again continues from its checkpoint and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json

import pytest
import torch

from test_train_ddp import launch, metrics_of, processes_in_group, train_in_process


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    from vld.train.golden import write_tiny_token_set

    data = write_tiny_token_set(tmp_path / "data")
    train = json.dumps({"checkpoint_every": 4})
    args = ["--data", str(data), "--train", train]

    killed, pgid = launch([*args, "--out", str(tmp_path / "run")], env={"VLD_TEST_EXIT_AFTER_STEP": "6"})
    assert killed.returncode == 17, killed.stdout[-3000:]
    assert processes_in_group(pgid) == []
    assert not (tmp_path / "run" / "metrics.json").exists()
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4 and len(checkpoint["vld_loss_curve"]) == 4

    resumed_run, _ = launch([*args, "--out", str(tmp_path / "run"), "--save-model", str(tmp_path / "resumed.pt")])
    assert resumed_run.returncode == 0, resumed_run.stdout[-3000:]
    resumed = metrics_of(resumed_run.stdout)
    assert resumed["resumed_from_step"] == 4

    whole, b = train_in_process(data, tmp_path / "whole", checkpoint_every=4)  # uninterrupted

    for key in ("final_loss", "steps", "tokens_seen", "loss_curve"):
        assert resumed[key] == whole[key], key
    a = torch.load(tmp_path / "resumed.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-equal weights
