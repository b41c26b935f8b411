"""vld.retrofit: give a trained model virtual depth, fine-tune it, export it.

Sources: a vld checkpoint or a local Hugging Face Llama directory (`sources`); the schedule
applied to a Hugging Face Llama with a KV-cache slot per visit (`hf_llama.RetrofitLlama`);
shared or per-visit LoRA with peft (`lora`); the one-call pipeline API (`api`); unrolled
Hugging Face export (`export`).

Importing this package is cheap: the names below load torch/transformers on first use.
"""

_LAZY = {
    "retrofit_and_finetune": "vld.retrofit.api",
    "prepare_retrofit": "vld.retrofit.api",
    "validate_variant": "vld.retrofit.api",
    "load_retrofit": "vld.retrofit.api",
    "save_retrofit": "vld.retrofit.api",
    "METHODS": "vld.retrofit.api",
    "inspect_source": "vld.retrofit.sources",
    "load_source": "vld.retrofit.sources",
    "SourceInfo": "vld.retrofit.sources",
    "RetrofitLlama": "vld.retrofit.hf_llama",
    "VisitKVCache": "vld.retrofit.hf_llama",
    "add_lora": "vld.retrofit.lora",
    "merge_lora": "vld.retrofit.lora",
    "export_hf": "vld.retrofit.export",
    "to_unrolled_hf": "vld.retrofit.export",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vld.retrofit' has no attribute {name!r}")


__all__ = sorted(_LAZY)
