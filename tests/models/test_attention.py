"""The attention hybrid: shapes, attention weights, equivalence with full self-attention,
explanations through the model, and that it learns from the raw window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models import registry
from models.attention import AttentionConfig, AttentionNet
from models.base import FeatureBatch, ModelContext
from models.online import OnlineRegressor

W = 8


def make_net(**kwargs: object) -> AttentionNet:
    torch.manual_seed(0)
    config = AttentionConfig(window=W, in_features=3, **kwargs)  # type: ignore[arg-type]
    return AttentionNet(config)


def window_and_mask(rows: int, observed: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ``i`` has ``observed[i]`` newest steps observed, the rest padded."""
    mask = torch.zeros(rows, W, dtype=torch.bool)
    for i, n in enumerate(observed):
        mask[i, W - n :] = True
    window = torch.randn(rows, W) * mask
    return window, mask


def test_forward_and_explain_shapes() -> None:
    net = make_net(width=8, heads=4)
    window, mask = window_and_mask(5, [8, 8, 3, 1, 0])
    assert net(torch.randn(5, 3), window, mask).shape == (5,)
    assert net.explain(torch.randn(5, 3), window, mask).shape == (5, 4, W)


def test_attention_weights_sum_to_one_and_skip_padding() -> None:
    net = make_net()
    window, mask = window_and_mask(4, [8, 5, 1, 0])
    weights = net.explain(torch.zeros(4, 3), window, mask)  # (B, heads, W)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 2))
    padded = ~mask
    padded[:, -1] = False
    assert torch.all(weights.masked_select(padded[:, None, :].expand_as(weights)) == 0)
    # a key without history attends only to its (empty) newest step
    torch.testing.assert_close(weights[3, :, -1], torch.ones(2))


def test_newest_step_readout_equals_full_self_attention() -> None:
    """Computing only the newest query gives the last row of full self-attention."""
    net = make_net(width=8, heads=2)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([net.query.weight, net.key_value.weight]))
        mha.in_proj_bias.copy_(torch.cat([net.query.bias, net.key_value.bias]))
        mha.out_proj.weight.copy_(net.out.weight)
        mha.out_proj.bias.copy_(net.out.bias)
    window, mask = window_and_mask(6, [8, 7, 4, 2, 1, 0])
    h, ignore = net._encode(window, mask)
    full, full_weights = mha(h, h, h, key_padding_mask=ignore, average_attn_weights=False)
    z, weights = net._attend(window, mask)
    torch.testing.assert_close(z, net.norm(h[:, -1] + full[:, -1]))
    torch.testing.assert_close(weights, full_weights[:, :, -1, :])


def test_convolution_is_causal() -> None:
    """Changing the newest value changes no older step's encoding."""
    net = make_net()
    window, mask = window_and_mask(1, [8])
    before, _ = net._encode(window, mask)
    window[0, -1] += 5.0
    after, _ = net._encode(window, mask)
    torch.testing.assert_close(before[:, :-1], after[:, :-1])
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_config_needs_heads_dividing_width() -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        AttentionConfig(window=W, in_features=3, width=10, heads=4)


CONTEXT = ModelContext(feature_names=("a", "b"), window=W, horizon=1, seed=3)


def pattern_batch(rng: np.random.Generator, n: int) -> tuple[FeatureBatch, np.ndarray]:
    """Random-walk windows; the next change undoes the move of three steps ago.

    Only the raw window tells; the features are noise, so a model must read the
    window to beat "no change".
    """
    steps = rng.normal(size=(n, W))
    window = 100.0 + np.cumsum(steps, axis=1)
    young = rng.random(n) < 0.1
    window[young, : W // 2] = np.nan  # some keys are young
    target = -steps[:, -3]
    batch = FeatureBatch(
        x=rng.normal(size=(n, 2)),
        window=window,
        offset=window[:, -1].copy(),
        keys=[f"k{i % 7}" for i in range(n)],
        feature_names=["a", "b"],
    )
    return batch, target


def test_attention_learns_from_the_raw_window() -> None:
    model = registry.build("torch.attention", {}, CONTEXT)  # defaults: learn_every 32
    rng = np.random.default_rng(0)
    for _ in range(250):
        model.learn(*pattern_batch(rng, 32))
    batch, y = pattern_batch(rng, 1000)
    mae = float(np.mean(np.abs(model.predict(batch) - y)))
    baseline = float(np.mean(np.abs(y)))  # "no change"
    assert mae < 0.3 * baseline, (mae, baseline)


def test_explain_through_the_model() -> None:
    model = registry.build("torch.attention", {"heads": 4, "width": 8}, CONTEXT)
    assert isinstance(model, OnlineRegressor)
    rng = np.random.default_rng(1)
    model.learn(*pattern_batch(rng, 64))
    batch, _ = pattern_batch(rng, 10)
    weights = model.explain(batch)
    assert weights.shape == (10, 4, W)
    assert weights.dtype == np.float64
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-6)


def test_mlp_has_nothing_to_explain() -> None:
    model = registry.build("torch.mlp", {}, CONTEXT)
    assert isinstance(model, OnlineRegressor)
    batch, _ = pattern_batch(np.random.default_rng(2), 3)
    with pytest.raises(TypeError, match="no attention weights"):
        model.explain(batch)
