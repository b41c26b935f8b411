"""vld.retrofit: give a trained model virtual depth, fine-tune it, export it.

Sources: a vld checkpoint or a local Hugging Face Llama directory (`sources`); the schedule
applied to a Hugging Face Llama with a KV-cache slot per visit (`hf_llama.RetrofitLlama`);
shared or per-visit LoRA with peft (`lora`); the one-call pipeline API (`api`); unrolled
Hugging Face export (`export`).

Importing this package is cheap: the names below load torch/transformers on first use.
"""

from vld.lazy import lazy_exports

_LAZY = {
    "retrofit_and_finetune": "vld.retrofit.api",
    "finetune_retrofit": "vld.retrofit.api",
    "prepare_retrofit": "vld.retrofit.api",
    "validate_variant": "vld.retrofit.api",
    "load_retrofit": "vld.retrofit.api",
    "save_retrofit": "vld.retrofit.api",
    "METHODS": "vld.retrofit.methods",
    "DEFAULT_LORA_RANK": "vld.retrofit.methods",
    "check_method": "vld.retrofit.methods",
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

__getattr__ = lazy_exports("vld.retrofit", _LAZY)


__all__ = sorted(_LAZY)
