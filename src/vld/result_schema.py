"""The schemas of what evaluation writes and the report reads: the variant result
(`VariantResult`, written by vld.eval.variant, checked on load by `check_result`) and the
name of the depth-use record it holds (written by vld.eval.depth_use). Here, apart from
both, so neither package imports the other."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vld.errors import fail

SCHEMA = "vld.variant/2"
DEPTH_USE_SCHEMA = "vld.depth_use/1"


@dataclass
class VariantResult:
    """The result schema. Every field is always present (None or empty when not measured)."""

    variant: str  # name of the variant
    family: str  # reasoning | knowledge | retrofit | khop | khop_retrofit (the pipeline's family)
    task: str  # what was measured: igsm | knowledge | khop
    pattern: str  # reuse pattern ("base" for an identity schedule, "custom" if unnamed)
    k: int | None  # extra copies (VLD xk)
    layers: str | None  # the reused range ("a..b", 0-based) of a layer-subset variant
    seed: int | None
    n_layer: int
    d_model: int
    n_head: int
    block: str
    vocab_size: int
    effective_depth: int
    vld: int  # effective_depth - n_layer
    schedule: list[int]
    native_depth: bool  # identity schedule: an ordinary model of that depth
    params: int  # tied weights once
    params_no_embed: int
    seq_len: int
    flops_per_token: int
    flops_per_token_train: int
    train_tokens_per_s: float | None  # measured by the training stage
    train_steps: int | None
    train_tokens: int | None  # tokens (positions) seen in training
    igsm: dict = field(default_factory=dict)  # {test name: vld.eval.igsm.evaluate_igsm result}
    knowledge: dict = field(default_factory=dict)  # vld.eval.knowledge.all_knowledge_measures
    khop: dict = field(default_factory=dict)  # vld.eval.khop.evaluate_khop result
    depth: list = field(default_factory=list)  # per virtual layer: vld.eval.depth.layer_usage
    depth_use: dict = field(default_factory=dict)  # ablations and early exit (vld.eval.depth_use)
    test_time_depth: dict = field(default_factory=dict)  # the core run other counts (vld.eval.test_time_depth)
    eval_wall_s: float | None = None  # this evaluation's wall time (ablations included)
    # vld.host_speed's reference GEMM, GFLOP/s at training's start and end: the host's speed
    # beside train_tokens_per_s (None: trained off the CPU or by an older vld)
    train_host_gflops: list | None = None
    scores: dict = field(default_factory=dict)  # {benchmark: percent} given by the caller
    schema: str = SCHEMA

    @classmethod
    def required(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


FIELDS = tuple(f.name for f in dataclasses.fields(VariantResult))
# Keys meta may set (they describe the variant, they are not measured).
DESCRIPTIVE_KEYS = ("variant", "pattern", "k", "layers", "seed", "train_tokens_per_s", "train_host_gflops",
                    "train_steps", "train_tokens", "scores")
MEASURED_KEYS = tuple(key for key in FIELDS if key not in DESCRIPTIVE_KEYS)


def check_result(result, where: str) -> dict:
    """Check a loaded result has the schema's required keys; one-line UserError otherwise."""
    if not isinstance(result, dict):
        fail(where, f"a variant result must be a JSON object, got {type(result).__name__}")
    if result.get("schema") != SCHEMA:
        fail(f"{where}.schema", f"expected {SCHEMA!r}, got {result.get('schema')!r}"
             " (results of an older vld: re-run the evaluation stages, dvc repro)")
    for key in VariantResult.required():
        if key not in result:
            fail(f"{where}.{key}", "missing from the variant result")
    return result
