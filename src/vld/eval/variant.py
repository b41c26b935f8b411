"""One JSON result per variant: everything the report needs about one trained model.

`evaluate_variant(model, kind, data, settings, meta)` runs the evaluations that fit the
variant's kind and returns one dict with the schema below (also in docs/report.md).

Result schema "vld.variant/1" (every key always present; None or empty when not measured):
  schema            "vld.variant/1"
  variant           name of the variant (meta["variant"], required)
  kind              "reasoning" | "knowledge" | "retrofit"
  pattern, k        reuse pattern name and extra copies (VLD xk); from meta, else "base"/0 for
                    an identity schedule and "custom"/None otherwise
  layers            the reused layer range ("a..b", 0-based) of a layer-subset variant, else None
  seed              training seed (meta) or None
  n_layer, d_model, n_head, block, vocab_size   model config
  effective_depth, vld, schedule, native_depth  depth (native_depth: no layer reused, identity
                    schedule: an ordinary model of that depth)
  params, params_no_embed, seq_len, flops_per_token, flops_per_token_train  (compute_profile)
  train_tokens_per_s  measured training throughput (meta) or None
  igsm              {test name: evaluate_igsm result}   (reasoning, retrofit)
  knowledge         flat dict of vld.eval.knowledge.all_knowledge_measures  (knowledge)
  depth             list of per-virtual-layer dicts of vld.eval.depth.layer_usage
  scores            {benchmark: percent} given by the caller (retrofit; Table 2 analogue)
Any other meta key is copied to the top level; meta may not override a measured key.
"""

from __future__ import annotations

from pathlib import Path

from vld.errors import fail

SCHEMA = "vld.variant/1"
KINDS = ("reasoning", "knowledge", "retrofit")
DATA_KEYS = ("igsm_test", "igsm_train", "knowledge", "depth")
SETTING_KEYS = ("seq_len", "max_new_tokens", "batch_size", "limit", "depth_windows",
                "depth_batch_size", "knowledge", "progress")
# Keys meta may set (they describe the variant, they are not measured).
META_KEYS = ("variant", "pattern", "k", "layers", "seed", "train_tokens_per_s", "scores")
MEASURED_KEYS = ("schema", "kind", "n_layer", "d_model", "n_head", "block", "vocab_size",
                 "effective_depth", "vld", "schedule", "native_depth", "params",
                 "params_no_embed", "seq_len", "flops_per_token", "flops_per_token_train",
                 "igsm", "knowledge", "depth")
REQUIRED_RESULT_KEYS = ("variant", "kind", "pattern", "k", "n_layer", "effective_depth",
                        "native_depth", "params")


def _check_inputs(kind, data, settings, meta) -> None:
    if kind not in KINDS:
        fail("kind", f"unknown variant kind {kind!r} (known: {', '.join(KINDS)})")
    for name, mapping in (("data", data), ("settings", settings), ("meta", meta)):
        if not isinstance(mapping, dict):
            fail(name, f"must be a mapping, got {type(mapping).__name__}")
    for key in data:
        if key not in DATA_KEYS:
            fail(f"data.{key}", f"unknown key (known: {', '.join(DATA_KEYS)})")
    for key in settings:
        if key not in SETTING_KEYS:
            fail(f"settings.{key}", f"unknown key (known: {', '.join(SETTING_KEYS)})")
    for key in meta:
        if key in MEASURED_KEYS:
            fail(f"meta.{key}", "is measured by evaluate_variant and cannot be set")
    if not meta.get("variant"):
        fail("meta.variant", "every result needs a variant name")
    tests = data.get("igsm_test", {})
    if not isinstance(tests, dict):
        fail("data.igsm_test", "must map test names to test-set directories")
    if kind == "reasoning" and not tests:
        fail("data.igsm_test", "a reasoning variant needs at least one iGSM test set")
    if kind == "knowledge" and not data.get("knowledge"):
        fail("data.knowledge", "a knowledge variant needs its dataset directory")
    paths = {f"data.igsm_test.{n}": p for n, p in tests.items()}
    paths.update({f"data.{k}": data[k] for k in ("igsm_train", "knowledge", "depth") if data.get(k)})
    for where, path in paths.items():
        if not Path(path).is_dir():
            fail(where, f"{path} is not a directory")
    for key in ("seq_len", "max_new_tokens", "batch_size", "limit", "depth_batch_size"):
        value = settings.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            fail(f"settings.{key}", f"must be a positive integer, got {value!r}")
    windows = settings.get("depth_windows", 8)
    if not isinstance(windows, int) or isinstance(windows, bool) or windows < 0:
        fail("settings.depth_windows", f"must be an integer >= 0, got {windows!r}")
    scores = meta.get("scores")
    if scores is not None and (not isinstance(scores, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values())):
        fail("meta.scores", "must map benchmark names to numbers (percent)")


