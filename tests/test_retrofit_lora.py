"""LoRA on retrofitted models (shared per layer, or per visit), full fine-tuning, and one
fine-tuning step through the Lightning Trainer with the one-call API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from vld.errors import UserError  # noqa: E402
from vld.model import Backend  # noqa: E402
from vld.retrofit.api import load_retrofit, prepare_retrofit, retrofit_and_finetune  # noqa: E402
from vld.retrofit.lora import LLAMA_PROJECTIONS, add_lora, lora_modules, merge_lora  # noqa: E402

RANK = 4
HIDDEN, FF, N_LAYERS = 32, 64, 4
# LoRA params of one Llama layer: r * (in + out) for each of the seven projections
# (q: 32->32, k,v: 32->16 with one kv head, o: 32->32, gate/up: 32->64, down: 64->32).
PER_LAYER = RANK * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 2 * (32 + 64) + (64 + 32))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=HIDDEN, intermediate_size=FF, num_hidden_layers=N_LAYERS, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=128, max_position_embeddings=128,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def vld_checkpoint(tmp_path_factory):
    from vld.model import ModelConfig, VLDTransformer, save_model

    torch.manual_seed(0)
    model = VLDTransformer(ModelConfig(vocab_size=128, n_layer=3, d_model=32, n_head=2, max_seq_len=64, block="llama"))
    path = tmp_path_factory.mktemp("vld_base") / "model.pt"
    save_model(model, path)
    return path


def randomize_lora_b(model, seed=0):
    """peft starts B at zero (adapter = identity); give it values so adapters matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def tokens(shape=(2, 9), seed=1):
    return torch.randint(0, 128, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("source", ["llama_dir", "vld_checkpoint"])
def test_shared_lora_only_adapters_get_gradients(request, source):
    model, _ = prepare_retrofit(request.getfixturevalue(source), {"pattern": "cycle", "k": 1}, method="lora")
    randomize_lora_b(model)
    model.train()
    model(tokens()).logsumexp(-1).mean().backward()
    named = dict(model.named_parameters())
    with_grad = {n for n, p in named.items() if p.grad is not None}
    adapters = {n for n in named if "lora_" in n}
    assert adapters and with_grad == adapters
    assert all(named[n].grad.abs().sum() > 0 for n in adapters)
    assert {n for n, p in named.items() if p.requires_grad} == adapters


def test_shared_lora_is_one_set_of_weights_per_base_layer(llama_dir):
    model, info = prepare_retrofit(llama_dir, {"pattern": "cycle", "k": 2}, method="lora", lora_rank=RANK)
    assert info["effective_depth"] == 3 * N_LAYERS
    wrappers = lora_modules(model)
    assert len(wrappers) == 7 * N_LAYERS
    assert {name.rsplit(".", 1)[-1] for name in wrappers} == set(LLAMA_PROJECTIONS)
    assert all(list(m.lora_A.keys()) == ["default"] for m in wrappers.values())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == N_LAYERS * PER_LAYER  # not 3x: every visit uses its layer's adapter
    assert model.parameter_count() == info["base_params"] + N_LAYERS * PER_LAYER


def test_per_visit_adapters_are_distinct_and_each_used_by_its_visit(llama_dir):
    model, info = prepare_retrofit(llama_dir, {"pattern": "cycle", "k": 1}, method="lora_per_visit")
    depth = info["effective_depth"]
    assert model.visit_adapters == [f"visit_{v}" for v in range(depth)]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == depth * PER_LAYER
    q_proj = model.hf.model.layers[0].self_attn.q_proj
    assert sorted(q_proj.lora_A.keys()) == ["visit_0", "visit_4"]
    assert q_proj.lora_A["visit_0"].weight is not q_proj.lora_A["visit_4"].weight
    assert not torch.equal(q_proj.lora_A["visit_0"].weight, q_proj.lora_A["visit_4"].weight)
    # Every visit's own adapter takes part in the forward pass (B gets a gradient even at B=0).
    model.train()
    model(tokens()).logsumexp(-1).mean().backward()
    for layer in model.hf.model.layers:
        for name, param in layer.named_parameters():
            if "lora_B" in name:
                assert param.grad is not None and param.grad.abs().sum() > 0, name
    # With equal adapters on every visit, per-visit LoRA computes what shared LoRA computes.
    shared, _ = prepare_retrofit(llama_dir, {"pattern": "cycle", "k": 1}, method="lora")
    randomize_lora_b(shared)
    with torch.no_grad():
        for (name, module) in lora_modules(model).items():
            twin = dict(lora_modules(shared))[name]
            for adapter in module.lora_A.keys():
                module.lora_A[adapter].weight.copy_(twin.lora_A["default"].weight)
                module.lora_B[adapter].weight.copy_(twin.lora_B["default"].weight)
        torch.testing.assert_close(model.eval()(tokens()), shared.eval()(tokens()), rtol=0, atol=1e-6)


@pytest.mark.parametrize("source", ["llama_dir", "vld_checkpoint"])
@pytest.mark.parametrize("method", ["lora", "lora_per_visit"])
def test_merging_adapters_gives_the_same_logits(request, source, method):
    model, info = prepare_retrofit(request.getfixturevalue(source), {"pattern": "cycle", "k": 1}, method=method)
    randomize_lora_b(model)
    model.eval()
    with torch.no_grad():
        before = model(tokens())
        merged = merge_lora(model)
        after = merged(tokens())
    assert not lora_modules(merged)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    if method == "lora":  # a shared adapter folds into the shared weight: still tied
        assert merged.effective_depth == info["effective_depth"] and merged.parameter_count() == info["base_params"]
    else:  # per-visit adapters need one weight per visit: unrolled
        assert list(merged.schedule) == list(range(info["effective_depth"]))


@pytest.mark.parametrize("method", ["lora", "lora_per_visit"])
def test_vld_unrolled_merges_each_visits_adapter(vld_checkpoint, method):
    """VLDTransformer.unrolled is the one way to unroll a vld model, adapters or not: visit v
    of base layer j gets W_j + scale * B A of its adapter (the layer's shared one, or its own)."""
    model, info = prepare_retrofit(vld_checkpoint, {"pattern": "cycle", "k": 1}, method=method)
    randomize_lora_b(model)
    model.eval()
    unrolled = model.unrolled()
    assert not lora_modules(unrolled) and unrolled.schedule == tuple(range(info["effective_depth"]))
    assert not unrolled.training and lora_modules(model)  # the source keeps its adapters
    scale = 2.0  # add_lora's default alpha = 2 * rank
    for visit, base in enumerate(model.schedule):
        wrapped = model.layers[base].attn.qkv
        adapter = f"visit_{visit}" if method == "lora_per_visit" else "default"
        expected = wrapped.base_layer.weight + scale * wrapped.lora_B[adapter].weight @ wrapped.lora_A[adapter].weight
        torch.testing.assert_close(unrolled.layers[visit].attn.qkv.weight, expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(unrolled(tokens()), model(tokens()), rtol=0, atol=1e-5)
    if method == "lora_per_visit":  # merging per-visit adapters is unrolling
        with torch.no_grad():
            assert torch.equal(merge_lora(model)(tokens()), unrolled(tokens()))


def test_full_fine_tuning_trains_every_parameter(llama_dir):
    model, info = prepare_retrofit(llama_dir, {"pattern": "cycle", "k": 1}, method="full")
    assert all(p.requires_grad for p in model.parameters()) and not lora_modules(model)
    assert model.parameter_count() == info["base_params"]


def test_lora_rank_and_method_are_validated(llama_dir):
    from vld.retrofit.api import DEFAULT_LORA_RANK, METHODS, check_method

    assert METHODS == ("full", "lora", "lora_per_visit") and DEFAULT_LORA_RANK == 4
    for method, rank, message in (
        ("adapter", 4, "v.method: unknown method 'adapter' (known: full, lora, lora_per_visit)"),
        (None, 4, "v.method: unknown method nothing (known: full, lora, lora_per_visit)"),
        ("lora", 0, "v.lora_rank: must be a positive integer, got 0"),
        ("full", True, "v.lora_rank: must be a positive integer, got True"),
        ("lora", 2.0, "v.lora_rank: must be a positive integer, got 2.0"),
    ):
        with pytest.raises(UserError) as err:
            check_method(method, rank, "v")
        assert str(err.value) == message
    check_method("lora_per_visit", 1, "v")
    with pytest.raises(UserError, match=r"^retrofit\.lora_rank:"):
        prepare_retrofit(llama_dir, None, method="lora", lora_rank=0)
    model, _ = prepare_retrofit(llama_dir, None, method="lora")
    with pytest.raises(UserError, match="already has LoRA"):
        add_lora(model)


def _token_set(path, n_tokens=600, seed=0):
    from vld.data.tokens import write_token_set

    rng = np.random.default_rng(seed)
    stream = rng.integers(0, 128, size=n_tokens)
    write_token_set(path, stream, np.array([0, n_tokens]), 128, {"generator": "test"})
    return path


def _train_cfg(**overrides):
    from vld.train.config import TrainConfig

    values = dict(max_steps=1, global_batch_size=2, micro_batch_size=2, seq_len=16, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def test_one_lora_step_through_the_trainer_then_load_and_export(llama_dir, tmp_path):
    from vld.retrofit.export import export_hf

    train_dir = _token_set(tmp_path / "tokens")
    out = tmp_path / "variant"
    result = retrofit_and_finetune(
        str(llama_dir), {"pattern": "cycle", "k": 1}, "lora", 4, str(train_dir), _train_cfg(), out
    )
    assert result["steps"] == 1 and np.isfinite(result["final_loss"])
    assert result["effective_depth"] == 8 and result["trainable_params"] == N_LAYERS * PER_LAYER
    assert (out / "metrics.json").is_file() and (out / "model" / "retrofit.json").is_file()

    model, meta = load_retrofit(out)
    assert meta["schedule"] == [0, 1, 2, 3] * 2 and meta["params"] == result["params"]
    assert model.effective_depth == 8 and not lora_modules(model)
    source = transformers.LlamaForCausalLM.from_pretrained(str(llama_dir), local_files_only=True)
    trained_q = model.hf.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(trained_q, source.model.layers[0].self_attn.q_proj.weight)  # the step merged in
    assert torch.equal(model.hf.model.embed_tokens.weight, source.model.embed_tokens.weight)  # frozen
    assert model.generate([[1, 2, 3], [4]], 5) == model.generate([[1, 2, 3], [4]], 5, use_cache=False)

    # Re-running the variant resumes from its last checkpoint: same model, no extra step.
    again = retrofit_and_finetune(
        str(llama_dir), {"pattern": "cycle", "k": 1}, "lora", 4, str(train_dir), _train_cfg(), out
    )
    assert again["steps"] == 1 and again["resumed_from_step"] == 1
    with torch.no_grad():
        assert torch.equal(load_retrofit(out)[0](tokens()), model(tokens()))

    exported = export_hf(out, tmp_path / "export")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(exported), local_files_only=True).eval()
    assert hf.config.num_hidden_layers == 8
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens()).logits, model(tokens()), rtol=0, atol=1e-5)


