"""Training steps/s on a shared CPU: alone and beside one CPU-heavy process, for every thread
count from 1 to the usable cores, and the `vld: note:` line training would print beside it
(vld.train.config.busy_note: the count it suggests for hardware.threads).

    python bench/shared_cpu.py [--seconds 15] [--out bench/out/shared_cpu.json]

The model is the 2-layer width-128 GPT of docs (sequence 256, batch 8); the neighbour is
another process multiplying matrices with torch's default threads. Meaningful only on a
machine with nothing else running (the neighbour is the only load it should see).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path


def _neighbour(stop) -> None:
    import torch

    a = torch.randn(1024, 1024)
    while not stop.is_set():
        a = torch.tanh(a @ a) * 0.5


def _steps_per_s(threads: int, seconds: float) -> float:
    import torch

    from vld.model import ModelConfig, VLDTransformer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = VLDTransformer(ModelConfig(vocab_size=128, d_model=128, n_layer=2, n_head=4, max_seq_len=256,
                                       block="gpt2"))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 128, (8, 257))

    def step():
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    for _ in range(3):
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", default="bench/out/shared_cpu.json")
    args = parser.parse_args()
    from vld.train.config import busy_cores, busy_note, machine_cores

    cores = machine_cores()
    counts = range(1, cores + 1)
    result = {"cores": cores, "load_average_at_start": os.getloadavg(),
              "alone_steps_per_s": {threads: _steps_per_s(threads, args.seconds) for threads in counts}}
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    neighbour = ctx.Process(target=_neighbour, args=(stop,))
    neighbour.start()
    try:
        time.sleep(3.0)  # its imports, then it computes
        result["note_beside_one"] = busy_note(cores, busy_cores(), cores)
        result["beside_one_steps_per_s"] = {threads: _steps_per_s(threads, args.seconds) for threads in counts}
    finally:
        stop.set()
        neighbour.join(10)
        if neighbour.is_alive():
            neighbour.kill()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
