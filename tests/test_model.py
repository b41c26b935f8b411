"""The VLD transformer: exact tying, unrolling, HF numerics, KV cache, accounting, errors."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vld.errors import UserError
from vld.model.attention import causal_attention
from vld.model.linear import linear as vld_linear
from vld.model import (PRESETS, Backend, ModelConfig, ScheduleSpec, VLDTransformer, eval_mode, hf_state_dict, load_model,
                       resolve_schedule, save_model)

BLOCKS = ["gpt2", "llama"]
MIDDLE_CYCLE = {"middle_cycle": "0, cycle(1..L-2, k+1), L-1"}
SCHEDULES = {
    "base": ScheduleSpec("base"),
    "sequence": ScheduleSpec("sequence", 1),
    "cycle": ScheduleSpec("cycle", 2),
    "inverse_cycle": ScheduleSpec("inverse_cycle", 1),
    "subset": ScheduleSpec("cycle", 1, layers="2..3"),
    "middle_cycle": ScheduleSpec("middle_cycle", 1),
    "order": ScheduleSpec(order=[3, 0, 1, 1, 2]),
}


def config(block="gpt2", schedule=None, **overrides):
    values = dict(vocab_size=61, n_layer=4, d_model=32, n_head=4, max_seq_len=48, block=block,
                  schedule=schedule, tie_embeddings=block == "gpt2")
    values.update(overrides)
    return ModelConfig(**values)


def model_for(block, name, seed=0, backend=None, **overrides):
    torch.manual_seed(seed)
    order = resolve_schedule(SCHEDULES[name], 4, MIDDLE_CYCLE)
    return VLDTransformer(config(block, order, **overrides), backend=backend)


def tokens(batch=3, seq=17, vocab=61, seed=1):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# -- a plain reference forward, written without any schedule machinery ---------------------

def plain_forward(model, x, linear=F.linear):
    """`linear`: the GEMM dispatch the model's layers use (this reference is about the schedule)."""
    cfg = model.config
    h = model.tok_emb.weight[x]
    seq = x.shape[1]
    positions = torch.arange(seq)
    if cfg.block == "gpt2":
        h = h + model.pos_emb.weight[positions].unsqueeze(0)
        norm = lambda t, m: F.layer_norm(t, (cfg.d_model,), m.weight, m.bias, cfg.norm_eps)  # noqa: E731
    else:
        def norm(t, m):
            t32 = t.float()
            return m.weight * (t32 * torch.rsqrt(t32.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)).to(t.dtype)
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim))
        ang = torch.outer(positions.float(), inv)
        ang = torch.cat((ang, ang), -1)
        cos, sin = ang.cos()[None, None], ang.sin()[None, None]

    def rot(t):
        half = t.shape[-1] // 2
        return torch.cat((-t[..., half:], t[..., :half]), -1)

    batch = x.shape[0]
    for layer in model.layers:  # each base layer once, in order
        a = norm(h, layer.norm1)
        qkv = linear(a, layer.attn.qkv.weight, layer.attn.qkv.bias)
        q, k, v = qkv.view(batch, seq, 3, cfg.n_head, cfg.head_dim).permute(2, 0, 3, 1, 4)
        if cfg.block == "llama":
            q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        att = causal_attention(torch.stack((q, k, v)))  # the model's own attention kernel: this reference is about the schedule
        h = h + linear(att, layer.attn.proj.weight, layer.attn.proj.bias)
        m = norm(h, layer.norm2)
        if cfg.block == "gpt2":
            h = h + linear(F.gelu(linear(m, layer.mlp.fc.weight, layer.mlp.fc.bias), approximate="tanh"), layer.mlp.proj.weight, layer.mlp.proj.bias)
        else:
            gate, up = linear(m, layer.mlp.gate_up.weight).split(cfg.ff_dim, -1)
            h = h + linear(F.silu(gate) * up, layer.mlp.proj.weight)
    return linear(norm(h, model.norm_f), model.lm_head.weight)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("cpu_gemm", ["blas", "onednn"])
