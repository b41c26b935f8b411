"""Subprocess launcher for the DDP and resume tests: trains the tiny model of tests/golden_loss.py.

    python tests/scripts/train_script.py --data DIR --out DIR [--train JSON] [--save-model PATH]

Prints `METRICS <json>` on global rank 0. With VLD_TEST_EXIT_AFTER_STEP=N in the environment
the process dies (os._exit, no clean-up) right after optimizer step N, like a killed job.
Under strategy "ddp" Lightning re-runs this script for the other ranks, hence the main guard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", default="{}", help="JSON overrides of the tiny TrainConfig")
    parser.add_argument("--model-seed", type=int, default=0)
    parser.add_argument("--save-model", type=Path)
    args = parser.parse_args()

    import torch

    from vld.pipeline.tracking import is_global_zero
    from vld.train.datamodules import TokenWindowDataModule
    from vld.train.run import run_training

    from exit_after_step import ExitAfterStep  # beside this script

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from golden_loss import tiny_model, tiny_train_config  # in tests/

    cfg = tiny_train_config(**json.loads(args.train))
    callbacks = []
    if os.environ.get("VLD_TEST_EXIT_AFTER_STEP"):
        callbacks.append(ExitAfterStep(int(os.environ["VLD_TEST_EXIT_AFTER_STEP"])))
    model = tiny_model(seed=args.model_seed)
    data = TokenWindowDataModule(args.data, cfg.seq_len, cfg.micro_batch_size, seed=cfg.seed, num_workers=cfg.num_workers)
    metrics = run_training(model, data, cfg, args.out, callbacks=callbacks)
    if is_global_zero():
        if args.save_model:
            torch.save(model.state_dict(), args.save_model)
        print("METRICS " + json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main()
