"""Unrolled Hugging Face export: the directory loads with transformers' AutoModelForCausalLM
and computes the VLD model's logits (own models of both block types, retrofitted HF Llamas,
LoRA merged, shared or per visit)."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from vld.errors import UserError  # noqa: E402
from vld.retrofit.api import prepare_retrofit  # noqa: E402
from vld.retrofit.export import export_hf, main  # noqa: E402

TOKENS = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))


def load_export(path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()


def randomize_lora_b(model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=128, max_position_embeddings=128, tie_word_embeddings=True,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(config).save_pretrained(str(path))
    return path


def vld_model(block, schedule):
    from vld.model import ModelConfig, VLDTransformer

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=128, n_layer=3, d_model=32, n_head=2, max_seq_len=64, block=block,
                         tie_embeddings=block == "gpt2")
    model = VLDTransformer(config)
    model.set_schedule(schedule)
    return model.eval()


@pytest.mark.parametrize("block", ["gpt2", "llama"])
def test_vld_model_export_loads_with_transformers_and_matches(tmp_path, block):
    model = vld_model(block, [0, 1, 2, 0, 1, 2])
    out = export_hf(model, tmp_path / "export")
    hf = load_export(out)
    expected_class = "GPT2LMHeadModel" if block == "gpt2" else "LlamaForCausalLM"
    assert type(hf).__name__ == expected_class
    assert json.loads((out / "config.json").read_text())["architectures"] == [expected_class]
    depth = hf.config.n_layer if block == "gpt2" else hf.config.num_hidden_layers
    assert depth == 6
    # One copy of the weights per virtual layer.
    assert hf.num_parameters() > model.parameter_count()
    with torch.no_grad():
        torch.testing.assert_close(hf(TOKENS).logits, model(TOKENS), rtol=0, atol=1e-5)
    assert model.schedule == (0, 1, 2, 0, 1, 2)  # the exported model is left as it was


@pytest.mark.parametrize("method", ["full", "lora", "lora_per_visit"])
def test_retrofitted_hf_llama_export_matches(llama_dir, tmp_path, method):
    model, info = prepare_retrofit(llama_dir, {"pattern": "cycle", "k": 1, "layers": "1..2"}, method=method)
    assert info["schedule"] == [0, 1, 2, 1, 2, 3]
    randomize_lora_b(model)
    model.eval()
    out = export_hf(model, tmp_path / "export")
    hf = load_export(out)
    assert hf.config.num_hidden_layers == 6 and hf.config.tie_word_embeddings
    assert not any("lora" in name for name, _ in hf.named_parameters())
    layers = hf.model.layers
    assert layers[1].self_attn.q_proj.weight.data_ptr() != layers[3].self_attn.q_proj.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(hf(TOKENS).logits, model(TOKENS), rtol=0, atol=1e-5)
    assert any("lora_" in n for n, _ in model.named_parameters()) == (method != "full")  # not merged in place


@pytest.mark.parametrize("method", ["lora", "lora_per_visit"])
def test_vld_model_with_lora_export_matches(tmp_path, method):
    from vld.retrofit.lora import add_lora

    model = vld_model("llama", [0, 1, 1, 2])
    add_lora(model, 4, per_visit=method == "lora_per_visit")
    randomize_lora_b(model)
    out = export_hf(model, tmp_path / "export")
    with torch.no_grad():
        torch.testing.assert_close(load_export(out)(TOKENS).logits, model(TOKENS), rtol=0, atol=1e-5)


def test_export_from_a_vld_model_file_and_an_hf_dir(tmp_path, llama_dir):
    from vld.model import save_model

    model = vld_model("gpt2", [0, 1, 2, 2])
    save_model(model, tmp_path / "model.pt")
    hf = load_export(export_hf(tmp_path / "model.pt", tmp_path / "from_file"))
    with torch.no_grad():
        torch.testing.assert_close(hf(TOKENS).logits, model(TOKENS), rtol=0, atol=1e-5)
    hf = load_export(export_hf(llama_dir, tmp_path / "from_hf"))
    reference = load_export(llama_dir)
    with torch.no_grad():
        assert torch.equal(hf(TOKENS).logits, reference(TOKENS).logits)


def test_export_refuses_foreign_directory_and_missing_source(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="was not written by vld"):
        export_hf(vld_model("gpt2", None), foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match=r"^export\.source: .* does not exist"):
        main([str(tmp_path / "missing"), str(tmp_path / "out")])