def test_identity_schedule_bit_identical_to_plain_model(block, cpu_gemm):
    model = model_for(block, "base", backend=Backend(cpu_gemm=cpu_gemm), d_model=256).eval()  # wide enough for the kernels to differ
    x = tokens()
    with torch.no_grad():
        assert torch.equal(model(x), plain_forward(model, x, lambda *a: vld_linear(*a, cpu_gemm=cpu_gemm)))


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_vld_matches_unrolled(block, name):
    model = model_for(block, name).eval()
    unrolled = model.unrolled()
    assert unrolled.config.n_layer == model.effective_depth and unrolled.schedule == tuple(range(model.effective_depth))
    assert unrolled.parameter_count(embeddings=False) > model.parameter_count(embeddings=False) or name == "base"
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(x), unrolled(x), rtol=0, atol=1e-6)
        logits, hidden = model(x, return_hidden=True)
    assert len(hidden) == model.effective_depth + 1


@pytest.mark.parametrize("block", BLOCKS)
def test_shared_gradient_is_sum_of_unrolled_copies(block):
    model = model_for(block, "inverse_cycle", dropout=0.0).double()
    unrolled = model.unrolled()
    x = tokens()
    for m in (model, unrolled):
        F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    for index, layer in enumerate(model.layers):
        slots = [slot for slot, base in enumerate(model.schedule) if base == index]
        assert len(slots) == 2
        for name, param in layer.named_parameters():
            total = sum(unrolled.layers[slot].get_parameter(name).grad for slot in slots)
            torch.testing.assert_close(param.grad, total, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.tok_emb.weight.grad, unrolled.tok_emb.weight.grad, rtol=1e-10, atol=1e-12)


def count_block_calls(model):
    """A list that grows by one per call of any base layer (forward, or recomputation in backward).
    A pre-hook: checkpoint's recomputation stops a layer early once it has what backward needs."""
    calls = []
    for layer in model.layers:
        layer.register_forward_pre_hook(lambda module, args: calls.append(module))
    return calls


@pytest.mark.parametrize("block", BLOCKS)
def test_activation_checkpointing_recomputes_each_visit_and_gives_same_gradients(block):
    plain = model_for(block, "cycle")
    ckpt = model_for(block, "cycle", backend=Backend(activation_checkpointing=True))
    depth = ckpt.effective_depth
    x = tokens()
    for m, calls_in_backward in ((plain, 0), (ckpt, depth)):
        calls = count_block_calls(m)
        loss = F.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        assert len(calls) == depth  # the forward visits
        loss.backward()
        # checkpointing kept no activations: backward ran every visit again
        assert len(calls) == depth + calls_in_backward
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    # the backend applies to training only, and can be switched off later
    calls = count_block_calls(ckpt)
    with torch.no_grad():
        ckpt(x)
    ckpt.set_backend(Backend())
    ckpt(x).sum().backward()
    assert len(calls) == 2 * depth


def test_parameter_count_identical_across_schedules():
    counts = {name: (model_for("gpt2", name).parameter_count(), model_for("gpt2", name).parameter_count(False)) for name in SCHEDULES}
    assert len(set(counts.values())) == 1
    cfg = config("gpt2")
    d, ff, V, T = cfg.d_model, cfg.ff_dim, cfg.vocab_size, cfg.max_seq_len
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d)
    assert counts["base"] == (V * d + T * d + 4 * block + 2 * d, 4 * block + 2 * d)
    llama = model_for("llama", "cycle")
    lblock = 2 * d + 4 * d * d + 3 * d * llama.config.ff_dim
    assert llama.parameter_count() == 2 * V * d + 4 * lblock + d  # untied head counted
    assert llama.parameter_count(embeddings=False) == 4 * lblock + d


