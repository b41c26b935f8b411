"""lm-evaluation-harness on a retrofitted model: the `vld` model class and one call that runs
a variant's tasks.

`VldLM` is lm-eval's own Hugging Face model class (`hf`) with the two places where a model
computes replaced: log-likelihoods come from the retrofitted model's forward (its schedule),
and generation is vld's batched greedy decoding through the per-visit KV cache
(vld.retrofit.hf_llama). Tokenization, batching, truncation, the chat template and the
cutting at stop sequences are lm-eval's, so its scores are comparable with `hf`'s on the same
checkpoint (tests/test_lm_retrofit.py). Registered as `vld`:

    lm_eval --model vld --model_args path=results/lm_retrofit/cycle/seed0 --tasks ... --device cuda

Sampling is refused: the cached generation is greedy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from vld.errors import fail


@register_model("vld")
class VldLM(HFLM):
    """lm-eval's `hf` model class running a RetrofitLlama (its schedule, its cache).

    Either `path` (a retrofit output: results/lm_retrofit/<variant>/seed<s>, its model/hf holds
    the tokenizer) or `model` (a RetrofitLlama) and `tokenizer`."""

    def __init__(self, path: str | None = None, model=None, tokenizer=None, batch_size: int | str = 1,
                 device: str = "cpu", max_length: int | None = None, **kwargs: Any):
        if path is not None:
            from vld.retrofit.api import MODEL_DIR, load_retrofit

            model, _ = load_retrofit(path)
            hf_dir = Path(path) / MODEL_DIR / "hf" if (Path(path) / MODEL_DIR).is_dir() else Path(path) / "hf"
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
        if model is None or tokenizer is None:
            fail("lm_eval.model_args", "give path=<retrofit output> (or, from Python, model= and tokenizer=)")
        model = model.to(device).eval()
        self.vld_model = model
        super().__init__(pretrained=model.hf, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                         **kwargs)

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        if attn_mask is not None or labels is not None:
            raise NotImplementedError("vld's model class is decoder-only")
        with torch.no_grad():
            return self.vld_model(inps)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        """Greedy continuations through the KV cache, returned as lm-eval expects: [B, T_context +
        new] with the left-padded context first and pad tokens after a row's end."""
        attention_mask = generation_kwargs.pop("attention_mask", None)
        if generation_kwargs.pop("do_sample", False) or (generation_kwargs.pop("temperature", 0.0) or 0.0) > 0:
            fail("eval.gen_kwargs", "a task asks for sampling; vld's cached generation is greedy (do_sample: false)")
        if attention_mask is None:
            attention_mask = torch.ones_like(context)
        prompts = [row[mask.bool()].tolist() for row, mask in zip(context, attention_mask)]
        new_tokens = max_length - context.shape[1]
        continuations = self.vld_model.generate(prompts, new_tokens, eos_id=self.eot_token_id)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        out = torch.full((len(prompts), context.shape[1] + max(1, max(map(len, continuations)))), pad,
                         dtype=context.dtype, device=context.device)
        out[:, : context.shape[1]] = context
        for row, tokens in enumerate(continuations):
            out[row, context.shape[1]: context.shape[1] + len(tokens)] = torch.tensor(tokens, dtype=context.dtype)
        return out


def run_tasks(lm, settings: dict) -> dict:
    """lm-eval's simple_evaluate of the eval block's tasks (vld.eval.lm_tasks) on `lm`; returns
    {"tasks": {task: {metric: value, metric_stderr: value}}, "samples": {task: n}, "versions": ...}."""
    import os

    import lm_eval
    from lm_eval.tasks import TaskManager

    if settings["confirm_run_unsafe_code"]:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"  # the `code_eval` metric asks for it besides the flag
    include = settings["include_path"]
    if include is not None and not Path(include).is_dir():
        fail("eval.include_path", f"{include} is not a directory of task YAMLs")
    manager = TaskManager(include_path=include)
    unknown = [task for task in settings["tasks"] if task not in manager.all_tasks]
    if unknown:
        fail("eval.tasks", f"unknown lm-eval task {unknown[0]!r} (built-in names, or a YAML under include_path)")
    results = lm_eval.simple_evaluate(
        model=lm, tasks=list(settings["tasks"]), num_fewshot=settings["num_fewshot"], limit=settings["limit"],
        task_manager=manager, apply_chat_template=settings["apply_chat_template"],
        gen_kwargs=settings["gen_kwargs"] or None, confirm_run_unsafe_code=settings["confirm_run_unsafe_code"],
        random_seed=settings["seed"], numpy_random_seed=settings["seed"], torch_random_seed=settings["seed"],
        fewshot_random_seed=settings["seed"], log_samples=False, bootstrap_iters=1000)
    if results is None:  # a non-zero rank of a distributed run
        return {}
    tasks = {}
    for task, values in results["results"].items():
        measures = {}
        for key, value in values.items():
            if "," not in key or not isinstance(value, (int, float)):
                continue
            metric, filtered = key.split(",", 1)
            name = metric if filtered == "none" else f"{metric}.{filtered}"
            measures[name] = float(value)
        tasks[task] = measures
    return {"tasks": tasks, "samples": {task: int(n.get("effective", n.get("original", 0))) if isinstance(n, dict)
                                        else int(n) for task, n in results.get("n-samples", {}).items()},
            "versions": {task: str(v) for task, v in results.get("versions", {}).items()},
            "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None}
