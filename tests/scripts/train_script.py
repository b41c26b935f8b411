"""Subprocess launcher for the DDP and resume tests: trains the tiny model of tests/golden_loss.py.

    python tests/scripts/train_script.py --data DIR --out DIR [--train JSON] [--save-model PATH] [--seeds S ...]

Prints `METRICS <json>` on global rank 0. With --seeds, the seeds' tiny models train together
(vld.train.stacked.train_seeds, each seed's model, data and config from its seed): METRICS is
then one dict per seed and --save-model gets one state dict per seed. With VLD_TEST_EXIT_AFTER_STEP=N in the environment
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
    parser.add_argument("--seeds", type=int, nargs="+")
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
    if args.seeds:
        from vld.train.stacked import train_seeds

        cfgs = [tiny_train_config(**{**json.loads(args.train), "seed": seed}) for seed in args.seeds]
        models = [tiny_model(seed=seed) for seed in args.seeds]
        data = [TokenWindowDataModule(args.data, c.seq_len, c.micro_batch_size, seed=c.seed) for c in cfgs]
        metrics = train_seeds(models, data, cfgs, args.out, callbacks=callbacks)
        state = [model.state_dict() for model in models]
    else:
        model = tiny_model(seed=args.model_seed)
        data = TokenWindowDataModule(args.data, cfg.seq_len, cfg.micro_batch_size, seed=cfg.seed, num_workers=cfg.num_workers)
        metrics = run_training(model, data, cfg, args.out, callbacks=callbacks)
        state = model.state_dict()
    if is_global_zero():
        if args.save_model:
            torch.save(state, args.save_model)
        print("METRICS " + json.dumps(metrics), flush=True)


if __name__ == "__main__":
    main()
