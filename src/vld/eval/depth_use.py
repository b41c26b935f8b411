"""Does a (revisited) virtual layer do new work? Causal ablations, early exit, regime rule.

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
The rules (`regime`) are in docs/depth_use.md.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Mapping

import numpy as np

from vld.errors import fail

SCHEMA = "vld.depth_use/1"
ABLATION_KINDS = ("skip", "swap", "revisit", "revisit_all")
RESAMPLES = 1000  # bootstrap resamples per interval
LEVEL = 0.95

# Regime rule (docs/depth_use.md). Costs are ablated - intact metric, in units of the gain
# over chance (chance - intact).
COMPOSITIONAL_SKIP_SHARE = 0.25  # some single skip costs more than this share (interval low)
ENSEMBLE_SKIP_SHARE = 0.25       # ... no single skip may cost this much (interval high)
ENSEMBLE_EVEN_SHARE = 0.10       # max - min of the skip costs, at most this share
COMPOSITIONAL = "compositional"
ENSEMBLE = "ensemble"
NOT_SHOWN = "not shown"
VERDICTS = (COMPOSITIONAL, ENSEMBLE, NOT_SHOWN)


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


# ---------------------------------------------------------------- statistics

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


class _Bootstrap:
    """Paired percentile bootstrap over sequences; one index matrix per sample size, drawn
    from `seed`, so an interval does not depend on which ablations ran before it."""

    def __init__(self, seed: int, resamples: int = RESAMPLES):
        self.seed = seed
        self.resamples = resamples
        self._indices: dict[int, np.ndarray] = {}

    def indices(self, n: int) -> np.ndarray:
        if n not in self._indices:
            rng = np.random.default_rng([self.seed, n])
            self._indices[n] = rng.integers(0, n, size=(self.resamples, n))
        return self._indices[n]

    def summary(self, values: np.ndarray) -> dict:
        values = values[~np.isnan(values)]
        n = int(values.size)
        if n == 0:
            return {"mean": None, "low": None, "high": None, "n": 0}
        mean = float(values.mean())
        if n == 1:
            return {"mean": mean, "low": None, "high": None, "n": 1}
        means = values[self.indices(n)].mean(axis=1)
        tail = 100 * (1 - LEVEL) / 2
        low, high = np.percentile(means, [tail, 100 - tail])
        return {"mean": mean, "low": float(low), "high": float(high), "n": n}


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
    import torch

    from vld.model.step import run_visits

    if max_sequences is not None and (not isinstance(max_sequences, int)
                                      or isinstance(max_sequences, bool) or max_sequences < 1):
        fail("depth_use.max_sequences", f"must be an integer >= 1 or None, got {max_sequences!r}")
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - set(ABLATION_KINDS))
    if unknown:
        fail("depth_use.kinds", f"unknown ablation {unknown[0]!r} (known: {', '.join(ABLATION_KINDS)})")
    schedule = [int(b) for b in (getattr(model, "schedule", None) or range(model.config.n_layer))]
    depth = len(schedule)
    plan = [a for a in ablations(schedule) if a["kind"] in kinds]
    intact_values: dict[str, list] = {}
    ablated_values = [dict() for _ in plan]
    exit_values = [dict() for _ in range(depth + 1)]
    seconds = {"intact": 0.0, "ablations": 0.0, "early_exit": 0.0}
    runs = {"intact": 0, "ablations": 0, "early_exit_readouts": 0}
    seen = 0

    device = next(model.parameters()).device

    def clock() -> float:
        # Queued GPU work belongs to the phase that queued it.
        if measure_time and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def collect(store: dict, values) -> None:
        for name, array in _as_metrics(values).items():
            store.setdefault(name, []).append(array)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                if max_sequences is not None and seen >= max_sequences:
                    break
                _tokens_of(batch)  # a malformed batch is a user error before any compute
                if max_sequences is not None:
                    batch = _take(batch, max_sequences - seen)
                batch = _to_device(batch, device)
                tokens = _tokens_of(batch)
                mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
                seen += int(tokens.shape[0])

                started = clock()
                # The model's forward, its parts kept: the ablations re-run its step from these.
                inputs = model.prepare(tokens, attention_mask=mask)
                hidden = [inputs.embedding]
                logits = model.readout(run_visits(model, inputs, inputs.embedding, range(depth), hidden))
                collect(intact_values, score_fn(logits, batch))
                seconds["intact"] += clock() - started
                runs["intact"] += depth

                started = clock()
                for index, ablation in enumerate(plan):
                    state, cost = ablated_final(model, ablation, hidden, inputs)
                    collect(ablated_values[index], score_fn(model.readout(state), batch))
                    runs["ablations"] += cost
                seconds["ablations"] += clock() - started

                if early_exit:
                    started = clock()
                    for j in range(depth):
                        collect(exit_values[j], score_fn(model.readout(hidden[j]), batch))
                    seconds["early_exit"] += clock() - started
                    runs["early_exit_readouts"] += depth
    finally:
        model.train(was_training)
    if seen == 0:
        fail("depth_use.batches", "no sequence to evaluate")

    boot = _Bootstrap(seed)
    intact = {name: np.concatenate(parts) for name, parts in intact_values.items()}
    metrics = sorted(intact)
    result = {
        "schema": SCHEMA,
        "schedule": schedule,
        "effective_depth": depth,
        "tied": len(set(schedule)) < depth,
        "sequences": seen,
        "metrics": metrics,
        "interval": {"method": "paired percentile bootstrap over sequences", "level": LEVEL,
                     "resamples": RESAMPLES, "seed": seed},
        "chance": {k: float(v) for k, v in (chance or {}).items()},
        "intact": {name: boot.summary(intact[name]) for name in metrics},
        "ablations": [],
        "early_exit": [],
    }
    for ablation, values in zip(plan, ablated_values):
        record = dict(ablation)
        ablated = {name: np.concatenate(values[name]) for name in metrics}
        record["value"] = {name: _mean(ablated[name]) for name in metrics}
        record["delta"] = {name: boot.summary(_paired(ablated[name], intact[name]))
                           for name in metrics}
        result["ablations"].append(record)
    if early_exit:
        visits: dict[int, int] = {}
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
            record["value"] = {name: boot.summary(values[name]) for name in metrics}
            result["early_exit"].append(record)
    result["regime"] = {name: regime(result, name) for name in metrics}
    cost = {"layer_runs_intact": runs["intact"], "layer_runs_ablations": runs["ablations"],
            "ablation_to_intact": (runs["ablations"] / runs["intact"]) if runs["intact"] else None}
    if measure_time:
        cost["seconds"] = {k: round(v, 6) for k, v in seconds.items()}
    result["cost"] = cost
    return result


# ---------------------------------------------------------------- the regime rule

def distinct_ablations(schedule, ablations: list[dict]) -> list[dict]:
    """The skips and swaps of `ablations` that are distinct operations on `schedule`, each once.

    An ablation is the order of base layers it runs: a swap of two visits of one base layer
    runs the intact order (zero by construction) and is left out; skips of neighbouring
    visits of one base layer (schedule 0 0 1 1: skip 0 = skip 1) run the same order and
    count once (the first). Other kinds pass unchanged."""
    schedule = [int(b) for b in schedule]
    seen = {tuple(schedule)}
    out = []
    for a in ablations:
        if a["kind"] not in ("skip", "swap"):
            out.append(a)
            continue
        order = list(schedule)
        v = a["virtual_layers"]
        if a["kind"] == "skip":
            del order[v[0]]
        else:
            order[v[0]], order[v[1]] = order[v[1]], order[v[0]]
        if tuple(order) not in seen:
            seen.add(tuple(order))
            out.append(a)
    return out


def regime(result: Mapping, metric: str = "loss", chance: float | None = None) -> dict:
    """Which regime the ablations of one metric point to (docs/depth_use.md, "Regime rule").

    Uses result["schedule"] and result["ablations"] (skip and swap deltas with intervals,
    each distinct operation once: `distinct_ablations`), result["intact"][metric]
    and the chance value (argument, else result["chance"][metric]). Returns {"verdict", "why",
    "gain", "skip_max_share", "skip_spread_share", "skip_median", "swap_median"}."""
    if chance is None:
        chance = (result.get("chance") or {}).get(metric)
    intact = (result.get("intact") or {}).get(metric) or {}
    out = {"verdict": NOT_SHOWN, "why": "", "gain": None, "skip_max_share": None,
           "skip_spread_share": None, "skip_median": None, "swap_median": None}
    distinct = distinct_ablations(result.get("schedule") or [], result.get("ablations", []))
    skips = [a["delta"][metric] for a in distinct
             if a["kind"] == "skip" and a["delta"].get(metric, {}).get("mean") is not None]
    swaps = [a["delta"][metric]["mean"] for a in distinct
             if a["kind"] == "swap" and a["delta"].get(metric, {}).get("mean") is not None]
    if chance is None or intact.get("mean") is None:
        out["why"] = "no chance level or no intact value"
        return out
    gain = float(chance) - float(intact["mean"])
    out["gain"] = gain
    if not skips:
        out["why"] = "no skip ablation"
        return out
    if not gain > 0:
        out["why"] = "the model is no better than chance"
        return out
    means = [s["mean"] for s in skips]
    # Without an interval (one sequence) the mean stands for both ends.
    lows = [s["mean"] if s.get("low") is None else s["low"] for s in skips]
    highs = [s["mean"] if s.get("high") is None else s["high"] for s in skips]
    skip_median = float(np.median(means))
    out.update(skip_max_share=max(means) / gain, skip_spread_share=(max(means) - min(means)) / gain,
               skip_median=skip_median, swap_median=float(np.median(swaps)) if swaps else None)
    big_skip = max(lows) > COMPOSITIONAL_SKIP_SHARE * gain
    if big_skip and swaps and out["swap_median"] > skip_median:
        out.update(verdict=COMPOSITIONAL, why=(
            f"a skip costs > {COMPOSITIONAL_SKIP_SHARE:g} of the gain over chance and the "
            "median swap costs more than the median skip"))
    elif (max(highs) < ENSEMBLE_SKIP_SHARE * gain
          and out["skip_spread_share"] <= ENSEMBLE_EVEN_SHARE):
        out.update(verdict=ENSEMBLE, why=(
            f"every skip costs < {ENSEMBLE_SKIP_SHARE:g} of the gain over chance and skip costs "
            f"differ by <= {ENSEMBLE_EVEN_SHARE:g} of it"))
    else:
        out["why"] = ("a skip is costly but swaps are not costlier" if big_skip and swaps else
                      "a skip is costly but there is no swap" if big_skip else
                      "skip costs neither clearly large nor small and even")
    return out


# ---------------------------------------------------------------- the depth law

A_GRID = np.linspace(0.01, 4.0, 400)  # exponents searched (then refined) by the fit


def _profile_sse(depth: np.ndarray, loss: np.ndarray, a) -> tuple:
    """(c, L0, sse) of the best linear fit loss ~ c * depth^-a + L0, for each exponent in a
    (closed-form simple regression, vectorised over a)."""
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    x = depth[None, :] ** -a[:, None]
    x_mean = x.mean(axis=1, keepdims=True)
    loss_mean = loss.mean()
    dx = x - x_mean
    sxx = (dx * dx).sum(axis=1)
    sxy = (dx * (loss - loss_mean)).sum(axis=1)
    syy = float(((loss - loss_mean) ** 2).sum())
    c = np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1.0), 0.0)
    l0 = loss_mean - c * x_mean[:, 0]
    sse = np.maximum(syy - c * sxy, 0.0)
    return c, l0, sse


def fit_power_law(depth, loss) -> dict | None:
    """Least-squares L = c * depth^-a + L0: for each a, c and L0 are linear; a is found on
    A_GRID, then on four successively finer grids around the best point.
    Returns {"c", "a", "L0", "sse", "n", "a_at_bound"} or None with < 3 distinct depths."""
    depth = np.asarray(depth, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    if depth.size != loss.size or np.unique(depth).size < 3 or np.any(depth <= 0):
        return None
    sse = _profile_sse(depth, loss, A_GRID)[2]
    best = int(np.argmin(sse))
    a, best_sse = float(A_GRID[best]), float(sse[best])
    step = float(A_GRID[1] - A_GRID[0])
    # Refinement: finer grids around the best point (the profile is smooth in a).
    for _ in range(4):
        grid = np.linspace(max(a - step, 1e-6), a + step, 101)
        fine = _profile_sse(depth, loss, grid)[2]
        index = int(np.argmin(fine))
        if fine[index] <= best_sse:
            a, best_sse = float(grid[index]), float(fine[index])
        step = float(grid[1] - grid[0])
    c, l0, _ = (float(v[0]) for v in _profile_sse(depth, loss, a))
    # The closed-form sse can lose digits at an exact fit: recompute from the residuals.
    residual = loss - (c * depth ** -a + l0)
    return {"c": c, "a": float(a), "L0": l0, "sse": float(residual @ residual), "n": int(depth.size),
            "a_at_bound": bool(best in (0, A_GRID.size - 1))}


def _covariance_interval(depth, fit) -> dict | None:
    """95% normal intervals of a and L0 from s^2 (J^T J)^-1 (needs more points than 3)."""
    depth = np.asarray(depth, dtype=np.float64)
    n = depth.size
    if n <= 3:
        return None
    power = depth ** -fit["a"]
    jac = np.stack([power, -fit["c"] * np.log(depth) * power, np.ones_like(depth)], axis=1)
    try:
        cov = np.linalg.inv(jac.T @ jac) * (fit["sse"] / (n - 3))
    except np.linalg.LinAlgError:
        return None
    z = 1.959963984540054
    sd_a, sd_l0 = math.sqrt(max(cov[1, 1], 0.0)), math.sqrt(max(cov[2, 2], 0.0))
    return {"a": [fit["a"] - z * sd_a, fit["a"] + z * sd_a],
            "L0": [fit["L0"] - z * sd_l0, fit["L0"] + z * sd_l0]}


def _seed_bootstrap(points: list[dict], seed: int) -> dict | None:
    seeds = sorted({p["seed"] for p in points}, key=str)
    if len(seeds) < 3:
        return None
    rng = np.random.default_rng(seed)
    by_seed = {s: [p for p in points if p["seed"] == s] for s in seeds}
    a_values, l0_values = [], []
    for _ in range(RESAMPLES):
        chosen = rng.integers(0, len(seeds), size=len(seeds))
        sample = [p for i in chosen for p in by_seed[seeds[i]]]
        fit = fit_power_law([p["depth"] for p in sample], [p["loss"] for p in sample])
        if fit is not None:
            a_values.append(fit["a"])
            l0_values.append(fit["L0"])
    if len(a_values) < RESAMPLES // 2:
        return None
    tail = 100 * (1 - LEVEL) / 2
    return {"a": [float(v) for v in np.percentile(a_values, [tail, 100 - tail])],
            "L0": [float(v) for v in np.percentile(l0_values, [tail, 100 - tail])]}


def fit_with_interval(points: list[dict], seed: int = 0) -> dict | None:
    """fit_power_law over points {"depth", "loss", "seed"} with intervals of a and L0:
    percentile bootstrap over seeds when there are >= 3 seeds, else the fit's covariance
    (normal, 95%) when there are more than 3 points, else none."""
    fit = fit_power_law([p["depth"] for p in points], [p["loss"] for p in points])
    if fit is None:
        return None
    interval = _seed_bootstrap(points, seed)
    method = "seed bootstrap"
    if interval is None:
        interval = _covariance_interval([p["depth"] for p in points], fit)
        method = "fit covariance" if interval is not None else "none"
    fit["interval"] = interval
    fit["interval_method"] = method
    fit["seeds"] = len({p["seed"] for p in points})
    return fit


# Tied-vs-native rule (docs/depth_use.md, "Depth law"): share S = tied gain / native gain.
SHARE_AS_MUCH = 0.8   # S (interval low) at least this: as much as a native layer
SHARE_NOTHING = 0.2   # S (interval high) at most this: nothing
AS_MUCH = "as much as native"
LESS = "less than native"
NOTHING = "nothing"
DEPTH_VERDICTS = (AS_MUCH, LESS, NOTHING, NOT_SHOWN)


def _cell(point) -> tuple:
    """The model a point measures, apart from its seed: (tied, depth, pattern, base depth).
    Tied models of one depth with different patterns (or bases) are different models, not
    seeds of one; a native model is known by its depth."""
    if point["tied"]:
        return True, int(point["depth"]), str(point.get("pattern") or ""), int(point["base_depth"])
    return False, int(point["depth"]), "", 0


def tied_share(points: list[dict], seed: int = 0) -> dict:
    """Share of the native depth gain that tied depth buys, at depths both reach.

    For each tied model (depth d, pattern, base depth b) with a native model of depth d and a
    native base of depth b: tied gain = L(base) - L(tied), native gain = L(base) - L(native, d),
    means over seeds. S = sum of tied gains / sum of native gains over those tied models; its
    95% interval resamples the seeds of every model independently (none with one seed per
    model: different patterns of one depth are not seeds)."""
    cells: dict[tuple, list[float]] = {}
    for p in points:
        cells.setdefault(_cell(p), []).append(float(p["loss"]))
    native = lambda depth: (False, depth, "", 0)
    tied_cells = sorted(c for c in cells if c[0] and native(c[1]) in cells and native(c[3]) in cells)
    out = {"compared_depths": sorted({c[1] for c in tied_cells}), "share": None, "interval": None,
           "verdict": NOT_SHOWN, "why": ""}
    if not tied_cells:
        out["why"] = "no tied depth also reached by a native model with its base"
        return out

    def share(means) -> float | None:
        tied = sum(means[native(c[3])] - means[c] for c in tied_cells)
        gain = sum(means[native(c[3])] - means[native(c[1])] for c in tied_cells)
        return tied / gain if gain > 0 else None

    point = share({k: float(np.mean(v)) for k, v in cells.items()})
    if point is None:
        out["why"] = "native depth does not lower the loss here"
        return out
    out["share"] = point
    low = high = point
    if any(len(v) > 1 for v in cells.values()):
        rng = np.random.default_rng(seed)
        keys = sorted(cells)
        samples = []
        for _ in range(RESAMPLES):
            means = {k: float(np.mean(np.asarray(cells[k])[rng.integers(0, len(cells[k]), len(cells[k]))]))
                     for k in keys}
            value = share(means)
            if value is not None:
                samples.append(value)
        tail = 100 * (1 - LEVEL) / 2
        low, high = (float(v) for v in np.percentile(samples, [tail, 100 - tail]))
        out["interval"] = [low, high]
    if low >= SHARE_AS_MUCH:
        out.update(verdict=AS_MUCH, why=f"share >= {SHARE_AS_MUCH:g}")
    elif high <= SHARE_NOTHING:
        out.update(verdict=NOTHING, why=f"share <= {SHARE_NOTHING:g}")
    elif high < SHARE_AS_MUCH and low > SHARE_NOTHING:
        out.update(verdict=LESS, why=f"{SHARE_NOTHING:g} < share < {SHARE_AS_MUCH:g}")
    else:
        out["why"] = "the share's interval spans a threshold"
    return out


def depth_law(points: list[dict], seed: int = 0) -> dict:
    """The depth law of one metric over a profile's variants.

    points: {"depth" (effective), "loss" (the metric, lower is better), "seed", "tied" (bool:
    a reused layer), "base_depth" (tied points: the base model's depth), optional "pattern"
    (tied points: tells tied models of one depth apart) and "variant"}.
    The native fit uses native points; the tied fit uses tied points and their base models.
    Returns {"native": fit|None, "tied": fit|None, "tied_share": tied_share(...), "points"}."""
    for index, p in enumerate(points):
        for key in ("depth", "loss", "tied"):
            if key not in p:
                fail(f"depth_law.points[{index}]", f"missing key {key!r}")
        if p["tied"] and "base_depth" not in p:
            fail(f"depth_law.points[{index}]", "a tied point needs 'base_depth'")
    points = [dict(p, seed=p.get("seed")) for p in points]
    native = [p for p in points if not p["tied"]]
    bases = {int(p["base_depth"]) for p in points if p["tied"]}
    tied = [p for p in points if p["tied"]] + [p for p in native if int(p["depth"]) in bases]
    return {"native": fit_with_interval(native, seed), "tied": fit_with_interval(tied, seed),
            "tied_share": tied_share(points, seed), "points": points}


def depth_law_points(results: list[dict], value_of: Callable[[dict], float | None]) -> list[dict]:
    """depth_law points from variant results (schema vld.variant/1) of one width and family.

    value_of(result) gives the metric (lower is better) or None to leave a result out; a
    result is tied unless `native_depth`, and a tied one's base depth is its `n_layer`."""
    points = []
    for r in results:
        value = value_of(r)
        if value is None or not math.isfinite(float(value)):
            continue
        tied = not r.get("native_depth")
        point = {"depth": int(r["effective_depth"]), "loss": float(value), "seed": r.get("seed"),
                 "tied": tied, "variant": r.get("variant"), "pattern": r.get("pattern")}
        if tied:
            point["base_depth"] = int(r["n_layer"])
        points.append(point)
    return points
