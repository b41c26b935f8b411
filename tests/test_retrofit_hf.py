"""Retrofit of a Hugging Face Llama: identity equals transformers, reuse keeps weights tied,
the KV cache has one slot per visit (and HF's own cache with reused layers does not)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from user_errors import one_line  # noqa: E402
from vld.errors import UserError  # noqa: E402
from vld.model import Backend  # noqa: E402
from vld.retrofit import sources as sources_module  # noqa: E402
from vld.retrofit.api import prepare_retrofit  # noqa: E402
from vld.retrofit.hf_llama import RetrofitLlama  # noqa: E402

PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [9], [40, 41, 42, 43, 44]]


def tiny_llama_config(**overrides):
    # GQA (1 kv head for 2 heads) so the grouped path is exercised too.
    values = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=128, max_position_embeddings=128,
    )
    values.update(overrides)
    return transformers.LlamaConfig(**values)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_llama_config())
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(str(path))
    return path


def load_hf(path, attn="sdpa"):
    return transformers.LlamaForCausalLM.from_pretrained(str(path), local_files_only=True, attn_implementation=attn).eval()


def test_identity_retrofit_equals_transformers_bit_for_bit(llama_dir):
    reference = load_hf(llama_dir)
    model, info = prepare_retrofit(llama_dir, {"pattern": "base"})
    assert isinstance(model, RetrofitLlama) and info["schedule"] == [0, 1, 2, 3]
    tokens = torch.randint(0, 128, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.eval()(tokens), reference(tokens).logits)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_identity_retrofit_with_left_padding_matches_transformers(llama_dir, attn):
    reference = load_hf(llama_dir, attn)
    model = RetrofitLlama(load_hf(llama_dir, attn))
    tokens = torch.randint(1, 128, (2, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # row 0 is left-padded by 3
    tokens[0, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(tokens, attention_mask=mask)
        theirs = reference(tokens, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=0, atol=1e-6)


def test_cycle_retrofit_ties_weights_and_keeps_parameter_count(llama_dir):
    reference = load_hf(llama_dir)
    model, info = prepare_retrofit(llama_dir, {"pattern": "cycle", "k": 1})
    assert info["schedule"] == [0, 1, 2, 3, 0, 1, 2, 3] and model.effective_depth == 8
    assert model.parameter_count() == sum(p.numel() for p in reference.parameters())
    layers = model.hf.model.layers
    assert len(layers) == 4
    visited = [layers[i] for i in model.schedule]
    assert visited[0] is visited[4]
    assert len(list(model.parameters())) == len(list(reference.parameters()))
    # Both visits write their gradient into the one shared tensor.
    model.train()
    model(torch.randint(0, 128, (1, 5))).sum().backward()
    assert layers[0].self_attn.q_proj.weight.grad is not None


@pytest.mark.parametrize(
    "schedule",
    [{"pattern": "cycle", "k": 1}, {"pattern": "cycle", "k": 2, "layers": "1..2"}, {"order": [0, 1, 1, 2, 3, 3, 2]}],
)
def test_cached_greedy_equals_uncached_for_batched_prompts_of_different_lengths(llama_dir, schedule):
    model, _ = prepare_retrofit(llama_dir, schedule)
    cached = model.generate(PROMPTS, max_new_tokens=12)
    uncached = model.generate(PROMPTS, max_new_tokens=12, use_cache=False)
    assert cached == uncached
    assert all(len(c) == 12 for c in cached)
    # Left padding is transparent: each prompt alone decodes the same.
    assert [model.generate([p], max_new_tokens=12)[0] for p in PROMPTS] == cached
    # The cache holds one slot per virtual layer, each with the full sequence.
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.tensor([PROMPTS[1]]), cache=cache)
    assert len(cache) == model.effective_depth
    assert all(k.shape[-2] == len(PROMPTS[1]) for k in cache.keys)


def test_cached_logits_match_uncached_logits(llama_dir):
    model, _ = prepare_retrofit(llama_dir, {"pattern": "cycle", "k": 1})
    sequence = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        full = model(sequence)
        cache = model.new_cache()
        first = model(sequence[:, :5], cache=cache)
        rest = [model(sequence[:, t : t + 1], cache=cache) for t in range(5, sequence.shape[1])]
    stepwise = torch.cat([first] + rest, dim=1)
    torch.testing.assert_close(stepwise, full, rtol=0, atol=1e-5)


def test_eos_stops_a_row_and_is_kept(llama_dir):
    model, _ = prepare_retrofit(llama_dir, {"pattern": "cycle", "k": 1})
    free = model.generate(PROMPTS, max_new_tokens=6)
    eos = free[0][2]
    stopped = model.generate(PROMPTS, max_new_tokens=6, eos_id=eos)
    for free_row, row in zip(free, stopped):
        cut = free_row.index(eos) + 1 if eos in free_row else len(free_row)
        assert row == free_row[:cut]


def test_naive_reuse_of_hf_layers_breaks_hf_cache_but_not_ours(llama_dir):
    """HF's cache is indexed by each attention's own layer_idx: a reused layer appends its
    second visit to the first visit's slot, so cached generation drifts from uncached."""
    base = load_hf(llama_dir)
    schedule = [0, 1, 2, 3, 0, 1, 2, 3]
    config = copy.deepcopy(base.config)
    config.num_hidden_layers = len(schedule)
    naive = transformers.LlamaForCausalLM(config).eval()
    naive.model.embed_tokens, naive.model.norm, naive.lm_head = base.model.embed_tokens, base.model.norm, base.lm_head
    naive.model.layers = torch.nn.ModuleList([base.model.layers[i] for i in schedule])
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    kwargs = dict(max_new_tokens=16, do_sample=False, pad_token_id=0)
    naive_cached = naive.generate(prompt, use_cache=True, **kwargs)[0, 6:].tolist()
    naive_uncached = naive.generate(prompt, use_cache=False, **kwargs)[0, 6:].tolist()
    assert naive_cached != naive_uncached

    ours = RetrofitLlama(base, schedule)
    assert ours.generate([prompt[0].tolist()], 16) == [naive_uncached]
    assert ours.generate([prompt[0].tolist()], 16, use_cache=False) == [naive_uncached]


