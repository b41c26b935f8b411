"""One JSON result per variant: everything the report needs about one trained model.

`evaluate_variant(model, family, data, settings, meta)` measures what the data it is given
asks for (its task: iGSM test sets, a knowledge set, k-hop test sets) and returns one dict
with the fields of `VariantResult` (schema "vld.variant/2"; docs/report.md). `family` is a
label (the pipeline's family name: reasoning, knowledge, retrofit, khop, ...).

This module imports no torch at load time: the validator calls `check_settings`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from vld.declared import check_keys
from vld.errors import fail
from vld.result_schema import DESCRIPTIVE_KEYS, MEASURED_KEYS, VariantResult

# Each task: the data key it needs, the other data keys it reads, and its settings.
TASKS = {
    "igsm": {"needs": "igsm_test", "reads": ("igsm_train", "depth"),
             "settings": ("seq_len", "max_new_tokens", "batch_size", "limit", "depth_windows",
                          "depth_batch_size", "progress", "objective")},
    "knowledge": {"needs": "knowledge", "reads": ("depth",),
                  "settings": ("seq_len", "depth_windows", "depth_batch_size", "knowledge", "ablations",
                               "ablation_sequences", "progress")},
    "khop": {"needs": "khop_test", "reads": (),
             "settings": ("batch_size", "bootstrap", "depth_windows", "depth_batch_size", "ablations",
                          "ablation_sequences", "progress", "test_time_depth")},
}
ABLATION_SEQUENCES = 256  # test sequences (windows) the depth-use ablations run on by default
_POSITIVE = ("seq_len", "max_new_tokens", "batch_size", "limit", "depth_batch_size", "bootstrap",
             "ablation_sequences")


def task_of(data: dict) -> str:
    """The task a data mapping asks for: the one whose required key it holds."""
    found = [name for name, task in TASKS.items() if data.get(task["needs"])]
    if len(found) != 1:
        needs = " or ".join(task["needs"] for task in TASKS.values())
        fail("data", f"needs exactly one of {needs}, got {', '.join(sorted(data)) or 'none'}")
    return found[0]


def check_settings(task: str, settings: dict, where: str = "settings") -> dict:
    """A task's evaluation settings (a family's eval block): one line naming the bad key."""
    if task not in TASKS:
        fail("task", f"unknown task {task!r} (known: {', '.join(TASKS)})")
    if not isinstance(settings, dict):
        fail(where, f"must be a mapping, got {type(settings).__name__}")
    allowed = TASKS[task]["settings"]
    check_keys(settings, allowed, where)
    for key, value in settings.items():
        if key in _POSITIVE and value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1):
            fail(f"{where}.{key}", f"must be a positive integer, got {value!r}")
    windows = settings.get("depth_windows", 8)
    if not isinstance(windows, int) or isinstance(windows, bool) or windows < 0:
        fail(f"{where}.depth_windows", f"must be an integer >= 0, got {windows!r}")
    for key in ("ablations", "progress", "test_time_depth"):
        if settings.get(key) is not None and not isinstance(settings[key], bool):
            fail(f"{where}.{key}", f"must be true or false, got {settings[key]!r}")
    if settings.get("objective") is not None:
        from vld.data.igsm.objectives import check_objective

        check_objective(settings["objective"], f"{where}.objective")
    if settings.get("knowledge") is not None and not isinstance(settings["knowledge"], dict):
        fail(f"{where}.knowledge", "must be a mapping of keyword arguments of all_knowledge_measures")
    return dict(settings)


def _check_inputs(family, data, settings, meta) -> str:
    if not isinstance(family, str) or not family:
        fail("family", f"must be a family name, got {family!r}")
    for name, mapping in (("data", data), ("settings", settings), ("meta", meta)):
        if not isinstance(mapping, dict):
            fail(name, f"must be a mapping, got {type(mapping).__name__}")
    known = sorted({key for task in TASKS.values() for key in (task["needs"], *task["reads"])})
    check_keys(data, known, "data")
    task = task_of(data)
    check_settings(task, settings)
    for key in meta:
        if key in MEASURED_KEYS:
            fail(f"meta.{key}", "is measured by evaluate_variant and cannot be set")
    if not meta.get("variant"):
        fail("meta.variant", "every result needs a variant name")
    tests = data.get("igsm_test", {})
    if not isinstance(tests, dict):
        fail("data.igsm_test", "must map test names to test-set directories")
    paths = {f"data.igsm_test.{n}": p for n, p in tests.items()}
    paths.update({f"data.{k}": data[k] for k in ("igsm_train", "knowledge", "khop_test", "depth") if data.get(k)})
    for where, path in paths.items():
        if not Path(path).is_dir():
            fail(where, f"{path} is not a directory")
    scores = meta.get("scores")
    if scores is not None and (not isinstance(scores, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values())):
        fail("meta.scores", "must map benchmark names to numbers (percent)")
    return task


def evaluate_variant(model, family: str, data: dict, settings: dict | None = None,
                     meta: dict | None = None, test_time: tuple[int, dict[int, list[int]]] | None = None) -> dict:
    """Evaluate one trained variant; returns a dict with the fields of VariantResult.

    data:     one task's inputs: igsm_test {name: dir} (+ igsm_train dir for the
              most-common-answer baseline), or knowledge dir, or khop_test dir; depth dir
              (token set for the depth probe; default: the first iGSM test set, else the
              knowledge set; k-hop has no token-set probe: its depth use is the ablations).
    settings: the task's keys (TASKS), e.g. seq_len, max_new_tokens, batch_size, limit,
              depth_windows (default 8; 0 = no depth probe), bootstrap (k-hop resamples).
    meta:     variant (required) and DESCRIPTIVE_KEYS; any other key is copied to the result.
    test_time: (trained count, {count: schedule}) of a looped model: with the k-hop setting
              test_time_depth on, the test sets are also run at each count (vld.eval.test_time_depth).
    Inputs are checked (one-line UserError naming the key) before any compute.
    """
    settings = dict(settings or {})
    meta = dict(meta or {})
    data = dict(data or {})
    task = _check_inputs(family, data, settings, meta)
    start = time.perf_counter()

    from vld.eval.compute import compute_profile

    config = model.config
    seq_len = settings.get("seq_len") or int(config.max_seq_len)
    schedule = [int(i) for i in model.schedule]
    native = schedule == list(range(int(config.n_layer)))
    profile = compute_profile(model, seq_len)
    result = VariantResult(
        variant=str(meta.pop("variant")), family=family, task=task,
        pattern=meta.pop("pattern", "base" if native else "custom"),
        k=meta.pop("k", 0 if native else None), layers=meta.pop("layers", None), seed=meta.pop("seed", None),
        n_layer=int(config.n_layer), d_model=int(config.d_model), n_head=int(config.n_head),
        block=str(config.block), vocab_size=int(config.vocab_size), native_depth=native,
        train_tokens_per_s=meta.pop("train_tokens_per_s", None), train_host_gflops=meta.pop("train_host_gflops", None),
        train_steps=meta.pop("train_steps", None),
        train_tokens=meta.pop("train_tokens", None), scores=meta.pop("scores", None) or {},
        **{key: profile[key] for key in ("effective_depth", "vld", "schedule", "params", "params_no_embed",
                                         "seq_len", "flops_per_token", "flops_per_token_train")})
    windows = settings.get("depth_windows", 8)
    probe = MEASURES[task](model, data, settings, seq_len, result)
    if windows and probe:
        from vld.eval.depth import layer_usage, probe_windows

        tokens = probe_windows(probe, seq_len, windows)
        result.depth = layer_usage(model, tokens, batch_size=settings.get("depth_batch_size") or 8)
    if settings.get("ablations", True) and task in DEPTH_USE_INPUTS:
        result.depth_use = _depth_use(model, task, data, settings, seq_len)
    if settings.get("test_time_depth") and test_time and task == "khop":
        from vld.eval.test_time_depth import test_time_depth

        began = time.perf_counter()
        result.test_time_depth = test_time_depth(model, data["khop_test"], test_time[1], test_time[0],
                                                 batch_size=settings.get("batch_size") or 256)
        result.test_time_depth["wall_s"] = time.perf_counter() - began
    result.eval_wall_s = time.perf_counter() - start
    out = dataclasses.asdict(result)
    out.update(meta)
    return out


def _measure_igsm(model, data, settings, seq_len, result) -> str:
    """Fills result.igsm; returns the default depth-probe token set."""
    from vld.eval.igsm import evaluate_igsm

    tests = data["igsm_test"]
    result.igsm = {name: evaluate_igsm(model, tests[name], max_new_tokens=settings.get("max_new_tokens"),
                                       batch_size=settings.get("batch_size") or 32, limit=settings.get("limit"),
                                       train_dir=data.get("igsm_train"), progress=settings.get("progress"),
                                       objective=settings.get("objective") or "solution")
                   for name in sorted(tests)}
    return data.get("depth") or tests[sorted(tests)[0]]


def _measure_knowledge(model, data, settings, seq_len, result) -> str:
    from vld.eval.knowledge import all_knowledge_measures

    result.knowledge = dict(all_knowledge_measures(model, data["knowledge"], seq_len, **(settings.get("knowledge") or {})))
    return data.get("depth") or data["knowledge"]


def _measure_khop(model, data, settings, seq_len, result) -> None:
    from vld.eval.khop import bootstrap_resamples, evaluate_khop

    result.khop = evaluate_khop(model, data["khop_test"], batch_size=settings.get("batch_size") or 256,
                                bootstrap=bootstrap_resamples(settings))
    return None  # no token set to probe: k-hop's depth use is its ablations


MEASURES = {"igsm": _measure_igsm, "knowledge": _measure_knowledge, "khop": _measure_khop}


def _knowledge_depth_use_inputs(data, seq_len, wanted):
    from vld.eval.knowledge import depth_use_inputs

    return depth_use_inputs(data["knowledge"], seq_len, wanted)


def _khop_depth_use_inputs(data, seq_len, wanted):
    from vld.eval.khop import depth_use_inputs

    return depth_use_inputs(data["khop_test"], wanted)


# The tasks whose depth use is measured by ablation: (data, seq_len, sequences wanted) ->
# vld.eval.depth_use's inputs (batches, score, chance, sequences).
DEPTH_USE_INPUTS = {"knowledge": _knowledge_depth_use_inputs, "khop": _khop_depth_use_inputs}


def _khop_metrics(khop: dict) -> dict:
    return {f"k{k}": {m: v[m] for m in ("error", "exact_match")} for k, v in khop["hops"].items()}


# Each task's measures as MLflow logs them (nested; the stage flattens them, keys joined with dots).
TASK_METRICS = {"igsm": dict, "knowledge": dict, "khop": _khop_metrics}
# The model's size and cost, and what its training measured, logged for every task.
COMMON_METRICS = ("params", "params_no_embed", "effective_depth", "flops_per_token", "flops_per_token_train",
                  "train_tokens_per_s")


def result_metrics(result: dict) -> dict:
    """What of one result its evaluation logs to MLflow: COMMON_METRICS and its task's measures
    ({task: ...}), nested as in the result."""
    out = {key: result.get(key) for key in COMMON_METRICS}
    measured = result.get(result["task"])
    if measured:
        out[result["task"]] = TASK_METRICS[result["task"]](measured)
    looped = result.get("test_time_depth") or {}
    if looped.get("repeats"):
        out["test_time_depth"] = {f"r{r}": {f"k{h}": cell["error"] for h, cell in found["hops"].items()}
                                  for r, found in looped["repeats"].items()}
        if looped.get("delta") is not None:
            out["test_time_depth"]["delta"] = looped["delta"]
    return out


def _depth_use(model, task: str, data: dict, settings: dict, seq_len: int) -> dict:
    """Causal ablations and early exit (vld.eval.depth_use) on a share of the task's test data:
    `ablation_sequences` sequences (default ABLATION_SEQUENCES). Its wall time is recorded."""
    from vld.eval.depth_use import depth_use

    wanted = settings.get("ablation_sequences") or ABLATION_SEQUENCES
    batches, score, chance, n = DEPTH_USE_INPUTS[task](data, seq_len, wanted)
    began = time.perf_counter()
    use = depth_use(model, batches, score, max_sequences=n, seed=0, chance=chance)
    use["cost"]["wall_s"] = time.perf_counter() - began
    return use
