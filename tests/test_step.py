"""The step interface (vld.model.step): every consumer of a schedule runs the model's own
prepare / step / readout, so each gives exactly the logits of the one step loop; a block kind
and a step the code has never seen work end to end, each added in this file alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vld.errors import UserError
from vld.eval import depth_use as du
from vld.eval.depth import layer_usage
from vld.model import (BLOCK_KINDS, Backend, Block, BlockKind, ModelConfig, ScheduleSpec, VLDTransformer,
                       hf_state_dict, register_block, resolve_schedule)
from vld.model.step import run_visits

N_LAYER, VOCAB = 4, 37
SCHEDULES = {
    "base": ScheduleSpec("base"),
    **{f"{name}-k{k}": ScheduleSpec(name, k) for name in ("sequence", "cycle", "inverse_cycle") for k in (1, 2)},
    "subset": ScheduleSpec("cycle", 1, layers="1..2"),
    "order": ScheduleSpec(order=[3, 0, 1, 1, 2]),
}


def model_for(block, name, seed=0, cls=VLDTransformer, **extra):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=VOCAB, n_layer=N_LAYER, d_model=16, n_head=2, max_seq_len=24, block=block,
                         schedule=resolve_schedule(SCHEDULES[name], N_LAYER), tie_embeddings=block == "gpt2")
    return cls(config, **extra)


def tokens(batch=3, seq=11, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def step_loop(model, x, attention_mask=None):
    """The one step loop, written out: prepare, every visit's step in order, readout."""
    inputs = model.prepare(x, attention_mask=attention_mask)
    state = inputs.embedding
    for visit in range(len(model.schedule)):
        state = model.step(state, visit, inputs)
    return model.readout(state)


def sequence_loss(logits, x):
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
    return loss.view(x.shape[0], -1).mean(-1)


# -- every consumer equals the step loop ---------------------------------------------------

@pytest.mark.parametrize("block", ["gpt2", "llama"])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_consumer_gives_the_logits_of_the_step_loop(block, name):
    model = model_for(block, name).eval()
    x = tokens()
    mask = torch.ones_like(x)
    mask[0, :4] = 0  # a left-padded row
    depth = model.effective_depth
    with torch.no_grad():
        for attention_mask in (None, mask):
            expected = step_loop(model, x, attention_mask)
            assert torch.equal(model(x, attention_mask=attention_mask), expected)
            exits = du.early_exit_logits(model, x, attention_mask)
            assert len(exits) == depth + 1 and torch.equal(exits[-1], expected)
        expected = step_loop(model, x)
        assert torch.equal(model.unrolled()(x), expected)
        # Every ablation re-runs the step from an intact state h_i: with nothing changed, that
        # is the model itself, from every i.
        inputs = model.prepare(x)
        _, hidden = model(x, return_hidden=True)
        for start in range(depth + 1):
            resumed = run_visits(model, inputs, hidden[start], range(start, depth))
            assert torch.equal(model.readout(resumed), expected), start
    # The ablations are the step loop with the visits changed, bit for bit.
    visits = list(range(depth))

    def changed(order, replace=None):
        inputs = model.prepare(x)
        states = [inputs.embedding]
        for visit in visits:  # the intact states, for the revisit updates
            states.append(model.step(states[-1], visit, inputs))
        state = inputs.embedding
        for position, visit in enumerate(order):
            if replace is not None and position in replace:
                f = replace[position]
                state = state + (states[f + 1] - states[f])
            else:
                state = model.step(state, visit, inputs)
        return sequence_loss(model.readout(state), x).double()

    result = du.depth_use(model, [x], sequence_loss, early_exit=True)
    assert result["intact"]["loss"]["mean"] == float(sequence_loss(expected, x).double().mean())
    for ablation in result["ablations"]:
        v = ablation["virtual_layers"]
        with torch.no_grad():
            if ablation["kind"] == "skip":
                value = changed(visits[:v[0]] + visits[v[0] + 1:])
            elif ablation["kind"] == "swap":
                order = list(visits)
                order[v[0]], order[v[1]] = order[v[1]], order[v[0]]
                value = changed(order)
            else:
                value = changed(visits, {i: ablation["first_visit"] for i in v})
        assert ablation["value"]["loss"] == float(value.mean()), ablation["label"]
    assert result["early_exit"][-1]["value"] == result["intact"]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_retrofitted_llama_gives_the_logits_of_its_step_loop(name):
    transformers = pytest.importorskip("transformers")
    from vld.retrofit.hf_llama import RetrofitLlama

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=N_LAYER,
                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=VOCAB,
                                      max_position_embeddings=32)
    hf = transformers.LlamaForCausalLM(config).eval()
    model = RetrofitLlama(hf, resolve_schedule(SCHEDULES[name], N_LAYER)).eval()
    x = tokens()
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    with torch.no_grad():
        for attention_mask in (None, mask):
            assert torch.equal(model(x, attention_mask=attention_mask), step_loop(model, x, attention_mask))
    # the depth probe and the depth-use ablations run it as they run vld's own model
    usage = layer_usage(model, tokens(seq=12), batch_size=2)
    assert [u["base_layer"] for u in usage] == list(model.schedule)
    result = du.depth_use(model, [x], sequence_loss, kinds=("skip",))
    with torch.no_grad():
        assert result["intact"]["loss"]["mean"] == float(sequence_loss(model(x), x).double().mean())


