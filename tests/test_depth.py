"""Per-virtual-layer depth measurements: exact hand-made cases and the real model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vld.errors import UserError
from vld.eval.depth import hidden_state_usage, layer_usage, model_readout, probe_windows


def test_hand_made_states_known_norms_angles_and_cosines():
    # Token A: [1,0] -> [1,1] -> [0,1]: two unit updates at 45 degrees each, orthogonal updates.
    # Token B: [0,3] -> [0,3] -> [0,-3]: no update, then a half turn (update [0,-6]).
    hidden = [torch.tensor([[[1.0, 0.0], [0.0, 3.0]]]),
              torch.tensor([[[1.0, 1.0], [0.0, 3.0]]]),
              torch.tensor([[[0.0, 1.0], [0.0, -3.0]]])]
    targets = torch.tensor([[0, 1]])
    usage = hidden_state_usage(hidden, schedule=[5, 5], readout=lambda h: h, targets=targets)
    first, second = usage
    assert (first["virtual_layer"], first["base_layer"], first["visit"]) == (0, 5, 0)
    assert (second["virtual_layer"], second["base_layer"], second["visit"]) == (1, 5, 1)
    assert first["update_norm"] == pytest.approx(0.5, abs=1e-12)  # mean(1, 0)
    assert first["relative_update"] == pytest.approx(0.5, abs=1e-12)  # mean(1/1, 0/3)
    assert first["angle_deg"] == pytest.approx(22.5, abs=1e-9)  # mean(45, 0)
    # Token B's first update is zero: its cosine is undefined and left out of the mean.
    assert first["update_cosine_next"] == pytest.approx(0.0, abs=1e-12)
    assert second["update_norm"] == pytest.approx(3.5, abs=1e-12)  # mean(1, 6)
    assert second["relative_update"] == pytest.approx((1 / math.sqrt(2) + 2) / 2, abs=1e-12)
    assert second["angle_deg"] == pytest.approx(112.5, abs=1e-6)  # mean(45, 180)
    assert second["update_cosine_next"] is None
    # Logit lens with the identity readout: logits are the states themselves.
    ce = lambda logits, target: float(F.cross_entropy(torch.tensor([logits]), torch.tensor([target])))
    assert first["logit_lens_loss"] == pytest.approx((ce([1.0, 1.0], 0) + ce([0.0, 3.0], 1)) / 2, abs=1e-6)
    assert second["logit_lens_loss"] == pytest.approx((ce([0.0, 1.0], 0) + ce([0.0, -3.0], 1)) / 2, abs=1e-6)


def test_without_readout_the_logit_lens_is_none_and_schedule_must_match():
    hidden = [torch.ones(1, 2, 3), 2 * torch.ones(1, 2, 3)]
    (only,) = hidden_state_usage(hidden)
    assert only["logit_lens_loss"] is None and only["angle_deg"] == pytest.approx(0.0, abs=1e-6)
    assert only["relative_update"] == pytest.approx(1.0) and only["base_layer"] == 0
    with pytest.raises(ValueError):
        hidden_state_usage(hidden, schedule=[0, 0])


def tiny_model(schedule=None, seed=0):
    from vld.model import ModelConfig, VLDTransformer

    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=29, n_layer=2, d_model=16, n_head=2, max_seq_len=32,
                         schedule=schedule).validate()
    return VLDTransformer(config)


def windows(n=5, length=13, seed=1):
    return torch.randint(0, 29, (n, length), generator=torch.Generator().manual_seed(seed))


def test_identity_layers_make_no_updates():
    # All-zero block weights: every norm outputs 0, so attention and MLP add exactly 0.
    model = tiny_model(schedule=[0, 1, 0, 1])
    with torch.no_grad():
        for p in model.layers.parameters():
            p.zero_()
    tokens = windows()
    usage = layer_usage(model, tokens, batch_size=2)
    assert [u["base_layer"] for u in usage] == [0, 1, 0, 1]
    assert [u["visit"] for u in usage] == [0, 0, 1, 1]
    with torch.no_grad():
        loss = float(F.cross_entropy(model(tokens[:, :-1]).reshape(-1, 29), tokens[:, 1:].reshape(-1)))
    for u in usage:
        assert u["update_norm"] == 0.0 and u["relative_update"] == 0.0
        assert u["angle_deg"] == pytest.approx(0.0, abs=1e-4)
        assert u["update_cosine_next"] is None  # zero updates have no direction
        assert u["logit_lens_loss"] == pytest.approx(loss, rel=1e-6)


def test_real_model_last_lens_is_the_model_loss_and_batching_does_not_matter():
    model = tiny_model(schedule=[0, 0, 1, 1])
    tokens = windows(n=6)
    usage = layer_usage(model, tokens, batch_size=6)
    with torch.no_grad():
        loss = float(F.cross_entropy(model(tokens[:, :-1]).reshape(-1, 29), tokens[:, 1:].reshape(-1)))
    assert usage[-1]["logit_lens_loss"] == pytest.approx(loss, rel=1e-6)
    for one, other in zip(usage, layer_usage(model, tokens.tolist(), batch_size=4)):
        assert one.keys() == other.keys()
        for key, value in one.items():
            assert (value is None) == (other[key] is None)
            if value is not None:
                assert value == pytest.approx(other[key], rel=1e-6, abs=1e-9), key
    assert all(u["update_norm"] > 0 for u in usage)
    assert all(-1.0 <= u["update_cosine_next"] <= 1.0 for u in usage[:-1])
    assert model.training  # restored


def test_readout_is_the_final_norm_and_head():
    model = tiny_model()
    h = torch.randn(2, 3, 16)
    assert torch.equal(model_readout(model)(h), model.lm_head(model.norm_f(h)))


def test_bad_probe_input_is_a_user_error():
    model = tiny_model()
    with pytest.raises(UserError, match="depth.tokens"):
        layer_usage(model, torch.zeros(4, dtype=torch.long))
    with pytest.raises(UserError, match="depth.batch_size"):
        layer_usage(model, windows(), batch_size=0)


def test_probe_windows_are_evenly_spaced_and_fit_small_sets(tmp_path):
    from vld.data.tokens import write_token_set

    tokens = np.arange(100) % 29
    write_token_set(tmp_path / "set", tokens, np.array([0, 100]), 29, {"generator": "test"})
    got = probe_windows(tmp_path / "set", seq_len=9, n_windows=4)
    # Starts 0, 30, 60, 90 over the last possible start 90 = 100 - 10.
    assert got.shape == (4, 10)
    assert [int(row[0]) for row in got] == [s % 29 for s in (0, 30, 60, 90)]
    np.testing.assert_array_equal(got[1], np.arange(30, 40) % 29)
    whole = probe_windows(tmp_path / "set", seq_len=500, n_windows=3)
    assert whole.shape == (1, 100)
    with pytest.raises(UserError, match="depth.windows"):
        probe_windows(tmp_path / "set", seq_len=9, n_windows=0)
