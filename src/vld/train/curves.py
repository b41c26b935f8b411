"""Learning curves: the models being trained, scored on a small fixed held-out set every N steps.

    callback = LearningCurve(every=100, score=khop_curve_score(sets))

Scoring runs after the optimizer step, in eval mode, without gradients, at the nominal loop
count, with the random number generators saved and restored around it: the weights trained
with curves on equal those trained with them off. The points are kept on the LightningModule
(`eval_curve`, saved in its checkpoints, so a resumed run reports the whole curve).
"""

from __future__ import annotations

import time
from typing import Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from vld.model.modes import eval_mode

# score(logits_of) -> one {metric: value} per model; logits_of(tokens [B, T]) -> logits [N, B, T, V]
Score = Callable[[Callable[[torch.Tensor], torch.Tensor]], list[dict[str, float]]]


class LearningCurve(Callback):
    """Scores the module's models at step 0 and every `every` optimizer steps and the last."""

    def __init__(self, every: int, score: Score, max_steps: int):
        self.every, self.score, self.max_steps = int(every), score, int(max_steps)
        self._step_at_batch_start = -1

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.global_step == 0 and not pl_module.eval_curve:
            self._record(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._step_at_batch_start:
            return  # inside a gradient accumulation
        if step % self.every == 0 or step >= self.max_steps:
            self._record(trainer, pl_module)

    @torch.no_grad()
    def _record(self, trainer: L.Trainer, pl_module) -> None:
        began = time.perf_counter()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices), eval_mode(pl_module):
            pl_module.nominal_schedule()
            scores = self.score(pl_module.per_model_logits)
        pl_module.eval_curve.append({"step": int(trainer.global_step), "models": scores})
        pl_module.curve_wall_s += time.perf_counter() - began


def curve_table(points: list[dict], model: int) -> dict[str, list]:
    """Model `model`'s points as {"steps": [...], metric: [...]} (what metrics.json holds)."""
    if not points:
        return {}
    out: dict[str, list] = {"steps": [p["step"] for p in points]}
    for name in points[0]["models"][model]:
        out[name] = [float(p["models"][model][name]) for p in points]
    return out


def khop_curve_score(sets: dict[int, tuple[np.ndarray, np.ndarray]], batch_size: int = 256) -> Score:
    """Per-position error per hop count (`error_hop<k>`) on `sets` ({hops: (inputs, labels)},
    vld.data.khop's test-set arrays; label -1: no label)."""

    def score(logits_of):
        wrong: dict[int, torch.Tensor] = {}
        for k, (inputs, labels) in sorted(sets.items()):
            total = None
            for start in range(0, len(inputs), batch_size):
                x = torch.as_tensor(inputs[start:start + batch_size])
                y = torch.as_tensor(labels[start:start + batch_size])
                logits = logits_of(x)
                y = y.to(logits.device)
                miss = ((logits.argmax(dim=-1) != y) & (y >= 0)).sum(dim=(1, 2)).cpu()
                total = miss if total is None else total + miss
            wrong[k] = total.double() / max(1, int((labels >= 0).sum()))
        models = len(next(iter(wrong.values())))
        return [{f"error_hop{k}": float(errors[i]) for k, errors in wrong.items()} for i in range(models)]

    return score


__all__ = ["LearningCurve", "curve_table", "khop_curve_score"]
