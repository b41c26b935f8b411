"""Device check of `train.strategy: fsdp` for the lm_retrofit family (docs/lm_retrofit.md#multi-gpu):
one random Llama (a cycle over its middle layers, LoRA rank 4 on all seven projections, bf16-mixed,
gradient clipping, a checkpoint mid-run) fine-tuned on the tests' chat set by vld.retrofit.api.
train_retrofit under Lightning's FSDPStrategy and under the default strategy; prints and writes
the loss curves, tokens/s, peak memory, and how far the two saved models are apart.

    PYTHONPATH=src:tests python3 bench/lm_retrofit_fsdp.py --out $OUT/fsdp.json                 # one GPU, < 1 min
    PYTHONPATH=src:tests python3 bench/lm_retrofit_fsdp.py --hidden 2048 --layers 16 --out ...  # a ~0.6B Llama

On one GPU FSDP runs unsharded (torch clamps FULL_SHARD to NO_SHARD at world size 1): this checks
the strategy's setup, the per-block units with LoRA, mixed precision, clipping, checkpoints and
the gathering of the weights for saving, not the sharding itself. Imports torch, lightning,
transformers, peft, tokenizers and vld's training and retrofit modules (no mlflow, dvc or lm-eval).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path


def write_llama(path: Path, hidden: int, layers: int, seed: int = 0) -> Path:
    import torch
    import transformers

    import lm_fixtures as F

    tok = F.tokenizer()
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 4), num_key_value_heads=max(hidden // 128, 2),
        max_position_embeddings=256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def train(ckpt: Path, data: Path, strategy: str, out: Path, steps: int) -> dict:
    import torch

    from vld.retrofit.api import load_retrofit, train_retrofit
    from vld.retrofit.sources import inspect_source
    from vld.train.config import TrainConfig
    from vld.train.datamodules import SftDataModule

    info = inspect_source(ckpt)
    n = info.n_layers
    order = [0, *list(range(1, n - 1)) * 2, n - 1]  # cycle x1 over the middle layers
    datamodule = SftDataModule(data, micro_batch_size=2, seed=0)
    cfg = TrainConfig.from_dict({
        "max_steps": steps, "global_batch_size": 4, "micro_batch_size": 2, "seq_len": datamodule.seq_len,
        "accelerator": "gpu", "devices": 1, "strategy": strategy, "precision": "bf16-mixed",
        "checkpoint_every": max(steps // 2, 1), "log_every": 1, "optim": {"lr": 1e-2, "grad_clip": 1.0}})
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    metrics = train_retrofit(info.path, info, order, "lora", 4, datamodule, cfg, out)
    wall = time.perf_counter() - start
    model, _ = load_retrofit(out)
    return {"loss_curve": metrics["loss_curve"], "train_tokens_per_s": metrics["train_tokens_per_s"],
            "wall_s": wall, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "weights": {k: v.float() for k, v in model.hf.state_dict().items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch

    import lm_fixtures as F
    from vld.data.sft import SftSpec, make_sft

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = write_llama(tmp / "ckpt", args.hidden, args.layers)
        F.write_chats(tmp / "a.jsonl", F.CHATS * 4)
        spec = SftSpec.from_dict({"source": str(ckpt), "dir": str(tmp), "max_tokens": 96,
                                  "files": [{"path": "a.jsonl", "weight": 1.0}]}, "data.sft.chat")
        make_sft(spec, tmp / "set", "data.sft.chat")
        runs = {strategy: train(ckpt, tmp / "set", strategy, tmp / strategy, args.steps) for strategy in ("auto", "fsdp")}
    a, b = runs["auto"]["weights"], runs["fsdp"]["weights"]
    same_keys = sorted(a) == sorted(b)
    apart = max(float((a[k] - b[k]).abs().max()) for k in a) if same_keys else None
    moved = {name: run.pop("weights") for name, run in runs.items()}
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "hidden": args.hidden,
              "layers": args.layers, "runs": runs, "same_keys": same_keys, "max_abs_weight_difference": apart,
              "finite": all(math.isfinite(float(v.abs().max())) for w in moved.values() for v in w.values()),
              "loss_curves_close": all(abs(x - y) <= 0.05 * abs(x) for x, y in
                                       zip(runs["auto"]["loss_curve"], runs["fsdp"]["loss_curve"]))}
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
