"""The two rules of docs/depth_use.md, computed by code, never by hand: the regime rule (which
regime the depth-use ablations point to; evaluation stores its verdict) and the depth law (the
power-law fit of a metric against effective depth, and the share of the native depth gain that
tied depth buys; the report fits it over a profile's variants).

Numbers only (numpy, no torch): evaluation and the report both read it.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from vld.errors import fail
from vld.stats import fit_with_interval, percentile_interval

# Regime rule (docs/depth_use.md). Costs are ablated - intact metric, in units of the gain
# over chance (chance - intact).
COMPOSITIONAL_SKIP_SHARE = 0.25  # some single skip costs more than this share (interval low)
ENSEMBLE_SKIP_SHARE = 0.25       # ... no single skip may cost this much (interval high)
ENSEMBLE_EVEN_SHARE = 0.10       # max - min of the skip costs, at most this share
COMPOSITIONAL = "compositional"
ENSEMBLE = "ensemble"
NOT_SHOWN = "not shown"
VERDICTS = (COMPOSITIONAL, ENSEMBLE, NOT_SHOWN)


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


def tied_share(points: list[dict], seed: int = 0, resamples: int = 1000, level: float = 0.95) -> dict:
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
        for _ in range(int(resamples)):
            means = {k: float(np.mean(np.asarray(cells[k])[rng.integers(0, len(cells[k]), len(cells[k]))]))
                     for k in keys}
            value = share(means)
            if value is not None:
                samples.append(value)
        low, high = percentile_interval(samples, level)
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


# Test-time depth (vld.eval.test_time_depth computes it, vld.report.scaling tabulates it)
MARGIN = 0.01  # error points either way that still count as "hold"
SERIAL_HOPS = 2


def serial_error(hops: dict) -> float:
    """Mean error over the hop counts >= SERIAL_HOPS of one count's {hops: {"error": ...}}."""
    serial = [cell["error"] for h, cell in hops.items() if int(h) >= SERIAL_HOPS] or \
        [cell["error"] for cell in hops.values()]
    return float(np.mean(serial))
