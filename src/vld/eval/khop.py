"""k-hop evaluation: per hop count, the per-position error and the per-sequence exact match.

Positions of one sequence share its letters, so they are not independent draws: the error's
95% interval is a bootstrap over sequences (vld.stats.bootstrap_ratio_interval); exact
match is one Bernoulli draw per sequence (Wilson interval). The chance line is the error of the
best constant prediction on the same test labels. Each result also keeps the wrong-position
count of every sequence, so the report can pool seeds and bootstrap again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vld.errors import fail
from vld.stats import bootstrap_ratio_interval, wilson_interval

DEFAULT_BOOTSTRAP = 1000  # resamples of each hop count's error interval (eval.bootstrap)


def bootstrap_resamples(settings: dict) -> int:
    """The resamples an evaluation with these eval settings draws (`bootstrap`, else the default)."""
    return int(settings.get("bootstrap") or DEFAULT_BOOTSTRAP)


def wrong_positions(model, inputs: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Number of labelled positions the model's argmax gets wrong, per sequence."""
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    wrong = np.zeros(len(inputs), dtype=np.int64)
    from vld.model import eval_mode

    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            x = torch.as_tensor(inputs[start:start + batch_size], device=device)
            y = torch.as_tensor(labels[start:start + batch_size], device=device)
            predicted = model(x).argmax(dim=-1)
            wrong[start:start + len(x)] = ((predicted != y) & (y >= 0)).sum(dim=1).cpu().numpy()
    return wrong


def summarise(wrong, positions, chance_error: float, resamples: int = 1000, seed: int = 0) -> dict:
    """Error and exact match of per-sequence wrong counts (positions = labelled per sequence)."""
    wrong = np.asarray(wrong, dtype=np.int64)
    positions = np.broadcast_to(np.asarray(positions, dtype=np.int64), wrong.shape)
    exact = int((wrong == 0).sum())
    return {
        "sequences": int(len(wrong)),
        "positions": int(positions.sum()),
        "error": float(wrong.sum() / max(1, positions.sum())),
        "error_ci95": list(bootstrap_ratio_interval(wrong, positions, resamples, seed)),
        "exact_match": exact / max(1, len(wrong)),
        "exact_match_ci95": list(wilson_interval(exact, len(wrong))),
        "chance_error": chance_error,
    }


def evaluate_khop(model, test_dir: str | Path, batch_size: int = 256, bootstrap: int = DEFAULT_BOOTSTRAP) -> dict:
    """{"hops": {"<k>": summary + wrong_per_sequence, labelled_per_sequence}, "spec": {...}}."""
    from dataclasses import asdict

    from vld.data.khop import NO_LABEL, constant_predictor_error, read_test_sets

    if not Path(test_dir).is_dir():
        fail(str(test_dir), "not a directory of k-hop test sets (run the data stage: dvc repro)")
    spec, sets = read_test_sets(test_dir)
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", spec.vocab_size))
    if vocab < spec.vocab_size:
        fail(str(test_dir), f"needs a vocabulary of {spec.vocab_size}, the model has {vocab}")
    hops = {}
    for k, (inputs, labels) in sorted(sets.items()):
        wrong = wrong_positions(model, inputs, labels, batch_size)
        labelled = (labels != NO_LABEL).sum(axis=1)
        summary = summarise(wrong, labelled, constant_predictor_error(labels), bootstrap, seed=k)
        summary.update(wrong_per_sequence=wrong.tolist(), labelled_per_sequence=int(labelled[0]))
        hops[str(k)] = summary
    return {"spec": asdict(spec), "bootstrap": int(bootstrap), "hops": hops}


def depth_use_inputs(test_dir: str | Path, max_sequences: int, batch_size: int = 64):
    """(batches, score_fn, chance) for vld.eval.depth_use on the k-hop test sets: the same
    number of sequences from every hop count; metrics `error` (all of them) and `error_hop<k>`
    (per-position error of the sequences of hop count k, NaN for the others)."""
    import torch

    from vld.data.khop import NO_LABEL, constant_predictor_error, read_test_sets

    _, sets = read_test_sets(test_dir)
    per_hop = max(1, -(-max_sequences // len(sets)))
    metrics = [f"error_hop{k}" for k in sorted(sets)]
    batches = []
    for k, (inputs, labels) in sorted(sets.items()):
        inputs, labels = inputs[:per_hop], labels[:per_hop]
        for start in range(0, len(inputs), batch_size):
            batches.append({"tokens": torch.as_tensor(inputs[start:start + batch_size]),
                            "labels": torch.as_tensor(labels[start:start + batch_size]),
                            "hops": torch.full((len(inputs[start:start + batch_size]),), k)})

    def score(logits, batch):
        labels = batch["labels"]
        labelled = (labels != NO_LABEL).sum(dim=1).clamp_min(1)
        error = ((logits.argmax(dim=-1) != labels) & (labels != NO_LABEL)).sum(dim=1) / labelled
        out = {"error": error.double()}
        for k, name in zip(sorted(sets), metrics):
            out[name] = torch.where(batch["hops"] == k, error.double(), torch.full_like(error, float("nan"), dtype=torch.float64))
        return out

    chance = {f"error_hop{k}": constant_predictor_error(labels) for k, (_, labels) in sets.items()}
    chance["error"] = float(np.mean(list(chance.values())))
    return batches, score, chance, len(sets) * per_hop