def evaluate_variant(model, kind: str, data: dict, settings: dict | None = None,
                     meta: dict | None = None) -> dict:
    """Evaluate one trained variant; returns one result with the module's schema.

    data:     igsm_test {name: dir} (reasoning: required; retrofit: optional),
              igsm_train dir (most-common-answer baseline from the train set),
              knowledge dir (knowledge: required), depth dir (token set for the depth probe;
              default: the first iGSM test set, else the knowledge set).
    settings: seq_len (default model max_seq_len), max_new_tokens, batch_size, limit (iGSM),
              depth_windows (default 8; 0 = no depth probe), depth_batch_size (default 8),
              knowledge (dict of keyword arguments for all_knowledge_measures), progress.
    meta:     variant (required), pattern, k, layers, seed, train_tokens_per_s, scores, and
              any other descriptive key (copied to the top level).
    Inputs are checked (one-line UserError naming the key) before any compute.
    """
    settings = dict(settings or {})
    meta = dict(meta or {})
    data = dict(data or {})
    _check_inputs(kind, data, settings, meta)

    from vld.eval.compute import compute_profile
    from vld.eval.depth import layer_usage, probe_windows
    from vld.eval.igsm import evaluate_igsm

    config = model.config
    seq_len = settings.get("seq_len") or int(config.max_seq_len)
    schedule = [int(i) for i in model.schedule]
    native = schedule == list(range(int(config.n_layer)))
    result: dict = {
        "schema": SCHEMA,
        "variant": str(meta.pop("variant")),
        "kind": kind,
        "pattern": meta.pop("pattern", "base" if native else "custom"),
        "k": meta.pop("k", 0 if native else None),
        "layers": meta.pop("layers", None),
        "seed": meta.pop("seed", None),
        "n_layer": int(config.n_layer),
        "d_model": int(config.d_model),
        "n_head": int(config.n_head),
        "block": str(config.block),
        "vocab_size": int(config.vocab_size),
        "native_depth": native,
        "train_tokens_per_s": meta.pop("train_tokens_per_s", None),
        "scores": meta.pop("scores", None) or {},
    }
    profile = compute_profile(model, seq_len)
    result.update({key: profile[key] for key in (
        "effective_depth", "vld", "schedule", "params", "params_no_embed", "seq_len",
        "flops_per_token", "flops_per_token_train")})

    tests = data.get("igsm_test") or {}
    result["igsm"] = {
        name: evaluate_igsm(model, tests[name], max_new_tokens=settings.get("max_new_tokens"),
                            batch_size=settings.get("batch_size") or 32,
                            limit=settings.get("limit"), train_dir=data.get("igsm_train"),
                            progress=settings.get("progress"))
        for name in sorted(tests)
    }
    result["knowledge"] = {}
    if data.get("knowledge") and kind == "knowledge":
        from vld.eval.knowledge import all_knowledge_measures

        result["knowledge"] = dict(all_knowledge_measures(
            model, data["knowledge"], seq_len, **(settings.get("knowledge") or {})))

    result["depth"] = []
    windows = settings.get("depth_windows", 8)
    probe_dir = data.get("depth") or (tests[sorted(tests)[0]] if tests else data.get("knowledge"))
    if windows and probe_dir:
        tokens = probe_windows(probe_dir, seq_len, windows)
        result["depth"] = layer_usage(model, tokens, batch_size=settings.get("depth_batch_size") or 8)
    result.update(meta)
    return result


def check_result(result, where: str) -> dict:
    """Check a loaded result has the schema's required keys; one-line UserError otherwise."""
    if not isinstance(result, dict):
        fail(where, f"a variant result must be a JSON object, got {type(result).__name__}")
    if result.get("schema") != SCHEMA:
        fail(f"{where}.schema", f"expected {SCHEMA!r}, got {result.get('schema')!r}")
    for key in REQUIRED_RESULT_KEYS:
        if key not in result:
            fail(f"{where}.{key}", "missing from the variant result")
    if result["kind"] not in KINDS:
        fail(f"{where}.kind", f"unknown kind {result['kind']!r}")
    return result
