"""Export any VLD model as an ordinary, unrolled Hugging Face checkpoint.

One copy of the weights per virtual layer, LoRA merged, a standard config: the directory
loads with `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` and so with the
evaluation harnesses and serving stacks built on it.

    python -m vld.retrofit.export SOURCE OUT_DIR

SOURCE: a retrofit output dir, a vld model file (model.pt), or a Hugging Face Llama dir.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vld.errors import fail, run_cli


def _load_any(path: Path):
    from vld.retrofit.api import META_FILE, MODEL_DIR, load_retrofit
    from vld.retrofit.sources import inspect_source, load_source

    if (path / META_FILE).is_file() or (path / MODEL_DIR / META_FILE).is_file():
        return load_retrofit(path)[0]
    return load_source(inspect_source(path, "export.source"))


def to_unrolled_hf(model):
    """The transformers model (LlamaForCausalLM or GPT2LMHeadModel) computing what `model` does:
    its layers unrolled in schedule order, adapters merged. `model` is left untouched."""
    from vld.retrofit.hf_llama import RetrofitLlama
    from vld.retrofit.lora import lora_modules, unroll_hf_llama

    if isinstance(model, RetrofitLlama):
        return unroll_hf_llama(model)  # merges shared or per-visit adapters itself
    from vld.model import VLDTransformer
    from vld.model.hf_compat import to_hf_model

    if not isinstance(model, VLDTransformer):
        raise TypeError(f"export_hf: expected a VLDTransformer or RetrofitLlama, got {type(model).__name__}")
    # to_hf_model unrolls a plain model itself; one with adapters is unrolled here, merging them
    return to_hf_model(model.unrolled() if lora_modules(model) else model)


def export_hf(model_or_path, out_dir: str | Path) -> Path:
    """Write `model_or_path` (an nn.Module or a path, see module doc) to `out_dir` as an
    unrolled Hugging Face checkpoint (config.json + model.safetensors), atomically."""
    from vld.atomic import atomic_dir, check_replaceable

    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.exists():
            fail("export.source", f"{path} does not exist")
        model = _load_any(path)
    else:
        model = model_or_path
    hf_model = to_unrolled_hf(model)
    hf_model.config.architectures = [type(hf_model).__name__]
    with atomic_dir(out_dir) as tmp:
        hf_model.save_pretrained(str(tmp))
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vld.retrofit.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="retrofit output dir, vld model.pt, or Hugging Face Llama dir")
    parser.add_argument("out_dir", help="where to write the unrolled Hugging Face checkpoint")
    args = parser.parse_args(argv)
    out = export_hf(args.source, args.out_dir)
    print(f"exported {args.source} -> {out}")


if __name__ == "__main__":
    run_cli(main)
