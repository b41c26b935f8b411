"""Seeds of one variant trained together: one process, one stacked model.

    metrics = train_seeds(models, datamodules, cfgs, out_dir)   # one dict per seed

`models[i]` (built by the caller under torch.manual_seed(seed i)), `datamodules[i]` and
`cfgs[i]` (equal except `seed`) are seed i's, as a single run would take them. With one seed this
is `vld.train.run.run_training`. With N seeds every parameter is stacked on a leading seed
dimension and the N models run as one (torch.func.vmap over functional_call) under the same
Lightning Trainer, checkpoints and resume as a single run (vld.train.run.fit). Per seed: its
own initial weights, its own data (seed i's DataModule, read beside the others: a stacked
batch holds exactly the batches a single run of seed i is fed), its own AdamW state
(AdamW is elementwise, so a stacked tensor is N independent optimisers), its own gradient
clipping (by its own norm, not the joint one), the configured lr schedule, its own loss curve.
The loss for backward is the sum of the seeds' mean losses, so each seed's gradient is its own.

What is exact and what is not (docs/training.md, "Seeds trained together"): the data stream
is the single run's exactly; forward values and most gradients are too on CPU (the oneDNN
linear and the block-causal attention run each seed's own GEMMs under vmap); LayerNorm's
weight and bias gradients are reduced over rows in another order, so weights agree with
single runs to float32 rounding only. A resumed stacked run is bit-equal to an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vld.atomic import write_json
from vld.errors import fail
from vld.train.config import TrainConfig
from vld.train.datamodules import _WindowDataModuleBase
from vld.train.module import LMModule, next_token_loss, unpack_batch
from vld.train.run import (METRICS, _check_vocab, curve_callbacks, fit, run_config, run_machine, run_training,
                           training_metrics)


def seed_dir(out_dir: Path, seed: int) -> Path:
    """Where a stacked run writes seed `seed`'s metrics."""
    return Path(out_dir) / f"seed_{seed}"


class StackedModel(nn.Module):
    """N models of one architecture as one module: each parameter and buffer of `net` holds the
    N models' tensors stacked on a leading dimension (tied parameters stay tied), and
    forward(tokens [N, B, T]) -> logits [N, B, T, V] runs model i on tokens[i]."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        _check_same_structure(models)
        net = copy.deepcopy(models[0])
        backend = getattr(net, "backend", None)
        if getattr(backend, "activation_checkpointing", False):
            # torch.utils.checkpoint recomputes in backward, outside vmap, where the stacked
            # inputs no longer exist; without it the results are the same, the memory is not
            print("vld: note: seeds trained together run without activation checkpointing"
                  " (it cannot recompute inside torch.func.vmap)", file=sys.stderr, flush=True)
            net.set_backend(dataclasses.replace(backend, activation_checkpointing=False))
        names = {id(p): name for name, p in net.named_parameters()}  # de-duplicated: tied once
        sources = [dict(m.named_parameters()) for m in models]
        stacked: dict[str, nn.Parameter] = {}
        for module in net.modules():
            for key, param in list(module._parameters.items()):
                if param is None:
                    continue
                name = names[id(param)]
                if name not in stacked:
                    stacked[name] = nn.Parameter(torch.stack([s[name].detach() for s in sources]),
                                                 requires_grad=param.requires_grad)
                module._parameters[key] = stacked[name]
        buffers = [dict(m.named_buffers()) for m in models]
        for prefix, module in net.named_modules():
            for key, buffer in list(module._buffers.items()):
                if buffer is not None:
                    name = f"{prefix}.{key}" if prefix else key
                    module._buffers[key] = torch.stack([b[name] for b in buffers])
        self.net = net
        self.size = len(models)

    def forward(self, tokens: torch.Tensor, schedules: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """`schedules`: model i runs schedules[i] (a loop count drawn per seed); the models that
        share one run together, in one vmap each. None: every model runs net's schedule."""
        params, buffers = dict(self.net.named_parameters()), dict(self.net.named_buffers())

        def one_model(p, b, x):
            out = torch.func.functional_call(self.net, (p, b), (x,))
            return out.logits if hasattr(out, "logits") else out

        # dropout (p > 0): each model draws its own masks, not those of its single run
        vmapped = torch.func.vmap(one_model, randomness="different")

        def run(p, b, x):
            # Off CPU, SDPA's fused kernels under vmap fail in backward (CUDA's memory-efficient
            # kernel: "LSE is not correctly aligned", H200, torch 2.11); its math path is plain
            # matmuls and softmax, which vmap batches. On CPU the block-causal kernel serves.
            if x.device.type == "cpu":
                return vmapped(p, b, x)
            with sdpa_kernel(SDPBackend.MATH):
                return vmapped(p, b, x)
        if schedules is None:
            return run(params, buffers, tokens)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, order in enumerate(schedules):
            groups.setdefault(tuple(order), []).append(i)
        if len(groups) == 1:
            self.net.set_schedule(schedules[0])
            return run(params, buffers, tokens)
        parts, members = [], []
        for order, idx in groups.items():
            self.net.set_schedule(order)
            index = torch.tensor(idx, device=tokens.device)
            parts.append(run({k: v[index] for k, v in params.items()}, {k: v[index] for k, v in buffers.items()},
                             tokens[index]))
            members += idx
        return torch.cat(parts)[torch.argsort(torch.tensor(members, device=tokens.device))]

    def set_schedule(self, order: Sequence[int] | None) -> None:
        self.net.set_schedule(order)

    def optimizer_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """vld.train.module.parameter_groups of one of the stacked models (`model`), as the
        stacked tensors: the same groups and settings for every model."""
        from vld.train.module import parameter_groups

        names = {id(p): name for name, p in model.named_parameters()}
        stacked = dict(self.net.named_parameters())
        return [{**group, "params": [stacked[names[id(p)]] for p in group["params"]]}
                for group in parameter_groups(model, weight_decay)]

    @torch.no_grad()
    def copy_into(self, models: Sequence[nn.Module]) -> None:
        """Model i's parameters and buffers <- slice i of the stacked ones (in place)."""
        for i, model in enumerate(models):
            self.copy_model_into(i, model)

    @torch.no_grad()
    def copy_model_into(self, i: int, model: nn.Module) -> None:
        """`model`'s parameters and buffers <- slice i of the stacked ones (in place)."""
        params, buffers = dict(self.net.named_parameters()), dict(self.net.named_buffers())
        for name, param in model.named_parameters():
            param.copy_(params[name][i])
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name][i])