def test_flops_grow_with_effective_depth():
    base = model_for("gpt2", "base")
    cyc = model_for("gpt2", "cycle")  # effective depth 12 = 3x
    cfg = base.config
    block = sum(p.numel() for p in base.layers[0].parameters())
    head = 2 * cfg.d_model * cfg.vocab_size
    per_layer = 2 * block + 2 * cfg.d_model * (16 + 1)
    assert base.flops_per_token(seq_len=16) == 4 * per_layer + head
    assert cyc.flops_per_token(seq_len=16) == 12 * per_layer + head
    assert cyc.flops_per_token(seq_len=16, training=True) == 3 * (12 * per_layer + head)


def shared_storage_ok(model):
    by_base = {}
    for slot, (base, layer) in enumerate(zip(model.schedule, model.virtual_layers())):
        ptrs = tuple(p.data_ptr() for p in layer.parameters())
        assert by_base.setdefault(base, ptrs) == ptrs
    assert ptrs == tuple(p.data_ptr() for p in model.layers[model.schedule[-1]].parameters())
    if model.config.tie_embeddings:
        assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    return True


@pytest.mark.parametrize("block", BLOCKS)
def test_weight_sharing_survives_load_deepcopy_and_save(block, tmp_path):
    model = model_for(block, "cycle", seed=3).eval()
    x = tokens()
    with torch.no_grad():
        reference = model(x)
    assert shared_storage_ok(model)

    other = model_for(block, "cycle", seed=4).eval()
    other.load_state_dict(model.state_dict())
    assert shared_storage_ok(other)
    with torch.no_grad():
        assert torch.equal(other(x), reference)
    # base layers are stored once: no per-visit copies in the state dict
    assert sorted({k.split(".")[1] for k in model.state_dict() if k.startswith("layers.")}) == ["0", "1", "2", "3"]

    clone = copy.deepcopy(model)
    assert shared_storage_ok(clone)
    assert clone.layers[0].attn.qkv.weight.data_ptr() != model.layers[0].attn.qkv.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(clone(x), reference)
        clone.layers[1].attn.qkv.weight.add_(1.0)  # one edit reaches every visit of layer 1
    assert torch.equal(clone.virtual_layers()[5].attn.qkv.weight, clone.layers[1].attn.qkv.weight)

    path = tmp_path / "model.pt"
    save_model(model, path)
    loaded = load_model(path).eval()
    assert loaded.schedule == model.schedule and loaded.config == model.config
    assert shared_storage_ok(loaded)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference)


def test_set_schedule_keeps_parameters():
    model = model_for("gpt2", "base")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_schedule([0, 1, 2, 3, 3, 2, 1, 0])
    assert model.effective_depth == 8 and model.config.schedule == [0, 1, 2, 3, 3, 2, 1, 0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="^schedule: base layer 3 is never visited$"):
        model.set_schedule([0, 1, 2])


@pytest.mark.parametrize("block", BLOCKS)
def test_unrolled_loads_into_hugging_face(block):
    transformers = pytest.importorskip("transformers")
    model = model_for(block, "inverse_cycle").eval()
    hf_config, state = hf_state_dict(model)
    kind = hf_config.pop("model_type")
    assert kind == block
    if block == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    hf.eval()
    assert hf.config.num_hidden_layers == model.effective_depth
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=0, atol=2e-5)


PROMPTS = [[5, 9, 2, 7, 1, 3, 8], [4], [11, 12, 13]]


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_cached_generation_equals_recompute(block, name):
    # float64 and a wide init: argmax ties that rounding could flip are practically impossible
    model = model_for(block, name, init_std=0.3).double()
    cached = model.generate(PROMPTS, 8, use_cache=True)
    assert cached == model.generate(PROMPTS, 8, use_cache=False)
    assert [len(c) for c in cached] == [8, 8, 8]


@pytest.mark.parametrize("block", BLOCKS)
def test_left_padding_does_not_change_a_row(block):
    model = model_for(block, "inverse_cycle", init_std=0.3).double()
    batched = model.generate(PROMPTS, 8)
    for prompt, row in zip(PROMPTS, batched):
        assert model.generate([prompt], 8) == [row]


