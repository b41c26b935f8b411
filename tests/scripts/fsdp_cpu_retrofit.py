"""vld.retrofit.api.train_retrofit of a cycled, LoRA-adapted Llama under `train.strategy: fsdp`,
on CPU, with the three refusals of FSDP on CPU lifted (tests/test_lm_retrofit_fsdp.py):

  - vld's validation (TrainConfig: fsdp needs accelerator gpu): the strategy is set after it;
  - Lightning 2.6.6's AcceleratorConnector refuses `type(strategy) is FSDPStrategy` without a
    CUDA accelerator: a subclass, CpuFSDP, is not refused;
  - Lightning's FSDPStrategy passes device_id=root_device.index (None on CPU), which torch's FSDP
    refuses on a machine without an accelerator: the FSDP units get device_id cpu;
  - and it gathers checkpoints and weights with offload_to_cpu, which on CPU frees the memory the
    gathered tensors still point to (a segmentation fault in torch 2.13's state-dict hook): the
    gathering here does not offload (there is no device memory to spare).

Everything else is the code the lm_retrofit stage runs: vld.train.run.lightning_strategy and
fsdp_kwargs, LMModule (its clipping under FSDP), FullWeights and the reload before saving.

    python fsdp_cpu_retrofit.py CKPT SFT_SET OUT STRATEGY DEVICES

With DEVICES 2, Lightning starts the second rank itself (gloo), as in a stage. Rank 0 writes
OUT/shards.json: per rank, the elements of the LoRA parameters it holds after training.
"""

import json
import sys
from pathlib import Path

import lightning.pytorch.strategies as strategies
import lightning.pytorch.strategies.fsdp as lightning_fsdp
import torch
import torch.distributed as dist
import torch.distributed.fsdp as fsdp
from lightning.pytorch.callbacks import Callback


class CpuFSDP(strategies.FSDPStrategy):
    """Lightning's FSDPStrategy, not refused on CPU by the accelerator connector's type check."""


class CpuUnit(fsdp.FullyShardedDataParallel):
    def __init__(self, *args, device_id=None, **kwargs):
        super().__init__(*args, device_id=torch.device("cpu") if device_id is None else device_id, **kwargs)


def gathered_in_place(module, world_size, rank0_only=True):
    config = fsdp.FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only)
    optim_config = fsdp.FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only)
    return fsdp.FullyShardedDataParallel.state_dict_type(module, fsdp.StateDictType.FULL_STATE_DICT, config,
                                                         optim_config)


strategies.FSDPStrategy = CpuFSDP  # vld.train.run and vld.train.module look it up at call time
fsdp.FullyShardedDataParallel = CpuUnit  # FSDPStrategy._setup_model imports it at call time
lightning_fsdp._get_full_state_dict_context = gathered_in_place


class Shards(Callback):
    """How much of the LoRA weights each rank holds at the end (FSDP shards: less than all)."""

    def __init__(self, out: Path):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        held = torch.tensor([sum(p.numel() for n, p in pl_module.named_parameters() if "lora_" in n)])
        every = [torch.zeros_like(held) for _ in range(trainer.world_size)]
        if trainer.world_size > 1:
            dist.all_gather(every, held)
        else:
            every = [held]
        if trainer.is_global_zero:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "shards.json").write_text(json.dumps([int(t) for t in every]))


def main(ckpt: str, data: str, out: str, strategy: str, devices: str) -> None:
    from vld.retrofit.api import train_retrofit
    from vld.retrofit.sources import inspect_source
    from vld.train.config import TrainConfig
    from vld.train.datamodules import SftDataModule

    info = inspect_source(Path(ckpt))
    datamodule = SftDataModule(data, micro_batch_size=2, seed=0)
    cfg = TrainConfig.from_dict({
        "max_steps": 4, "global_batch_size": 4, "micro_batch_size": 2, "seq_len": datamodule.seq_len,
        "accelerator": "cpu", "devices": int(devices), "threads": 1, "checkpoint_every": 2, "log_every": 1,
        "optim": {"lr": 0.01, "grad_clip": 0.05, "weight_decay": 0.1}})
    cfg.strategy = strategy  # after validation, which refuses fsdp on CPU
    # cycle x1 over layers 1..2, activation checkpointing of each visit
    from vld.model.backend import Backend

    metrics = train_retrofit(info.path, info, [0, 1, 2, 1, 2, 3], "lora", 4, datamodule, cfg, Path(out),
                             backend=Backend(activation_checkpointing=True), callbacks=[Shards(Path(out))])
    if metrics.get("final_loss") is not None and (not dist.is_initialized() or dist.get_rank() == 0):
        print("METRICS " + json.dumps({k: metrics[k] for k in ("final_loss", "loss_curve", "steps")}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
