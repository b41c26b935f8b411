"""What a model costs: parameters, depth and FLOPs per token (from the model's own counters)."""

from __future__ import annotations


def compute_profile(model, seq_len: int) -> dict:
    """Parameters, depth and FLOPs per token of `model` at context `seq_len`.

    Returns (JSON-serialisable):
      params, params_no_embed   parameter counts with and without embeddings (tied weights once)
      base_layers               distinct layers L (config.n_layer)
      effective_depth           virtual layers run per token (len(schedule))
      vld                       effective_depth - base_layers (the paper's virtual logical depth)
      schedule                  base layer index at each virtual layer (0-based)
      seq_len
      flops_per_token           forward FLOPs per token at seq_len
      flops_per_token_train     forward + backward FLOPs per token at seq_len
    """
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        from vld.errors import fail

        fail("seq_len", f"must be a positive integer, got {seq_len!r}")
    schedule = [int(i) for i in model.schedule]
    base_layers = int(model.config.n_layer)
    effective_depth = int(model.effective_depth)
    return {
        "params": int(model.parameter_count(embeddings=True)),
        "params_no_embed": int(model.parameter_count(embeddings=False)),
        "base_layers": base_layers,
        "effective_depth": effective_depth,
        "vld": effective_depth - base_layers,
        "schedule": schedule,
        "seq_len": seq_len,
        "flops_per_token": int(model.flops_per_token(seq_len=seq_len, training=False)),
        "flops_per_token_train": int(model.flops_per_token(seq_len=seq_len, training=True)),
    }
