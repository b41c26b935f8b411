"""Activation checkpointing with reused layers under DDP: one step on 2 CPU ranks (gloo)
gives the single-process gradients. Run through torchrun in a subprocess, never in-process."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vld.model import ModelConfig, VLDTransformer

SCRIPT = Path(__file__).parent / "scripts" / "ddp_checkpoint_step.py"


@pytest.mark.slow
def test_ddp_step_with_checkpointing_matches_single_process(tmp_path):
    out = tmp_path / "ddp.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(out)]
    # own session: on a timeout the whole group (torchrun and both ranks) is killed, nothing left behind
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("DDP step timed out")
    assert proc.returncode == 0, output[-3000:]
    with pytest.raises(ProcessLookupError):  # no rank outlived torchrun
        os.killpg(proc.pid, 0)

    result = torch.load(out, weights_only=True)
    config = ModelConfig(vocab_size=53, n_layer=2, d_model=32, n_head=4, max_seq_len=32,
                         schedule=[0, 1, 0, 1, 0, 1])
    model = VLDTransformer(config).double()  # no checkpointing: the reference
    model.load_state_dict(result["initial"])
    batch = result["batch"]
    F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten()).backward()
    assert set(result["grads"]) == {name for name, _ in model.named_parameters()}
    for name, param in model.named_parameters():
        torch.testing.assert_close(result["grads"][name], param.grad, rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(result["updated"][name], param.detach() - 0.1 * param.grad, rtol=1e-9, atol=1e-12, msg=name)
