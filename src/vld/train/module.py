"""The LightningModule: cross-entropy around any plain `nn.Module`.

No model code lives here: the wrapped module only has to map tokens [B, T] to logits
[B, T, V] (a `VLDTransformer`, or a Hugging Face model behind a thin adapter). Two batch
forms: windows (each token predicts the next one) and labelled positions (each position
carries its own label, e.g. k-hop; see `unpack_batch`).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from vld.errors import fail
from vld.train.config import OptimConfig
from vld.train.loops import COMPILES_PER_COUNT


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(inputs, targets, loss_mask) of a batch.

    Windows: a tensor [B, T+1] or a dict with "tokens" and an optional "loss_mask" ([B, T],
    aligned with the targets tokens[:, 1:]; 1 = counts in the loss); targets are the next tokens.
    Labelled positions: a dict with "inputs" [B, T] and "labels" [B, T]; label -1 means the
    position has none and is left out of the loss."""
    if isinstance(batch, dict) and "labels" in batch:
        labels = batch["labels"]
        has_label = labels >= 0
        return batch["inputs"], labels.clamp_min(0), has_label
    if isinstance(batch, dict):
        windows, loss_mask = batch["tokens"], batch.get("loss_mask")
    elif isinstance(batch, (list, tuple)):
        windows, loss_mask = batch[0], (batch[1] if len(batch) > 1 else None)
    else:
        windows, loss_mask = batch, None
    return windows[:, :-1], windows[:, 1:], loss_mask


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over target positions (over the masked ones when a mask is given)."""
    flat_logits = logits.reshape(-1, logits.size(-1)).float()
    flat_targets = targets.reshape(-1).long()
    if loss_mask is None:
        return F.cross_entropy(flat_logits, flat_targets)
    per_token = F.cross_entropy(flat_logits, flat_targets, reduction="none")
    mask = loss_mask.reshape(-1).to(per_token.dtype)
    # clamp: a micro-batch with nothing to predict contributes 0, not NaN
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


def lr_factor(step: int, max_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup over
    `warmup_steps` steps, then cosine from 1 down to `min_lr_ratio` at `max_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def decaying(model: nn.Module) -> set[int]:
    """ids of the parameters AdamW decays, GPT-2 practice: matrices of linear layers only; no
    decay on biases, norm weights (every parameter with fewer than 2 dimensions) or embeddings
    (which also covers an output head tied to the embedding)."""
    embeddings = {id(p) for module in model.modules() if isinstance(module, nn.Embedding)
                  for p in module.parameters(recurse=False)}
    return {id(p) for p in model.parameters() if p.ndim >= 2 and id(p) not in embeddings}


def parameter_groups(model: nn.Module, weight_decay: float, decays: set[int] | None = None) -> list[dict[str, Any]]:
    """AdamW groups: `decays` (default: decaying(model) now) with weight decay, the other
    trainable parameters without. Shared (reused) parameters appear once."""
    decays = decaying(model) if decays is None else decays
    decay, no_decay = [], []
    for _, param in model.named_parameters():  # named_parameters() de-duplicates shared tensors
        if not param.requires_grad:
            continue
        (decay if id(param) in decays else no_decay).append(param)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _logits(out):
    # Hugging Face models return an output object; plain modules return logits
    return out.logits if hasattr(out, "logits") else out


class LMModule(L.LightningModule):
    """Trains `model` (in place) on next-token prediction with AdamW + warmup/cosine."""

    def __init__(self, model: nn.Module, optim: OptimConfig | None = None, max_steps: int | None = None,
                 loops=None, seeds: tuple[int, ...] = (0,)):
        super().__init__()
        self.model = model
        self.optim = optim or OptimConfig()  # valid by construction
        # length of the lr schedule; None = the Trainer's max_steps
        self.max_steps = None if max_steps is None else int(max_steps)
        # the core's count per step (vld.train.loops.LoopTraining; None: the model's own schedule),
        # drawn from each of `seeds` (the model's, or each stacked model's) and the step
        self.loops, self.seeds = loops, list(seeds)
        # per optimizer step, the loss averaged over its micro-batches and all ranks
        self.loss_curve: list[float] = []
        self.train_wall_s = 0.0  # accumulated over resumed runs (set by run_training)
        self.resumed_from_step = 0
        self.eval_curve: list[dict] = []  # vld.train.curves.LearningCurve's points
        self.curve_wall_s = 0.0  # the time those took (inside train_wall_s)
        self.host_gemm_gflops: tuple[float, float] | None = None  # set by vld.train.run.fit on CPU
        self._micro_losses: list[torch.Tensor] = []
        self._compiled: list[nn.Module] = []  # compile_training's module (a list: not a submodule)
        # decided on the model as built: under FSDP (use_orig_params) each parameter is later a
        # flat 1-d shard of itself, the same object
        self._decays = decaying(model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return _logits(self.model(tokens))

    def compile_training(self) -> None:
        """Run the training forward (and so its backward) through torch.compile; evaluation,
        learning curves and generation call the model itself, eagerly. The weights stay the
        model's: its state_dict and checkpoints are unchanged."""
        if self.loops is not None and self.loops.varies:
            # the pipeline refuses this where it reads the recipe; here for callers of the API
            fail("train.compile", f"the loop count varies between steps, and {COMPILES_PER_COUNT}: train "
                 "eagerly, or with a fixed loop count")
        # static shapes: every training batch has the same shape; a new one would recompile
        self._compiled = [torch.compile(self.model, dynamic=False)]

    def training_logits(self, *inputs) -> torch.Tensor:
        """The model's logits for a training step: compiled after compile_training, else eager."""
        return _logits((self._compiled[0] if self._compiled else self.model)(*inputs))

    def step_schedules(self) -> list[list[int]] | None:
        """Each model's schedule at this optimizer step (None without a varying loop count)."""
        if self.loops is None:
            return None
        steps = self.max_steps if self.max_steps is not None else self.trainer.max_steps
        step = self.trainer.global_step
        return [self.loops.schedule(self.loops.repeats_at(seed, step, steps)) for seed in self.seeds]

    def nominal_schedule(self) -> None:
        """Back to the count evaluation runs (the model's own schedule)."""
        if self.loops is not None:
            self.model.set_schedule(self.loops.schedule(self.loops.repeats))

    def on_train_end(self) -> None:
        self.nominal_schedule()

    def per_model_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [N, B, T, V] of each of the module's N models (here one) on tokens [B, T]."""
        return self(tokens.to(self.device)).unsqueeze(0)

    def each_model(self) -> Iterator[nn.Module]:
        """Each of the module's models alone, with its current weights (here the model itself)."""
        yield self.model

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets, loss_mask = unpack_batch(batch)
        schedules = self.step_schedules()
        if schedules is not None:
            # set, not restored after the forward: a checkpointed visit reruns in backward
            self.model.set_schedule(schedules[0])
        logits = self.training_logits(inputs)
        loss = next_token_loss(logits, targets, loss_mask)
        self._micro_losses.append(loss.detach())
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # runs once per optimizer step, after all micro-batches of the accumulation
        if not self._micro_losses:
            return
        step_loss = torch.stack(self._micro_losses).mean()
        self._micro_losses.clear()
        step_loss = self.trainer.strategy.reduce(step_loss, reduce_op="mean")
        self.loss_curve.append(float(step_loss))
        self.log_step(step_loss, optimizer)

    def log_step(self, step_loss: torch.Tensor, optimizer: torch.optim.Optimizer, for_logger: dict | None = None) -> None:
        """The step's loss (the progress bar shows it); the learning rate and `for_logger` only
        when the trainer has a logger: the pipeline trains seeds together without one (each seed's
        curve goes to its MLflow run after the fit), and each self.log costs a share of a small
        model's step."""
        self.log("train/loss", step_loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=False)
        if not self.trainer.loggers:
            return
        for name, value in (for_logger or {}).items():
            self.log(name, value, on_step=True, on_epoch=False, sync_dist=False)
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False, sync_dist=False)

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """AdamW's parameter groups (see parameter_groups)."""
        return parameter_groups(self.model, self.optim.weight_decay, self._decays)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.optimizer_groups(),
            lr=self.optim.lr,
            betas=tuple(self.optim.betas),
            eps=self.optim.eps,
            # one foreach call per update step for all parameters instead of a Python loop
            # over them: the same operations in the same order on CPU (bit-identical results)
            foreach=True,
        )
        max_steps = self.max_steps if self.max_steps is not None else self.trainer.max_steps
        if max_steps is None or max_steps < 1:
            raise ValueError("LMModule needs max_steps (or a Trainer with max_steps) for its lr schedule")
        warmup, min_ratio = self.optim.warmup_steps(max_steps), self.optim.min_lr_ratio
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, max_steps, warmup, min_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            # the norm over every rank's shards, by the root FSDP module (Lightning 2.6.6 refuses
            # norm clipping under FSDP: its precision plugin has no handle on that module)
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the curve and the RNG go with the weights, so a resumed run reports the whole
        # curve and draws the same random numbers (dropout) as an uninterrupted one
        checkpoint["vld_loss_curve"] = list(self.loss_curve)
        checkpoint["vld_train_wall_s"] = float(self.train_wall_s)
        if self.eval_curve:
            checkpoint["vld_eval_curve"] = list(self.eval_curve)
            checkpoint["vld_curve_wall_s"] = float(self.curve_wall_s)
        checkpoint["vld_rng_cpu"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["vld_rng_cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loss_curve = list(checkpoint.get("vld_loss_curve", []))
        self.train_wall_s = float(checkpoint.get("vld_train_wall_s", 0.0))
        self.eval_curve = list(checkpoint.get("vld_eval_curve", []))
        self.curve_wall_s = float(checkpoint.get("vld_curve_wall_s", 0.0))
        self.resumed_from_step = int(checkpoint.get("global_step", 0))
        if "vld_rng_cpu" in checkpoint:
            torch.set_rng_state(checkpoint["vld_rng_cpu"])
        if "vld_rng_cuda" in checkpoint and torch.cuda.is_available():
            states = checkpoint["vld_rng_cuda"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
