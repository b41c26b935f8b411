"""Learning curves: the models being trained, scored on a small fixed held-out set every N steps.

    callback = LearningCurve(every=100, score=khop_curve_score(sets))

Scoring runs after the optimizer step, in eval mode, without gradients, at the nominal loop
count, with the random number generators saved and restored around it: the weights trained
with curves on equal those trained with them off. The points are kept on the LightningModule
(`eval_curve`, saved in its checkpoints, so a resumed run reports the whole curve).

One scoring per task: k-hop error per hop count (`error_hop<k>`), knowledge absorbed bits per
token or per person (the knowledge evaluation's own measures on a fixed subset), iGSM answer
accuracy per test set (`answer_accuracy_<test>`, the iGSM evaluation on a test set's first
problems).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from vld.model.modes import eval_mode

# score(models) -> one {metric: value} per model; `models` is the LightningModule being trained
# (vld.train.module.LMModule): models.per_model_logits(tokens [B, T]) -> logits [N, B, T, V] runs
# the N models together, models.each_model() yields each alone (an nn.Module, its weights now)
Score = Callable[[Any], list[dict[str, float]]]


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
            scores = self.score(pl_module)
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

    def score(models):
        wrong: dict[int, torch.Tensor] = {}
        for k, (inputs, labels) in sorted(sets.items()):
            total = None
            for start in range(0, len(inputs), batch_size):
                x = torch.as_tensor(inputs[start:start + batch_size])
                y = torch.as_tensor(labels[start:start + batch_size])
                logits = models.per_model_logits(x)
                y = y.to(logits.device)
                miss = ((logits.argmax(dim=-1) != y) & (y >= 0)).sum(dim=(1, 2)).cpu()
                total = miss if total is None else total + miss
            wrong[k] = total.double() / max(1, int((labels >= 0).sum()))
        models = len(next(iter(wrong.values())))
        return [{f"error_hop{k}": float(errors[i]) for k, errors in wrong.items()} for i in range(models)]

    return score


# the knowledge evaluation's measures a curve keeps: per token (random tokens) or per person
# (biographies), so that a subset's value estimates the whole set's
KNOWLEDGE_CURVE_METRICS = ("absorbed_bits_entropy_per_token", "absorbed_bits_ce_per_token",
                           "bio_capacity_bits_per_person")


def knowledge_curve_score(data: str | Path, seq_len: int, sequences: int, options: Mapping[str, Any] | None = None) -> Score:
    """The knowledge evaluation (vld.eval.knowledge.all_knowledge_measures, at `seq_len` with
    `options`, the family's eval settings) on an evenly spread fixed subset of at most
    `sequences` evaluation windows (random tokens) or biographies: KNOWLEDGE_CURVE_METRICS,
    those the data has. On the whole set (when it is that small) they are the evaluation's."""
    from vld.data.tokens import TokenSet
    from vld.eval.knowledge import all_knowledge_measures

    token_set = TokenSet.open(data)
    options = {**(options or {}), "limit": int(sequences)}

    def score(models):
        out = []
        for model in models.each_model():
            measures = all_knowledge_measures(model, token_set, seq_len, **options)
            out.append({name: float(measures[name]) for name in KNOWLEDGE_CURVE_METRICS if name in measures})
        return out

    return score


def igsm_curve_score(tests: Mapping[str, str | Path], sequences: int, objective: str, max_new_tokens: int | None = None,
                     batch_size: int = 32) -> Score:
    """Answer accuracy (`answer_accuracy_<test>`) on the first `sequences` problems of each
    iGSM test set ({name: directory}): vld.eval.igsm.evaluate_igsm with limit=`sequences` and
    the family's decoding settings, so the point at the last step is that evaluation's
    accuracy on those problems."""
    from vld.eval.igsm import evaluate_igsm

    def score(models):
        return [{f"answer_accuracy_{name}": float(evaluate_igsm(
                    model, path, max_new_tokens=max_new_tokens, batch_size=batch_size, limit=int(sequences),
                    progress=False, objective=objective)["answer_accuracy"])
                 for name, path in sorted(tests.items())}
                for model in models.each_model()]

    return score


__all__ = ["KNOWLEDGE_CURVE_METRICS", "LearningCurve", "curve_table", "igsm_curve_score", "khop_curve_score",
           "knowledge_curve_score"]