def test_flops_are_the_sum_over_visits():
    model = model_for("gpt2", "order")
    per_visit = [2 * sum(p.numel() for p in model.layers[base].parameters()) + 2 * 16 * (9 + 1)
                 for base in model.schedule]
    assert [model.visit_flops(v, 9) for v in range(model.effective_depth)] == per_visit
    assert model.flops_per_token(9) == sum(per_visit) + 2 * 16 * VOCAB


# -- a block kind the code has never seen ----------------------------------------------------

class ReluMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.ff_dim)
        self.proj = nn.Linear(config.ff_dim, config.d_model)

    def forward(self, x):
        return self.proj(torch.relu(self.fc(x)))


class ReluBlock(Block):
    norm_class, mlp_class, bias = nn.LayerNorm, ReluMLP, True


@pytest.fixture
def relu_kind():
    kind = register_block(BlockKind("relu", ReluBlock, positions="rope", ff_dim=lambda d_model: 2 * d_model))
    yield kind
    del BLOCK_KINDS[kind.name]


def test_a_registered_block_kind_works_end_to_end(relu_kind, tmp_path):
    from vld.model import load_model, save_model

    model = model_for("relu", "cycle-k1", backend=Backend(activation_checkpointing=True))
    layer = model.layers[0]
    assert isinstance(layer, ReluBlock) and isinstance(model.norm_f, nn.LayerNorm)
    assert layer.mlp.fc.weight.shape == (32, 16) and layer.attn.qkv.bias is not None
    assert model.pos_emb is None and model.rope_cos is not None  # its positions are rotary
    x = tokens()
    # Written out by hand: embeddings, each visit's block (attention with RoPE, then the ReLU MLP).
    with torch.no_grad():
        h = model.tok_emb(x)
        rope = (model.rope_cos[:x.shape[1]][None, None], model.rope_sin[:x.shape[1]][None, None])
        for base in model.schedule:
            block = model.layers[base]
            h = h + block.attn(block.norm1(h), rope, None, True, None, 0)
            h = h + block.mlp.proj(torch.relu(block.mlp.fc(block.norm2(h))))
        expected = model.lm_head(model.norm_f(h))
        assert torch.equal(model.eval()(x), expected)
    model.train()
    sequence_loss(model(x), x).mean().backward()  # through activation checkpointing
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.unrolled()(x), model(x))
    assert model.generate([[1, 2, 3], [4]], 5) == model.generate([[1, 2, 3], [4]], 5, use_cache=False)
    save_model(model, tmp_path / "relu.pt")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "relu.pt").eval()(x), model(x))
    with pytest.raises(UserError, match=r"^export: block kind 'relu' has no Hugging Face equivalent"):
        hf_state_dict(model)
    with pytest.raises(UserError, match=r"^model\.block: unknown block 'mamba' \(known: gpt2, llama, relu\)$"):
        ModelConfig(block="mamba").validate()
    with pytest.raises(ValueError, match="registered already"):
        register_block(relu_kind)


