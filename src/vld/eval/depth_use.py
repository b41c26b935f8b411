"""Does a (revisited) virtual layer do new work? Causal ablations and early exit.

`depth_use(model, batches, score_fn, ...)` runs, over the first `max_sequences` sequences:
  - the intact model (its own forward pass);
  - per virtual layer i: skip it (h_{i+1} = h_i), swap it with virtual layer i+1, and, where
    its base layer ran before at virtual layer f, replace it by the first visit's update
    (h_{i+1} = h_i + (h_{f+1} - h_f)); per tied base layer, every later visit so replaced;
  - early exit: the final norm and head read at every h_j, j = 0 (embeddings) .. D (the output).
Ablated passes start from the intact hidden state where they first differ and run the model's
own step (vld.model.step; no weight is changed), so a skip of layer i costs D - 1 - i layer runs.

`score_fn(logits, batch)` returns per-sequence values where higher is worse (a loss or an
error): a tensor [B] (metric "loss") or {metric name: tensor [B]}; NaN marks a sequence the
metric does not cover (e.g. an error at one hop count). Deltas are ablated - intact per
sequence, with a 95% percentile interval from a paired bootstrap over sequences.
Each metric's regime verdict comes from vld.depth_rules.regime (docs/depth_use.md).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Mapping

import numpy as np

from vld.depth_rules import regime
from vld.errors import fail
from vld.result_schema import DEPTH_USE_SCHEMA
from vld.stats import bootstrap_ratio_interval

ABLATION_KINDS = ("skip", "swap", "revisit", "revisit_all")
RESAMPLES = 1000  # bootstrap resamples per interval
LEVEL = 0.95


# ---------------------------------------------------------------- running the model's step

def early_exit_logits(model, tokens, attention_mask=None) -> list:
    """Logits read at h_0 (embeddings) .. h_D; the last is the model's own output."""
    import torch

    with torch.inference_mode():
        _, hidden = model(tokens, attention_mask=attention_mask, return_hidden=True)
        return [model.readout(h) for h in hidden]


def ablations(schedule) -> list[dict]:
    """Every ablation of a schedule: kind, virtual layers touched, base layers touched.

    kinds: skip (one virtual layer), swap (virtual layers i, i+1), revisit (a later visit of a
    base layer replaced by its first visit's update), revisit_all (every later visit of one
    base layer so replaced)."""
    schedule = [int(b) for b in schedule]
    depth = len(schedule)
    first: dict[int, int] = {}
    out = []
    for i, base in enumerate(schedule):
        out.append({"kind": "skip", "virtual_layers": [i], "base_layers": [base]})
    for i in range(depth - 1):
        out.append({"kind": "swap", "virtual_layers": [i, i + 1],
                    "base_layers": [schedule[i], schedule[i + 1]]})
    for i, base in enumerate(schedule):
        if base in first:
            out.append({"kind": "revisit", "virtual_layers": [i], "base_layers": [base],
                        "first_visit": first[base]})
        else:
            first[base] = i
    for base in sorted(first):
        later = [i for i, b in enumerate(schedule) if b == base and i != first[base]]
        if len(later) > 1:
            out.append({"kind": "revisit_all", "virtual_layers": later, "base_layers": [base],
                        "first_visit": first[base]})
    for a in out:
        a["label"] = _label(a)
    return out


def _label(a: dict) -> str:
    v = a["virtual_layers"]
    if a["kind"] == "skip":
        return f"skip {v[0]}"
    if a["kind"] == "swap":
        return f"swap {v[0]}-{v[1]}"
    if a["kind"] == "revisit":
        return f"revisit {v[0]} <- {a['first_visit']}"
    return f"revisits of base {a['base_layers'][0]} <- {a['first_visit']}"


def ablated_final(model, ablation: dict, hidden, inputs):
    """Final residual state of one ablation, from the intact hidden states h_0..h_D and the
    model's prepared inputs (`model.prepare`). Returns (state, layer runs it took)."""
    from vld.model.step import run_visits

    kind, v = ablation["kind"], ablation["virtual_layers"]
    depth = len(hidden) - 1
    start = v[0]
    if kind == "skip":
        rest = range(start + 1, depth)
        return run_visits(model, inputs, hidden[start], rest), len(rest)
    if kind == "swap":
        order = [start + 1, start, *range(start + 2, depth)]
        return run_visits(model, inputs, hidden[start], order), len(order)
    f = ablation["first_visit"]
    first_update = hidden[f + 1] - hidden[f]
    if kind == "revisit":
        rest = range(start + 1, depth)
        return run_visits(model, inputs, hidden[start] + first_update, rest), len(rest)
    # revisit_all: the intact run is correct up to the first replaced visit.
    x, runs, replaced = hidden[start], 0, set(v)
    for i in range(start, depth):
        if i in replaced:
            x = x + first_update
        else:
            x = run_visits(model, inputs, x, [i])
            runs += 1
    return x, runs


# ---------------------------------------------------------------- metric values

