"""How a model uses its (virtual) depth: per-virtual-layer hidden-state measurements.

For virtual layer i (the block at position i of the schedule, mapping h_i -> h_{i+1}),
averaged over every token of the probe windows:
  update_norm        mean |h_{i+1} - h_i|
  relative_update    mean |h_{i+1} - h_i| / |h_i|
  angle_deg          mean angle between h_i and h_{i+1}, in degrees
  update_cosine_next mean cosine between updates (h_{i+1} - h_i) and (h_{i+2} - h_{i+1});
                     None for the last layer (no next update)
  logit_lens_loss    next-token cross-entropy (nats) of the final norm + head applied to h_{i+1}
Quantities undefined at a token (a zero vector) are averaged over the tokens where they are
defined; a layer with none gives None. The regimes these distinguish are in docs/report.md.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

from vld.errors import fail

METRICS = ("update_norm", "relative_update", "angle_deg", "update_cosine_next", "logit_lens_loss")


class _Mean:
    """Running mean in float64 over a stream of per-token values (NaN = undefined, skipped)."""

    def __init__(self):
        self.total = 0.0
        self.count = 0

    def add(self, values) -> None:
        import torch

        values = values.reshape(-1).double()
        defined = ~torch.isnan(values)
        self.total += float(values[defined].sum())
        self.count += int(defined.sum())

    def value(self) -> float | None:
        return self.total / self.count if self.count else None


def _cosine(a, b):
    """Per-token cosine of the last dimension; NaN where either vector is zero."""
    import torch

    dot = (a * b).sum(-1)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(norms > 0, dot / norms.clamp_min(1e-300), torch.full_like(dot, math.nan))


class _LayerStats:
    def __init__(self, depth: int):
        self.means = [{name: _Mean() for name in METRICS} for _ in range(depth)]

    def add(self, hidden: Sequence, readout: Callable | None, targets) -> None:
        import torch
        import torch.nn.functional as F

        depth = len(hidden) - 1
        states = [h.double() for h in hidden]
        updates = [states[i + 1] - states[i] for i in range(depth)]
        for i in range(depth):
            m = self.means[i]
            update_norm = updates[i].norm(dim=-1)
            state_norm = states[i].norm(dim=-1)
            m["update_norm"].add(update_norm)
            m["relative_update"].add(torch.where(
                state_norm > 0, update_norm / state_norm.clamp_min(1e-300),
                torch.full_like(update_norm, math.nan)))
            cos = _cosine(states[i], states[i + 1]).clamp(-1.0, 1.0)
            m["angle_deg"].add(torch.rad2deg(torch.arccos(cos)))
            if i + 1 < depth:
                m["update_cosine_next"].add(_cosine(updates[i], updates[i + 1]))
            if readout is not None and targets is not None:
                logits = readout(hidden[i + 1]).float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                       reduction="none")
                m["logit_lens_loss"].add(loss)


def _records(stats: _LayerStats, schedule: Sequence[int]) -> list[dict]:
    visits: dict[int, int] = {}
    out = []
    for i, base in enumerate(schedule):
        visit = visits.get(base, 0)
        visits[base] = visit + 1
        record = {"virtual_layer": i, "base_layer": int(base), "visit": visit}
        record.update({name: stats.means[i][name].value() for name in METRICS})
        out.append(record)
    return out


def hidden_state_usage(
    hidden: Sequence,
    schedule: Sequence[int] | None = None,
    readout: Callable | None = None,
    targets=None,
) -> list[dict]:
    """Per-virtual-layer measurements from one list of residual states h_0..h_D ([..., d]).

    `schedule[i]` is the base layer at virtual layer i (default: identity). With `readout`
    (hidden -> logits) and `targets` (token ids shaped like hidden[..., 0]) the logit-lens loss
    is measured, else it is None. Each record also gives `visit`: how many times that base
    layer ran before (0 = first visit).
    """
    depth = len(hidden) - 1
    schedule = list(range(depth)) if schedule is None else list(schedule)
    if len(schedule) != depth:
        raise ValueError(f"schedule has {len(schedule)} layers for {depth + 1} hidden states")
    stats = _LayerStats(depth)
    stats.add(hidden, readout, targets)
    return _records(stats, schedule)


def model_readout(model) -> Callable:
    """hidden -> logits: the model's own readout, its final norm and output head (the logit lens)."""
    return model.readout


def layer_usage(model, tokens, batch_size: int = 8) -> list[dict]:
    """Per-virtual-layer measurements of `model` over probe windows (module docstring).

    `model`: a model with the step interface of vld.model.step (VLDTransformer, RetrofitLlama).
    `tokens`: int tensor or nested list [N, T+1]; each row is a window, the model reads
    tokens[:, :-1] and the logit lens is scored against tokens[:, 1:]. Runs in batches of
    `batch_size` windows, in inference mode.
    """
    import torch

    from vld.model import eval_mode
    from vld.model.step import run_visits

    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() != 2 or tokens.shape[1] < 2 or tokens.shape[0] < 1:
        fail("depth.tokens", f"need a [windows, seq_len+1] array, got shape {tuple(tokens.shape)}")
    if batch_size < 1:
        fail("depth.batch_size", f"must be >= 1, got {batch_size}")
    # Windows go to the model's device one batch at a time (a GPU model needs no host copy).
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    schedule = list(model.schedule)
    readout = model_readout(model)
    stats = _LayerStats(len(schedule))
    with eval_mode(model), torch.inference_mode():
        for start in range(0, tokens.shape[0], batch_size):
            window = tokens[start:start + batch_size].to(device)
            inputs = model.prepare(window[:, :-1])
            hidden = [inputs.embedding]
            run_visits(model, inputs, inputs.embedding, range(len(schedule)), hidden)
            stats.add(hidden, readout, window[:, 1:])
    return _records(stats, schedule)


def probe_windows(token_dir: str | Path, seq_len: int, n_windows: int):
    """`n_windows` windows of seq_len+1 tokens, evenly spaced over a token set (deterministic).

    Windows are shortened to the whole set when it holds fewer than seq_len+1 tokens; evenly
    spaced starts that coincide give fewer, distinct windows."""
    import numpy as np

    from vld.data.tokens import TokenSet

    if n_windows < 1:
        fail("depth.windows", f"must be >= 1, got {n_windows}")
    token_set = TokenSet.open(token_dir)
    n_tokens = len(token_set.tokens)
    if n_tokens < 2:
        fail(str(token_dir), f"holds {n_tokens} tokens, too few for a probe window")
    # A small set (e.g. a few test problems) gets shorter windows rather than none.
    seq_len = min(seq_len, n_tokens - 1)
    last = n_tokens - (seq_len + 1)
    starts = np.unique(np.linspace(0, last, n_windows).round().astype(np.int64))
    return np.stack([np.asarray(token_set.tokens[s:s + seq_len + 1], dtype=np.int64)
                     for s in starts])
