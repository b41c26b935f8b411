"""Training tokens/s of the k-hop path against the token-window path, same model, same run.

    .venv/bin/python bench/bench_khop.py [--steps 150 --rounds 2]

Both train one 2-layer width-128 GPT-2 model (the default profile's h2) through
vld.train.run.run_training for `--steps` steps of 64 sequences of 65 tokens: once on the k-hop
stream (KHopDataModule: sequences generated while training, every position labelled) and once
on packed windows of a token set of the same vocabulary (TokenWindowDataModule, the iGSM and
knowledge path). Rounds alternate the two; the printed ratio is k-hop / windows (>= 1: the
k-hop path is not slower per token). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from vld.data.khop import KHopSpec
    from vld.data.tokens import write_token_set
    from vld.model import ModelConfig, VLDTransformer
    from vld.train.config import OptimConfig, TrainConfig
    from vld.train.datamodules import KHopDataModule, TokenWindowDataModule
    from vld.train.run import run_training

    spec = KHopSpec(alphabet=4, length=64, min_hops=0, max_hops=4)
    cfg = TrainConfig(max_steps=args.steps, global_batch_size=64, micro_batch_size=64, seq_len=spec.seq_len,
                      log_every=50, optim=OptimConfig(lr=1e-3))
    rates: dict[str, list[float]] = {"khop": [], "windows": []}
    with tempfile.TemporaryDirectory() as tmp:
        tokens = np.random.default_rng(0).integers(0, spec.vocab_size, size=2_000_000)
        data = write_token_set(Path(tmp) / "tokens", tokens, np.array([0, len(tokens)]), spec.vocab_size,
                               {"generator": "bench"})
        for round_ in range(args.rounds):
            for name in ("khop", "windows"):
                torch.manual_seed(0)
                model = VLDTransformer(ModelConfig(vocab_size=spec.vocab_size, n_layer=2, d_model=128, n_head=4,
                                                   max_seq_len=spec.seq_len))
                # windows of seq_len + 1 tokens give the same 65 model inputs per sequence
                module = KHopDataModule(spec, 64, 64) if name == "khop" else TokenWindowDataModule(data, spec.seq_len, 64)
                metrics = run_training(model, module, cfg, Path(tmp) / f"{name}-{round_}")
                rates[name].append(metrics["train_tokens_per_s"])
    best = {name: max(values) for name, values in rates.items()}
    print(json.dumps({"tokens_per_s": rates, "best": best, "khop_over_windows": best["khop"] / best["windows"]}, indent=1))


if __name__ == "__main__":
    main()