def test_one_full_step_on_a_vld_checkpoint_then_identity_base_row(vld_checkpoint, tmp_path, monkeypatch):
    from vld.model import load_model
    from vld.retrofit import sources

    inspected = []
    inspect = sources.inspect_source
    monkeypatch.setattr(sources, "inspect_source", lambda *args: inspected.append(args) or inspect(*args))
    train_dir = _token_set(tmp_path / "tokens")
    cycle = retrofit_and_finetune(
        str(vld_checkpoint), {"pattern": "cycle", "k": 1}, "full", 4, str(train_dir), _train_cfg(), tmp_path / "cycle"
    )
    base = retrofit_and_finetune(
        str(vld_checkpoint), {"pattern": "base"}, "full", 4, str(train_dir), _train_cfg(), tmp_path / "base"
    )
    assert cycle["steps"] == base["steps"] == 1
    assert len(inspected) == 2  # the source checkpoint is read once per variant
    assert cycle["params"] == base["params"] and cycle["effective_depth"] == 6 and base["effective_depth"] == 3
    # The saved model is an ordinary vld checkpoint with the retrofit schedule.
    saved = load_model(tmp_path / "cycle" / "model" / "model.pt")
    assert saved.schedule == (0, 1, 2, 0, 1, 2)
    model, meta = load_retrofit(tmp_path / "cycle")
    assert meta["source_kind"] == "vld" and meta["method"] == "full"
    original = load_model(vld_checkpoint)
    assert not torch.equal(model.layers[0].attn.qkv.weight, original.layers[0].attn.qkv.weight)