def _as_metrics(values) -> dict:
    import torch

    if isinstance(values, Mapping):
        out = dict(values)
    else:
        out = {"loss": values}
    if not out:
        raise ValueError("score_fn returned no metric")
    return {str(k): torch.as_tensor(v).detach().reshape(-1).double().cpu().numpy()
            for k, v in out.items()}


def _summary(values: np.ndarray, seed: int) -> dict:
    """Mean of the defined values with a percentile bootstrap interval over sequences. The
    draws come from (seed, number of values) alone, so an interval does not depend on which
    ablations ran before it, and deltas over the same sequences are paired."""
    values = values[~np.isnan(values)]
    n = int(values.size)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = float(values.mean())
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    low, high = bootstrap_ratio_interval(values, resamples=RESAMPLES, seed=[seed, n], level=LEVEL)
    return {"mean": mean, "low": low, "high": high, "n": n}


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def _paired(ablated: np.ndarray, intact: np.ndarray) -> np.ndarray:
    """Per-sequence ablated - intact; NaN where either is undefined."""
    return ablated - intact


# ---------------------------------------------------------------- batches

def _batch_size(batch) -> int:
    return int(_tokens_of(batch).shape[0])


def _tokens_of(batch):
    import torch

    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping) and "tokens" in batch:
        return batch["tokens"]
    fail("depth_use.batches", "each batch must be a token tensor [B, T] or a mapping with "
         "'tokens' (and optionally 'attention_mask')")


def _take(batch, n: int):
    """The first n sequences of a batch: every tensor/array/list value with the batch's
    leading size is cut; other values pass unchanged."""
    import torch

    size = _batch_size(batch)
    if n >= size:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    out = {}
    for key, value in batch.items():
        if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim and value.shape[0] == size:
            out[key] = value[:n]
        elif isinstance(value, (list, tuple)) and len(value) == size:
            out[key] = value[:n]
        else:
            out[key] = value
    return out


