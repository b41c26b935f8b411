"""Map a VLD model to Hugging Face names (GPT2LMHeadModel / LlamaForCausalLM).

A model with a non-identity schedule is unrolled first (one weight copy per virtual layer),
since a Hugging Face model has no notion of tied layers. Each block kind with a Hugging Face
equivalent has its mapping in HF_MAPPINGS.
"""

from __future__ import annotations

import torch

from vld.errors import fail


def hf_state_dict(model) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict for transformers' GPT2Config / LlamaConfig, state dict with HF names)."""
    from vld.model.transformer import VLDTransformer

    if type(model).step is not VLDTransformer.step:
        fail("export", f"{type(model).__name__} runs a step of its own, which a Hugging Face model cannot express")
    if model.config.block not in HF_MAPPINGS:
        fail("export", f"block kind {model.config.block!r} has no Hugging Face equivalent (known: {', '.join(HF_MAPPINGS)})")
    if tuple(model.schedule) != tuple(range(model.config.n_layer)):
        model = model.unrolled()
    own = {name: value.detach().clone() for name, value in model.state_dict().items()}
    return HF_MAPPINGS[model.config.block][0](model.config, own)


def _gpt2(config, own: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    state: dict[str, torch.Tensor] = {}
    hf_config = {
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len,
        "n_embd": config.d_model,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.ff_dim,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
        # GPT-2's defaults (50256) lie outside a small vocabulary; an export sets its own.
        "bos_token_id": None,
        "eos_token_id": None,
    }
    state["transformer.wte.weight"] = own["tok_emb.weight"]
    state["transformer.wpe.weight"] = own["pos_emb.weight"]
    # GPT-2's Conv1D stores weights as [in, out]: transpose our Linear [out, in].
    for i in range(config.n_layer):
        src, dst = f"layers.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            state[f"{dst}{theirs}.weight"] = own[f"{src}{ours}.weight"]
            state[f"{dst}{theirs}.bias"] = own[f"{src}{ours}.bias"]
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            state[f"{dst}{theirs}.weight"] = own[f"{src}{ours}.weight"].t().contiguous()
            state[f"{dst}{theirs}.bias"] = own[f"{src}{ours}.bias"]
    state["transformer.ln_f.weight"] = own["norm_f.weight"]
    state["transformer.ln_f.bias"] = own["norm_f.bias"]
    state["lm_head.weight"] = own["lm_head.weight"]
    return hf_config, state


def _llama(config, own: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    state: dict[str, torch.Tensor] = {}
    d = config.d_model
    hf_config = {
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": d,
        "intermediate_size": config.ff_dim,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_theta)},
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": config.dropout,
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
    }
    state["model.embed_tokens.weight"] = own["tok_emb.weight"]
    for i in range(config.n_layer):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        state[f"{dst}input_layernorm.weight"] = own[f"{src}norm1.weight"]
        state[f"{dst}post_attention_layernorm.weight"] = own[f"{src}norm2.weight"]
        q, k, v = own[f"{src}attn.qkv.weight"].split(d, dim=0)
        state[f"{dst}self_attn.q_proj.weight"] = q.contiguous()
        state[f"{dst}self_attn.k_proj.weight"] = k.contiguous()
        state[f"{dst}self_attn.v_proj.weight"] = v.contiguous()
        state[f"{dst}self_attn.o_proj.weight"] = own[f"{src}attn.proj.weight"]
        gate, up = own[f"{src}mlp.gate_up.weight"].split(config.ff_dim, dim=0)
        state[f"{dst}mlp.gate_proj.weight"] = gate.contiguous()
        state[f"{dst}mlp.up_proj.weight"] = up.contiguous()
        state[f"{dst}mlp.down_proj.weight"] = own[f"{src}mlp.proj.weight"]
    state["model.norm.weight"] = own["norm_f.weight"]
    state["lm_head.weight"] = own["lm_head.weight"]
    return hf_config, state


# block kind -> (its mapping, transformers' config class, transformers' model class)
HF_MAPPINGS = {
    "gpt2": (_gpt2, "GPT2Config", "GPT2LMHeadModel"),
    "llama": (_llama, "LlamaConfig", "LlamaForCausalLM"),
}


def to_hf_model(model):
    """Build the transformers model (GPT2LMHeadModel or LlamaForCausalLM) holding these weights."""
    import transformers  # heavy and optional: only when exporting

    hf_config, state = hf_state_dict(model)
    hf_config.pop("model_type")
    _, config_name, model_name = HF_MAPPINGS[model.config.block]
    config_cls, model_cls = getattr(transformers, config_name), getattr(transformers, model_name)
    hf_model = model_cls(config_cls(**hf_config))
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not (hf_config["tie_word_embeddings"] and name == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"weight names do not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if hf_config["tie_word_embeddings"]:
        hf_model.tie_weights()
    return hf_model.to(next(iter(state.values())).dtype).eval()