def test_generation_stops_after_eos_and_is_greedy():
    model = model_for("gpt2", "cycle", init_std=0.3).double()
    prompts = [[1, 2, 3], [7, 8]]
    free = model.generate(prompts, 10)
    eos = free[0][3]
    stopped = model.generate(prompts, 10, eos_id=eos)
    assert stopped[0] == free[0][: free[0].index(eos) + 1]
    row1 = free[1][: free[1].index(eos) + 1] if eos in free[1] else free[1]
    assert stopped[1] == row1
    # greedy: each token is the argmax of the full-sequence logits
    seq = torch.tensor([prompts[0] + free[0]])
    with torch.no_grad():
        expected = model(seq)[0, len(prompts[0]) - 1:-1].argmax(-1).tolist()
    assert expected == free[0]
    assert model.training  # restored


def test_generation_input_errors():
    model = model_for("gpt2", "base")
    with pytest.raises(UserError, match="^generate.max_new_tokens: prompt of 40 tokens \\+ 9 new exceeds max_seq_len 48$"):
        model.generate([[1] * 40], 9)
    with pytest.raises(UserError, match="^generate.prompts: needs at least one non-empty prompt$"):
        model.generate([[1], []], 2)


def test_cache_has_one_slot_per_virtual_layer():
    model = model_for("llama", "cycle")
    cache = model.new_cache(2, 10)
    assert cache.keys.shape == (12, 2, 4, 10, 8) and cache.length == 0
    with torch.no_grad():
        model(tokens(2, 6), cache=cache)
    assert cache.length == 6
    # visits of the same base layer see different inputs, so their slots differ
    assert not torch.equal(cache.keys[0, :, :, :6], cache.keys[4, :, :, :6])


@pytest.mark.parametrize("block", BLOCKS)
def test_chunked_prefill_through_cache_equals_full_forward(block):
    model = model_for(block, "inverse_cycle").double().eval()
    x = tokens(2, 12)
    cache = model.new_cache(2, 12)
    with torch.no_grad():
        full = model(x)
        parts = [model(x[:, a:b], cache=cache) for a, b in ((0, 6), (6, 11), (11, 12))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="KV cache holds 12 positions; 13 needed"):
        model(x[:, :1], cache=cache)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(n_head=5), "model.n_head: 5 heads do not divide d_model 32"),
        (dict(d_model=92, n_head=12), "model.n_head: 12 heads do not divide d_model 92"),
        (dict(block="mamba"), "model.block: unknown block 'mamba' (known: gpt2, llama)"),
        (dict(n_layer=0), "model.n_layer: must be a positive integer, got 0"),
        (dict(vocab_size=3.5), "model.vocab_size: must be a positive integer, got 3.5"),
        (dict(dropout=1.0), "model.dropout: must be in [0, 1), got 1.0"),
        (dict(norm_eps=0), "model.norm_eps: must be a positive number, got 0"),
        (dict(block="llama", d_model=36, n_head=4), "model.n_head: RoPE needs an even head dimension, got 9"),
        (dict(schedule=[0, 1, 2, 4]), "model.schedule: layer 4 out of range for 4 base layers"),
        (dict(schedule=[0, 1, 2]), "model.schedule: base layer 3 is never visited"),
        (dict(schedule=[]), "model.schedule: empty schedule"),
        (dict(tie_embeddings="yes"), "model.tie_embeddings: must be true or false, got 'yes'"),
    ],
)
def test_bad_config_one_line_errors(overrides, message):
    with pytest.raises(UserError) as err:
        VLDTransformer(config(**overrides))
    assert str(err.value) == message


