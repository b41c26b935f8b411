"""The lm_retrofit family's evaluation settings (its `eval` block): which lm-evaluation-harness
tasks, shots, limits and generation settings. Torch-free: the validator reads them; the
harness itself runs in vld.eval.lm_harness.

    eval:
      tasks: [minerva_math500, gpqa_main_zeroshot, aime24, humaneval, mbpp]   # lm-eval task names
      include_path: null        # a directory of local task YAMLs (tasks beside the built-in ones)
      num_fewshot: null         # null: each task's own default
      limit: null               # items per task (null: all)
      batch_size: 8
      apply_chat_template: true # prompts through the checkpoint's chat template
      gen_kwargs: {max_gen_toks: 1024}   # overrides every generation task's settings (greedy only)
      confirm_run_unsafe_code: false     # code tasks (humaneval, mbpp) run the model's code: say true
      seed: 0                   # lm-eval's few-shot sampling and its other seeds
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from vld.declared import check_keys
from vld.errors import fail


@dataclass(frozen=True)
class LmEvalSettings:
    tasks: tuple[str, ...]
    include_path: str | None = None
    num_fewshot: int | None = None
    limit: int | None = None
    batch_size: int = 8
    apply_chat_template: bool = False
    gen_kwargs: dict = field(default_factory=dict)
    confirm_run_unsafe_code: bool = False
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str) -> "LmEvalSettings":
        check_keys(raw, cls, where)
        tasks = raw.get("tasks")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            fail(f"{where}.tasks", f"must be a non-empty list of lm-eval task names, got {tasks!r}")
        if len(set(tasks)) != len(tasks):
            fail(f"{where}.tasks", f"lists a task twice: {tasks}")
        include = raw.get("include_path")
        if include is not None and not isinstance(include, str):
            fail(f"{where}.include_path", f"must be a directory of task YAMLs, got {include!r}")
        for key, low in (("num_fewshot", 0), ("limit", 1), ("batch_size", 1), ("seed", 0)):
            value = raw.get(key, getattr(cls, key, None) if key != "limit" else None)
            if value is None and key in ("num_fewshot", "limit"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                fail(f"{where}.{key}", f"must be an integer >= {low}{' or null' if key in ('num_fewshot', 'limit') else ''},"
                     f" got {value!r}")
        for key in ("apply_chat_template", "confirm_run_unsafe_code"):
            if not isinstance(raw.get(key, False), bool):
                fail(f"{where}.{key}", f"must be true or false, got {raw[key]!r}")
        gen = raw.get("gen_kwargs") or {}
        if not isinstance(gen, Mapping):
            fail(f"{where}.gen_kwargs", f"must be a mapping of generation settings, got {gen!r}")
        if gen.get("do_sample") or (gen.get("temperature") or 0) > 0:
            fail(f"{where}.gen_kwargs", "asks for sampling; vld's cached generation is greedy (do_sample: false)")
        return cls(tuple(tasks), include, raw.get("num_fewshot"), raw.get("limit"), raw.get("batch_size", cls.batch_size),
                   raw.get("apply_chat_template", False), dict(gen), raw.get("confirm_run_unsafe_code", False),
                   raw.get("seed", 0))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["tasks"] = list(self.tasks)
        return out


def check_settings(settings: Mapping[str, Any], where: str) -> dict:
    """The eval block, checked, as the plain dict a Variant keeps."""
    return LmEvalSettings.from_dict(settings, where).to_dict()