def test_finetune_validates_before_training(llama_dir, tmp_path):
    train_dir = _token_set(tmp_path / "tokens")
    with pytest.raises(UserError, match=r"^retrofit\.schedule\.order:"):
        retrofit_and_finetune(str(llama_dir), {"order": [0, 9]}, "lora", 4, str(train_dir), _train_cfg(), tmp_path / "o")
    with pytest.raises(UserError, match=r"^retrofit\.method:"):
        retrofit_and_finetune(str(llama_dir), None, "adapter", 4, str(train_dir), _train_cfg(), tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("source", ["llama_dir", "vld_checkpoint"])
def test_per_visit_adapters_under_activation_checkpointing_give_the_same_gradients(request, source):
    """Recomputation in backward must run each visit with its own adapter again."""
    grads = []
    for enabled in (False, True):
        torch.manual_seed(enabled)  # the adapters' init must not depend on the global RNG
        model, _ = prepare_retrofit(
            request.getfixturevalue(source), {"pattern": "cycle", "k": 1}, method="lora_per_visit",
            backend=Backend(activation_checkpointing=enabled),
        )
        randomize_lora_b(model)
        model.train()
        layers = model.hf.model.layers if source == "llama_dir" else model.layers
        calls = []  # one per base-layer call (pre-hook: recomputation may stop a layer early)
        for layer in layers:
            layer.register_forward_pre_hook(lambda module, args: calls.append(module))
        model(tokens()).logsumexp(-1).mean().backward()
        assert len(calls) == (2 if enabled else 1) * model.effective_depth  # checkpointing recomputed each visit
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-6)


def test_a_vld_output_directory_is_a_vld_source(vld_checkpoint):
    # The pretraining stage's directory holds model.pt beside a config.json of vld's own.
    (vld_checkpoint.parent / "config.json").write_text('{"model": "vld"}')
    model, info = prepare_retrofit(vld_checkpoint.parent, {"pattern": "cycle", "k": 1})
    assert info["source_kind"] == "vld" and model.schedule == (0, 1, 2, 0, 1, 2)


def test_an_inspected_source_is_not_inspected_again(vld_checkpoint, monkeypatch):
    from vld.retrofit import sources

    info = sources.inspect_source(vld_checkpoint)

    def refuse(*args):
        raise AssertionError("inspected twice")

    monkeypatch.setattr(sources, "inspect_source", refuse)
    model, meta = prepare_retrofit(info, {"pattern": "cycle", "k": 1}, method="lora")
    assert meta["source"] == str(vld_checkpoint) and model.schedule == (0, 1, 2, 0, 1, 2)
