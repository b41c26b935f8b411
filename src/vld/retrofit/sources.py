"""Where a trained model comes from: a vld checkpoint, or a Hugging Face Llama directory.

`inspect_source` validates a source cheaply (config only, no weights for HF) so every error
is raised before any weights are loaded or modified; `load_source` then loads it.
Nothing is downloaded: Hugging Face directories are read with `local_files_only`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vld.errors import fail

# model_type in config.json -> the transformers class that loads it.
SUPPORTED_HF_TYPES = {"llama": "LlamaForCausalLM"}
VLD_MODEL_FILE = "model.pt"
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass
class SourceInfo:
    kind: str  # "vld" (own checkpoint) or "hf_llama"
    path: Path  # the model file (vld) or the directory (hf_llama)
    n_layers: int  # base layers
    config: dict = field(default_factory=dict)  # the HF config.json, or the vld model config


def inspect_source(source: str | Path, where: str = "retrofit.source") -> SourceInfo:
    """Identify and validate a source without loading HF weights. One-line UserError on bad input."""
    path = Path(source)
    if not path.exists():
        fail(where, f"{path} does not exist")
    has_hf_weights = path.is_dir() and any((path / name).is_file() for name in HF_WEIGHT_FILES)
    if path.is_dir() and (path / VLD_MODEL_FILE).is_file() and not has_hf_weights:
        path = path / VLD_MODEL_FILE  # a vld output dir (its config.json, if any, is vld's own)
    if path.is_file():
        return _inspect_vld(path, where)
    config_path = path / "config.json"
    if not config_path.is_file():
        fail(where, f"{path} has no config.json (a Hugging Face model directory) nor {VLD_MODEL_FILE} (a vld checkpoint)")
    config = hf_llama_config(path, where)
    n_layers = config["num_hidden_layers"]
    if not any((path / name).is_file() for name in HF_WEIGHT_FILES):
        fail(where, f"{path} has no safetensors weights ({' or '.join(HF_WEIGHT_FILES)})")
    for weights in _weight_files(path, where):
        check_safetensors(weights, where)
    return SourceInfo("hf_llama", path, n_layers, config)


def hf_llama_config(source: str | Path, where: str) -> dict:
    """The config.json of a local Hugging Face Llama directory, checked without its weights
    (params validation, and inspect_source before it checks the weights)."""
    path = Path(source)
    config_path = path / "config.json"
    if not path.is_dir():
        fail(where, f"{path} is not a directory (a local Hugging Face Llama checkpoint; nothing is downloaded)")
    if not config_path.is_file():
        fail(where, f"{path} has no config.json (not a Hugging Face model directory)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        fail(where, f"{config_path} is not valid JSON ({err.__class__.__name__})")
    if not isinstance(config, dict) or config.get("model_type") not in SUPPORTED_HF_TYPES:
        found = config.get("model_type") if isinstance(config, dict) else None
        fail(where, f"{path} is a {found!r} model, an unsupported architecture (supported: "
                    f"{', '.join(SUPPORTED_HF_TYPES)}): only Llama checkpoints can be retrofitted")
    n_layers = config.get("num_hidden_layers")
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
        fail(where, f"{config_path}: num_hidden_layers must be a positive integer, got {n_layers!r}")
    return config


def _weight_files(path: Path, where: str) -> list[Path]:
    """The safetensors files of an HF directory: model.safetensors, or the shards its index names."""
    single = path / HF_WEIGHT_FILES[0]
    if single.is_file():
        return [single]
    index_path = path / HF_WEIGHT_FILES[1]
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as err:
        fail(where, f"{index_path} is not valid JSON ({type(err).__name__})")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        fail(where, f"{index_path} has no weight_map")
    shards = sorted({str(name) for name in weight_map.values()})
    missing = [name for name in shards if not (path / name).is_file()]
    if missing:
        fail(where, f"{index_path} names shards that are missing: {', '.join(missing[:3])}")
    return [path / name for name in shards]


def check_safetensors(file: Path, where: str) -> None:
    """Read a safetensors file's header only (8-byte length, JSON table of tensors) and check
    that every tensor lies inside the file: garbage or a truncated download is one line here,
    not a SafetensorError traceback after the model class is built."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as handle:
            head = handle.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > min(size - 8, 100 << 20):
                raise ValueError("no safetensors header")
            header = json.loads(handle.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        data_size = size - 8 - n
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
            if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(x, int) for x in offsets)
                    or not 0 <= offsets[0] <= offsets[1] <= data_size):
                raise ValueError(f"tensor {name!r} lies outside the file (truncated?)")
    except (OSError, ValueError, UnicodeDecodeError) as err:
        fail(where, f"{file} is not a readable safetensors file ({err})")


def _inspect_vld(path: Path, where: str) -> SourceInfo:
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a truncated or foreign file
        fail(where, f"{path} is not a readable vld checkpoint ({type(err).__name__})")
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict) or "state_dict" not in payload:
        fail(where, f"{path} is not a vld model file (expected keys config, state_dict)")
    n_layers = payload["config"].get("n_layer")
    if not isinstance(n_layers, int) or n_layers < 1:
        fail(where, f"{path}: config.n_layer must be a positive integer, got {n_layers!r}")
    return SourceInfo("vld", path, n_layers, dict(payload["config"]))


def load_source(info: SourceInfo, dtype: str = "float32"):
    """Load a validated source: a VLDTransformer, or a RetrofitLlama (identity schedule)."""
    import torch

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        fail("retrofit.dtype", f"unknown dtype {dtype!r} (float32, bfloat16, float16)")
    if info.kind == "vld":
        from vld.model import load_model

        return load_model(info.path).to(torch_dtype)
    return load_hf_llama(info.path, torch_dtype)


def load_hf_llama(path: Path, torch_dtype):
    """A local Hugging Face Llama directory as a RetrofitLlama with the identity schedule."""
    import transformers

    from vld.retrofit.hf_llama import RetrofitLlama

    model_class = getattr(transformers, SUPPORTED_HF_TYPES["llama"])
    try:
        hf_model = model_class.from_pretrained(
            str(path), local_files_only=True, dtype=torch_dtype, attn_implementation="sdpa"
        )
    except Exception as err:  # a file inspect_source could not judge from its header (SafetensorError, ...)
        fail(str(path), f"cannot be loaded as a Hugging Face Llama model ({type(err).__name__}:"
                        f" {(str(err).strip().splitlines() or [''])[0][:200]})")
    return RetrofitLlama(hf_model.eval())