# -- a step that injects the input embedding at chosen visits ----------------------------------

class InjectingVLD(VLDTransformer):
    """At each visit in `inject`, the prepared input embedding is added to the state before
    the layer runs (the form of a recurrent core with input injection)."""

    def __init__(self, config, backend=None, inject=()):
        super().__init__(config, backend)
        self.inject = frozenset(inject)

    def step(self, state, visit, inputs):
        if visit in self.inject:
            state = state + inputs.embedding
        return super().step(state, visit, inputs)


def hand_injected(model, x, inject, skip=None):
    """The injecting model written out: gpt2 embeddings, then each virtual layer."""
    e = model.tok_emb(x) + model.pos_emb(torch.arange(x.shape[1]))[None]
    h = e
    for visit, layer in enumerate(model.virtual_layers()):
        if visit == skip:
            continue
        if visit in inject:
            h = h + e
        h = layer(h, None, None, True, None, visit)
    return model.lm_head(model.norm_f(h))


def test_an_injecting_step_at_no_visit_is_the_plain_model_bit_for_bit():
    plain = model_for("gpt2", "cycle-k2")
    injecting = model_for("gpt2", "cycle-k2", cls=InjectingVLD, inject=())
    x = tokens()
    for model in (plain, injecting):
        sequence_loss(model(x), x).mean().backward()
    with torch.no_grad():
        assert torch.equal(injecting(x), plain(x))
    for (name, a), (_, b) in zip(plain.named_parameters(), injecting.named_parameters()):
        assert torch.equal(a.grad, b.grad), name


def test_an_injecting_step_works_end_to_end():
    inject = {0, 4, 8}
    model = model_for("gpt2", "cycle-k2", cls=InjectingVLD, inject=inject).eval()
    x = tokens()
    with torch.no_grad():
        expected = hand_injected(model, x, inject)
        assert torch.equal(model(x), expected)
        assert not torch.equal(model(x), model_for("gpt2", "cycle-k2")(x))  # injection matters
        assert torch.equal(du.early_exit_logits(model, x)[-1], expected)
        unrolled = model.unrolled()  # the step comes along with the class
        assert isinstance(unrolled, InjectingVLD) and torch.equal(unrolled(x), expected)
    result = du.depth_use(model, [x], sequence_loss, kinds=("skip",), early_exit=False)
    with torch.no_grad():
        for i in range(model.effective_depth):
            skipped = sequence_loss(hand_injected(model, x, inject, skip=i), x).double().mean()
            assert du_value(result, f"skip {i}") == float(skipped)
    prompts = [[1, 2, 3, 4], [5]]
    assert model.generate(prompts, 6) == model.generate(prompts, 6, use_cache=False)
    # forward and one backward, with and without recomputing each visit
    grads = []
    for checkpointing in (False, True):
        model.set_backend(Backend(activation_checkpointing=checkpointing))
        model.train().zero_grad()
        sequence_loss(model(x), x).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, recomputed in zip(*grads):
        assert torch.isfinite(plain).all() and torch.equal(plain, recomputed)
    with pytest.raises(UserError, match=r"^export: InjectingVLD runs a step of its own"):
        hf_state_dict(model)


def du_value(result, label):
    return next(a["value"]["loss"] for a in result["ablations"] if a["label"] == label)


def test_per_visit_adapters_are_the_models_own_state():
    model = model_for("gpt2", "cycle-k1")
    assert model.visit_adapters is None
    names = [f"visit_{v}" for v in range(model.effective_depth)]
    model.set_visit_adapters(names)
    assert model.visit_adapters == names
    model.set_schedule(list(reversed(model.schedule)))  # the same depth: each visit keeps its adapter
    with pytest.raises(UserError, match="^schedule: cannot change the depth of a model with per-visit adapters$"):
        model.set_schedule([0, 1, 2, 3])
    with pytest.raises(ValueError, match="7 per-visit adapters for 8 virtual layers"):
        model.set_visit_adapters(names[:-1])
    model.set_visit_adapters(None)
    model.set_schedule([0, 1, 2, 3])
