"""DDP over 2 CPU processes (gloo), launched as a subprocess running tests/scripts/train_script.py
(never by re-running pytest): same losses as 1 process at the same global batch, and no
process left behind. Also the launch helpers of the other multi-process tests, including
`launch_nodes` for two "nodes" on this machine (test_multinode.py, test_train_resume.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "train_script.py"
# 1 process accumulates 2 micro-batches; 2 processes take one each and average gradients with
# an all-reduce: the same windows, summed in another order, so agreement is to float32
# rounding, not bit-exact (measured: largest loss difference about 2.4e-7).
TOLERANCE = 1e-5


def processes_in_group(pgid: int) -> list[int]:
    """Live pids whose process group is `pgid` (read from /proc; no psutil)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def start(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        cwd=cwd,
        start_new_session=True,  # its own process group: every rank it spawns can be found
    )


def finish(proc: subprocess.Popen, timeout: float = 180) -> subprocess.CompletedProcess:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


def launch(args: list[str], env: dict | None = None, timeout: float = 180) -> tuple[subprocess.CompletedProcess, int]:
    proc = start([str(SCRIPT), *args], env)
    return finish(proc, timeout), proc.pid


def launch_nodes(per_node: list[tuple[list[str], Path | None]], env: dict | None = None,
                 timeout: float = 180) -> list[subprocess.CompletedProcess]:
    """One process per "node" on this machine, started together: (command, cwd) for node 0, 1, ...
    Each gets the rendezvous as Lightning reads it (MASTER_ADDR, MASTER_PORT, NODE_RANK) and as
    torchrun reads it (the same with the PET_ prefix)."""
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def rendezvous(rank: int) -> dict:
        names = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(rank)}
        return {**(env or {}), **names, **{f"PET_{name}": value for name, value in names.items()}}

    procs = [start(cmd, rendezvous(rank), cwd) for rank, (cmd, cwd) in enumerate(per_node)]
    results = [finish(proc, timeout) for proc in procs]
    for proc in procs:
        assert processes_in_group(proc.pid) == [], proc.args
    return results


def train_in_process(data: Path, out: Path, **overrides) -> tuple[dict, dict]:
    """The script's run, in this process with one thread like the subprocesses (OMP_NUM_THREADS=1),
    so that the numerics are the same: (metrics, state_dict)."""
    from vld.train.datamodules import TokenWindowDataModule
    from vld.train.run import run_training

    from golden_loss import tiny_model, tiny_train_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_train_config(**overrides)
        model = tiny_model(seed=0)
        metrics = run_training(model, TokenWindowDataModule(data, cfg.seq_len, cfg.micro_batch_size, seed=cfg.seed), cfg, out)
    finally:
        torch.set_num_threads(threads)
    return metrics, model.state_dict()


def metrics_of(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("METRICS ")]
    assert len(lines) == 1, output[-3000:]
    return json.loads(lines[0][len("METRICS "):])


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    from golden_loss import write_tiny_token_set

    data = write_tiny_token_set(tmp_path / "data")
    ddp_train = {"devices": 2, "strategy": "ddp", "micro_batch_size": 4}  # global batch 8: no accumulation
    result, pgid = launch(["--data", str(data), "--out", str(tmp_path / "ddp"), "--train", json.dumps(ddp_train), "--save-model", str(tmp_path / "ddp.pt")])
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Starting with 2 processes" in result.stdout
    assert processes_in_group(pgid) == []  # rank 1 exited with rank 0
    ddp = metrics_of(result.stdout)

    single, b = train_in_process(data, tmp_path / "one")  # 1 process, 2 micro-batches of 4

    assert ddp["steps"] == single["steps"] == 10 and ddp["tokens_seen"] == single["tokens_seen"]
    assert ddp["final_loss"] == pytest.approx(single["final_loss"], abs=TOLERANCE, rel=0)
    assert ddp["loss_curve"] == pytest.approx(single["loss_curve"], abs=TOLERANCE, rel=0)
    a = torch.load(tmp_path / "ddp.pt")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text()) == ddp  # written once, by rank 0
    from vld.machine import describe_machine

    assert ddp["machine"] == single["machine"] == describe_machine()  # both ranks on this machine: no `ranks`
