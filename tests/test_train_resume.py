"""A training run killed mid-way (os._exit right after step 6, the last checkpoint at step 4)
and run again continues from its checkpoint and ends exactly where an uninterrupted run ends;
run again on two nodes of which one cannot see that checkpoint, every node stops at once."""

from __future__ import annotations

import json

import pytest
import torch

from test_train_ddp import SCRIPT, launch, launch_nodes, metrics_of, processes_in_group, train_in_process


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    from golden_loss import write_tiny_token_set

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


@pytest.mark.slow
def test_nodes_that_would_resume_from_different_steps_stop_together(tmp_path):
    """Node 1 runs in another directory (as without a shared filesystem) and finds no checkpoint.
    Unchecked, node 0 resumed at step 4 and exited 0 after averaging gradients with a node 1
    that had started over."""
    from golden_loss import write_tiny_token_set

    data = write_tiny_token_set(tmp_path / "data")
    killed, _ = launch(["--data", str(data), "--out", str(tmp_path / "node0"), "--train", json.dumps({"checkpoint_every": 4})],
                       env={"VLD_TEST_EXIT_AFTER_STEP": "6"})
    assert killed.returncode == 17, killed.stdout[-3000:]
    two_nodes = json.dumps({"checkpoint_every": 4, "devices": 1, "num_nodes": 2, "strategy": "ddp", "micro_batch_size": 4})
    results = launch_nodes([([str(SCRIPT), "--data", str(data), "--out", str(tmp_path / node), "--train", two_nodes], None)
                            for node in ("node0", "node1")])
    for node, result in zip(("node0", "node1"), results):
        assert result.returncode != 0 and "METRICS" not in result.stdout
        checkpoint = tmp_path / node / "checkpoints" / "last.ckpt"
        assert (f"train: the ranks would resume from different steps (rank 0: step 4, rank 1: none;"
                f" this rank looked for {checkpoint});") in result.stdout, result.stdout[-3000:]
    assert not (tmp_path / "node0" / "metrics.json").exists()
    assert torch.load(tmp_path / "node0" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