def _to_device(batch, device):
    """The batch with its tensors on the model's device (what score_fn then receives)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


# ---------------------------------------------------------------- the entry point

def depth_use(model, batches: Iterable, score_fn: Callable, max_sequences: int | None = 256,
              seed: int = 0, chance: Mapping[str, float] | None = None,
              early_exit: bool = True, kinds: Iterable[str] = ABLATION_KINDS,
              measure_time: bool = False) -> dict:
    """Causal ablations and early exit of `model` (a model with the step interface of
    vld.model.step: VLDTransformer, RetrofitLlama) over `batches`.

    batches: token tensors [B, T] or mappings with "tokens" [B, T] (what the model reads),
      optional "attention_mask" [B, T] (1 = real token) and any keys `score_fn` needs.
    score_fn(logits [B, T, V], batch) -> tensor [B] or {metric: tensor [B]} (module docstring);
      it receives the batch with its tensors moved to the model's device.
    max_sequences: use only the first N sequences (None = all), so the ablations stay a small
      share of an evaluation.
    chance: {metric: value of a chance-level predictor}, for the regime rule (metrics
      without one get "not shown").
    kinds: which ablations to run (a subset of ABLATION_KINDS; the regime rule needs skip and
      swap); early_exit: read the head at every virtual layer.
    measure_time: add wall seconds of the intact pass, the ablations and the early exits
      under cost.seconds (off by default: the result is then a function of its inputs).
    Returns a JSON-serialisable dict, schema vld.depth_use/1 (docs/depth_use.md).
    """
    if max_sequences is not None and (not isinstance(max_sequences, int)
                                      or isinstance(max_sequences, bool) or max_sequences < 1):
        fail("depth_use.max_sequences", f"must be an integer >= 1 or None, got {max_sequences!r}")
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - set(ABLATION_KINDS))
    if unknown:
        fail("depth_use.kinds", f"unknown ablation {unknown[0]!r} (known: {', '.join(ABLATION_KINDS)})")
    schedule = [int(b) for b in (getattr(model, "schedule", None) or range(model.config.n_layer))]
    plan = [a for a in ablations(schedule) if a["kind"] in kinds]
    measured = _Measured(plan, len(schedule))
    _measure(model, batches, score_fn, measured, max_sequences, early_exit, measure_time)
    if measured.seen == 0:
        fail("depth_use.batches", "no sequence to evaluate")

    intact = {name: np.concatenate(parts) for name, parts in measured.intact.items()}
    metrics = sorted(intact)
    result = {
        "schema": DEPTH_USE_SCHEMA,
        "schedule": schedule,
        "effective_depth": len(schedule),
        "tied": len(set(schedule)) < len(schedule),
        "sequences": measured.seen,
        "metrics": metrics,
        "interval": {"method": "paired percentile bootstrap over sequences", "level": LEVEL,
                     "resamples": RESAMPLES, "seed": seed},
        "chance": {k: float(v) for k, v in (chance or {}).items()},
        "intact": {name: _summary(intact[name], seed) for name in metrics},
        "ablations": _ablation_records(plan, measured.ablated, intact, seed),
        "early_exit": _early_exit_records(schedule, measured.exits, intact, seed) if early_exit else [],
    }
    result["regime"] = {name: regime(result, name) for name in metrics}
    runs = measured.runs
    cost = {"layer_runs_intact": runs["intact"], "layer_runs_ablations": runs["ablations"],
            "ablation_to_intact": (runs["ablations"] / runs["intact"]) if runs["intact"] else None}
    if measure_time:
        cost["seconds"] = {k: round(v, 6) for k, v in measured.seconds.items()}
    result["cost"] = cost
    return result


class _Measured:
    """Per-sequence metric values gathered batch by batch ({metric: [array per batch]}: of the
    intact model, of each planned ablation, read out after each virtual layer), with the
    layer runs and wall seconds of each phase and the number of sequences seen."""

    def __init__(self, plan: list[dict], depth: int):
        self.plan, self.depth = plan, depth
        self.intact: dict[str, list] = {}
        self.ablated = [dict() for _ in plan]
        self.exits = [dict() for _ in range(depth + 1)]
        self.seconds = {"intact": 0.0, "ablations": 0.0, "early_exit": 0.0}
        self.runs = {"intact": 0, "ablations": 0, "early_exit_readouts": 0}
        self.seen = 0

    @staticmethod
    def collect(store: dict, values) -> None:
        for name, array in _as_metrics(values).items():
            store.setdefault(name, []).append(array)


def _measure(model, batches: Iterable, score_fn: Callable, measured: _Measured,
             max_sequences: int | None, early_exit: bool, measure_time: bool) -> None:
    """Run the intact model, every planned ablation and the early exits over the first
    `max_sequences` sequences of `batches`, into `measured`; the model is left in the
    training mode it came in."""
    import torch

    from vld.model.step import run_visits

    depth, collect = measured.depth, measured.collect
    device = next(model.parameters()).device

    def clock() -> float:
        # Queued GPU work belongs to the phase that queued it.
        if measure_time and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                if max_sequences is not None and measured.seen >= max_sequences:
                    break
                _tokens_of(batch)  # a malformed batch is a user error before any compute
                if max_sequences is not None:
                    batch = _take(batch, max_sequences - measured.seen)
                batch = _to_device(batch, device)
                tokens = _tokens_of(batch)
                mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
                measured.seen += int(tokens.shape[0])

                started = clock()
                # The model's forward, its parts kept: the ablations re-run its step from these.
                inputs = model.prepare(tokens, attention_mask=mask)
                hidden = [inputs.embedding]
                logits = model.readout(run_visits(model, inputs, inputs.embedding, range(depth), hidden))
                collect(measured.intact, score_fn(logits, batch))
                measured.seconds["intact"] += clock() - started
                measured.runs["intact"] += depth

                started = clock()
                for index, ablation in enumerate(measured.plan):
                    state, cost = ablated_final(model, ablation, hidden, inputs)
                    collect(measured.ablated[index], score_fn(model.readout(state), batch))
                    measured.runs["ablations"] += cost
                measured.seconds["ablations"] += clock() - started

                if early_exit:
                    started = clock()
                    for j in range(depth):
                        collect(measured.exits[j], score_fn(model.readout(hidden[j]), batch))
                    measured.seconds["early_exit"] += clock() - started
                    measured.runs["early_exit_readouts"] += depth
    finally:
        model.train(was_training)


def _ablation_records(plan: list[dict], ablated_values: list[dict], intact: dict, seed: int) -> list[dict]:
    """Each ablation with its mean metric values and its paired change vs the intact model."""
    metrics, records = sorted(intact), []
    for ablation, values in zip(plan, ablated_values):
        record = dict(ablation)
        ablated = {name: np.concatenate(values[name]) for name in metrics}
        record["value"] = {name: _mean(ablated[name]) for name in metrics}
        record["delta"] = {name: _summary(_paired(ablated[name], intact[name]), seed)
                           for name in metrics}
        records.append(record)
    return records


def _early_exit_records(schedule: list[int], exit_values: list[dict], intact: dict, seed: int) -> list[dict]:
    """The metrics read after each number of virtual layers run, 0 (embeddings) .. D (the
    model's own output), with the base layer and visit of the last layer run."""
    depth, metrics = len(schedule), sorted(intact)
    visits: dict[int, int] = {}
    records = []
    for j in range(depth + 1):
        record = {"layers_run": j}
        if j:
            base = schedule[j - 1]
            record.update({"virtual_layer": j - 1, "base_layer": base,
                           "visit": visits.get(base, 0)})
            visits[base] = visits.get(base, 0) + 1
        else:
            record.update({"virtual_layer": None, "base_layer": None, "visit": None})
        values = intact if j == depth else {n: np.concatenate(exit_values[j][n]) for n in metrics}
        record["value"] = {name: _summary(values[name], seed) for name in metrics}
        records.append(record)
    return records