def test_activation_checkpointing_recomputes_each_visit_and_gives_the_same_gradients(llama_dir):
    tokens = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    grads = []
    for enabled in (False, True):
        model, _ = prepare_retrofit(llama_dir, {"pattern": "cycle", "k": 1}, backend=Backend(activation_checkpointing=enabled))
        assert model.backend.activation_checkpointing is enabled
        model.train()
        calls = []  # one per decoder-layer call; a pre-hook, as recomputation may stop a layer early
        for layer in model.hf.model.layers:
            layer.register_forward_pre_hook(lambda module, args: calls.append(module))
        loss = model(tokens).float().logsumexp(-1).mean()
        assert len(calls) == model.effective_depth == 8
        loss.backward()
        # with checkpointing nothing was kept: backward ran every visit again
        assert len(calls) == (2 if enabled else 1) * model.effective_depth
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ bad input


def _forbid_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was validated")

    monkeypatch.setattr(sources_module, "load_source", refuse)


def test_directory_without_config_is_one_line_error(tmp_path, monkeypatch):
    _forbid_loading(monkeypatch)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError) as err:
        prepare_retrofit(tmp_path, {"pattern": "cycle", "k": 1})
    assert one_line(err).startswith("retrofit.source:") and "no config.json" in str(err.value)


@pytest.mark.parametrize("model_type", ["gpt_neox", "gpt2"])
def test_unsupported_architecture_is_one_line_error(tmp_path, monkeypatch, model_type):
    _forbid_loading(monkeypatch)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "num_hidden_layers": 2}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError) as err:
        prepare_retrofit(tmp_path, {"pattern": "base"})
    assert f"is a '{model_type}' model, an unsupported architecture" in one_line(err)
    assert "(supported: llama)" in str(err.value)


@pytest.mark.parametrize(
    "schedule, key",
    [({"order": [0, 1, 2, 3, 7]}, "retrofit.schedule.order"), ({"pattern": "0..5"}, "retrofit.schedule.pattern"),
     ({"pattern": "cycle", "k": 1, "layers": "2..6"}, "retrofit.schedule.layers")],
)
def test_pattern_beyond_the_models_layers_is_one_line_error(llama_dir, monkeypatch, schedule, key):
    before = (llama_dir / "model.safetensors").read_bytes()
    _forbid_loading(monkeypatch)
    with pytest.raises(UserError) as err:
        prepare_retrofit(llama_dir, schedule)
    assert one_line(err).startswith(key + ":")
    assert "out of range for 4 base layers" in str(err.value)
    assert (llama_dir / "model.safetensors").read_bytes() == before


def test_missing_source_and_missing_weights(tmp_path, monkeypatch):
    _forbid_loading(monkeypatch)
    with pytest.raises(UserError, match="does not exist"):
        prepare_retrofit(tmp_path / "nope", None)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    with pytest.raises(UserError, match="no safetensors weights"):
        prepare_retrofit(tmp_path, None)
    with pytest.raises(UserError, match="retrofit.method"):
        prepare_retrofit(tmp_path, None, method="qlora")