def test_config_from_dict():
    cfg = ModelConfig.from_dict({"preset": "tiny", "vocab_size": 99, "n_layer": 3,
                                 "schedule": {"pattern": "middle_cycle", "k": 2}}, patterns=MIDDLE_CYCLE)
    assert cfg.vocab_size == 99 and cfg.d_model == 64 and cfg.schedule == [0, 1, 1, 1, 2]
    assert ModelConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    with pytest.raises(UserError, match=r"^variants\.a\.model\.widht: unknown key \(known: preset, "):
        ModelConfig.from_dict({"widht": 3}, where="variants.a.model")
    with pytest.raises(UserError, match=r"^m\.preset: unknown preset 'huge' \(known: igsm-4l, "):
        ModelConfig.from_dict({"preset": "huge"}, where="m")
    with pytest.raises(UserError, match=r"^m\.schedule\.k: must be >= 0, got -2$"):
        ModelConfig.from_dict({"schedule": {"pattern": "cycle", "k": -2}}, where="m")


def test_run_settings_are_a_backend_not_the_config(tmp_path):
    for key, value, spelling in (("cpu_gemm", "blas", "hardware.cpu_gemm"),
                                 ("activation_checkpointing", True, "<family>.train.activation_checkpointing")):
        with pytest.raises(UserError) as err:
            ModelConfig.from_dict({"preset": "tiny", key: value}, where="models.t")
        assert str(err.value) == (f"models.t.{key}: is a run setting, not part of the model: set {spelling} "
                                  f"(vld.model.Backend.{key})")
        assert key not in ModelConfig().to_dict()
    from vld.model.backend import machine_cpu_gemm

    assert Backend() == Backend.from_dict({}) == Backend(machine_cpu_gemm(), False)  # this CPU's library
    assert Backend.from_dict({"cpu_gemm": "blas", "activation_checkpointing": True}) == Backend("blas", True)
    for values, message in (
        ({"cpu_gemm": "mkl"}, "hardware.cpu_gemm: unknown CPU GEMM library 'mkl' (known: onednn, blas)"),
        ({"activation_checkpointing": "yes"}, "hardware.activation_checkpointing: must be true or false, got 'yes'"),
        ({"gemm": "blas"}, "hardware.gemm: unknown key (known: cpu_gemm, activation_checkpointing)"),
        (["blas"], "hardware: must be a mapping, got list"),
    ):
        with pytest.raises(UserError) as err:
            Backend.from_dict(values, where="hardware")
        assert str(err.value) == message
    with pytest.raises(UserError, match=r"^backend\.cpu_gemm: unknown CPU GEMM library 'mkl'"):
        Backend(cpu_gemm="mkl")
    # a checkpoint saved when the config still carried them loads, with the backend asked for
    model = model_for("gpt2", "cycle").eval()
    old = {"config": {**dataclasses.asdict(model.config), "cpu_gemm": "blas", "activation_checkpointing": True},
           "state_dict": model.state_dict()}
    torch.save(old, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt").eval()
    assert loaded.config == model.config and loaded.backend == Backend()
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert load_model(tmp_path / "old.pt", backend=Backend(cpu_gemm="blas")).lm_head.cpu_gemm == "blas"
    save_model(loaded, tmp_path / "new.pt")
    assert set(torch.load(tmp_path / "new.pt", weights_only=True)["config"]) == set(model.config.to_dict())


def test_settings_checks_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, vld.model, vld.model.backend, vld.retrofit.api, vld.retrofit.methods; "
            "vld.model.Backend.from_dict({'cpu_gemm': 'blas'}); vld.retrofit.api.check_method('lora', 4, 'v'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_eval_mode_restores_the_mode_also_on_error():
    model = model_for("gpt2", "base")
    for training in (True, False):
        model.train(training)
        with eval_mode(model) as inside:
            assert inside is model and not model.training and not model.layers[0].training
        assert model.training == training and model.layers[0].training == training
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert model.training


def test_presets_are_valid_and_protected():
    for name, cfg in PRESETS.items():
        cfg.validate(f"presets.{name}")
    PRESETS["tiny"].n_layer = 99
    assert PRESETS["tiny"].n_layer == 2


def test_load_model_errors(tmp_path):
    with pytest.raises(UserError, match="model file not found"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable vld model file"):
        load_model(bad)