def _check_same_structure(models: Sequence[nn.Module]) -> None:
    def shapes(model):
        return [(name, tuple(p.shape), p.dtype) for name, p in model.named_parameters()]

    first = shapes(models[0])
    for i, model in enumerate(models[1:], start=1):
        if shapes(model) != first:
            raise ValueError(f"train_seeds: model {i} differs from model 0 in its parameters; seeds stack"
                             " only models of one architecture")


@torch.no_grad()
def clip_grad_norm_per_model(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ applied to each stacked model on its own: model i's
    gradients (slice i of every parameter's) are scaled by max_norm / its own total 2-norm
    when that exceeds max_norm. Returns the N total norms."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads], dim=1)
    total = torch.linalg.vector_norm(norms, 2, dim=1)  # [N]
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s formula
    for g in grads:
        g.mul_(scale.view(-1, *(1,) * (g.ndim - 1)).to(g.dtype))
    return total


class StackedLMModule(LMModule):
    """LMModule over a StackedModel: a batch is one batch per model, the loss curve holds one
    loss per model and step, gradients are clipped per model. Checkpointing, the lr schedule and
    the resume bookkeeping are LMModule's."""

    def __init__(self, model: StackedModel, one_model: nn.Module, optim, max_steps: int, seeds: Sequence[int],
                 loops=None):
        super().__init__(model, optim, max_steps, loops=loops, seeds=tuple(seeds))
        self._one_model = [one_model]  # a list: not a submodule (only its parameter structure is used)
        self._alone: list[nn.Module] = []  # each_model's copy of one model, made on first use

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        parts = [unpack_batch(b) for b in batch]  # one batch per model, as each DataModule yields it
        logits = self.training_logits(torch.stack([inputs for inputs, _, _ in parts]), self.step_schedules())
        losses = torch.stack([next_token_loss(logits[i], targets, mask) for i, (_, targets, mask) in enumerate(parts)])
        self._micro_losses.append(losses.detach())
        return losses.sum()  # d(sum)/d(model i) = d(loss i)/d(model i)

    def per_model_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device)
        return self.model(tokens.unsqueeze(0).expand(self.model.size, *tokens.shape))

    def each_model(self):
        """Model i alone, for i = 0 .. N-1: one copy of the architecture (made once, not trained)
        filled with model i's current weights and running the stacked net's schedule; it is
        refilled at the next model, so use each before asking for the next."""
        if not self._alone:
            self._alone.append(copy.deepcopy(self._one_model[0]).to(self.device))
        alone = self._alone[0]
        alone.set_schedule(list(self.model.net.schedule))
        for i in range(self.model.size):
            self.model.copy_model_into(i, alone)
            yield alone

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._micro_losses:
            return
        # each model's losses averaged over micro-batches as LMModule does for one model
        step_loss = torch.stack([torch.stack(list(per_model)).mean() for per_model in zip(*self._micro_losses)])
        self._micro_losses.clear()
        step_loss = self.trainer.strategy.reduce(step_loss, reduce_op="mean")
        self.loss_curve.append([float(x) for x in step_loss])
        self.log_step(step_loss.mean(), optimizer,
                      {f"train/loss_seed{seed}": loss for seed, loss in zip(self.seeds, step_loss)})

    def optimizer_groups(self) -> list[dict[str, Any]]:
        return self.model.optimizer_groups(self._one_model[0], self.optim.weight_decay)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's own clipping would scale every model by the norm of all of them together
        if gradient_clip_val:
            clip_grad_norm_per_model(self.model.parameters(), float(gradient_clip_val))


class SeedsDataModule(L.LightningDataModule):
    """The seeds' own DataModules read side by side: each micro-batch is the list of their
    micro-batches (Lightning zips a list of loaders into one batch list)."""

    def __init__(self, datamodules: Sequence[L.LightningDataModule]):
        super().__init__()
        self.datamodules = list(datamodules)

    def prepare_data(self) -> None:
        for datamodule in self.datamodules:
            datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        for datamodule in self.datamodules:
            datamodule.trainer = self.trainer  # each splits the global batch by rank itself
            datamodule.setup(stage)

    def train_dataloader(self):
        for datamodule in self.datamodules:
            datamodule.trainer = self.trainer
        return [datamodule.train_dataloader() for datamodule in self.datamodules]


def train_seeds(
    models: Sequence[nn.Module],
    datamodules: Sequence[L.LightningDataModule],
    cfgs: Sequence[TrainConfig],
    out_dir: Path,
    logger=None,
    callbacks: Iterable[Callback] = (),
    loops=None,
    curve_score=None,
) -> list[dict[str, Any]]:
    """Train the seeds' models in place, together; returns one metrics dict per seed, with
    run_training's keys. One seed: run_training itself (out_dir/metrics.json). Several: one
    stacked run, checkpoints in out_dir/checkpoints, seed s's metrics also written (global rank
    0) to out_dir/seed_<s>/metrics.json. Each seed's train_tokens_per_s is its own (the
    stacked run's rate is their sum). `loops` and `curve_score` as in run_training: each seed
    draws its own loop counts (the models that drew one count run together), and the curve
    scores each seed's model."""
    if not len(models) == len(datamodules) == len(cfgs) >= 1:
        raise ValueError(f"train_seeds: {len(models)} models, {len(datamodules)} datamodules and {len(cfgs)}"
                         " configs; expected one of each per seed")
    seeds = [cfg.seed for cfg in cfgs]
    if len(set(seeds)) < len(seeds):
        fail("seeds", f"{seeds}: a seed is repeated")
    settings = {**cfgs[0].to_dict(), "seed": None}
    for cfg in cfgs[1:]:
        if {**cfg.to_dict(), "seed": None} != settings:
            raise ValueError("train_seeds: the configs differ in more than their seed")
    out_dir = Path(out_dir)
    if len(models) == 1:
        return [run_training(models[0], datamodules[0], cfgs[0], out_dir, logger=logger, callbacks=callbacks,
                             loops=loops, curve_score=curve_score)]

    start = time.perf_counter()
    for model, datamodule in zip(models, datamodules):
        _check_vocab(model, datamodule)
    cfg = cfgs[0]  # its seed seeds the global RNG (dropout, workers)
    module = StackedLMModule(StackedModel(models), models[0], cfg.optim, cfg.max_steps, seeds, loops=loops)
    ours = all(isinstance(datamodule, _WindowDataModuleBase) for datamodule in datamodules)
    stacked_config = {**run_config(cfg, loops), "seed": seeds}  # a checkpoint of other seeds is refused
    callbacks = [*callbacks, *curve_callbacks(cfg, curve_score)]
    trainer = fit(module, SeedsDataModule(datamodules), cfg, stacked_config, out_dir, logger, callbacks,
                  distributed_sampler=not ours)
    module.model.copy_into(models)
    wall_s = time.perf_counter() - start
    curves = [[step[i] for step in module.loss_curve] for i in range(len(models))]
    machine = run_machine(trainer)  # a collective under DDP: once, not per model
    metrics = [training_metrics(curve, trainer, cfg, module, wall_s, machine, i) for i, curve in enumerate(curves)]
    if trainer.is_global_zero:
        for seed, seed_metrics in zip(seeds, metrics):
            write_json(seed_dir(out_dir, seed) / METRICS, seed_metrics)
    return metrics
