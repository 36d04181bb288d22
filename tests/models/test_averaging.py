"""Predicting with averaged weights: the debiased average of the steps' weights, the
same through the NumPy kernel and autograd, learning unchanged, and checkpointed."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models import registry
from models.averaging import WeightAverage
from models.base import FeatureBatch, FloatArray, ModelContext
from models.checks import synthetic_batches
from models.mlp_kernel import MLPKernel
from models.online import OnlineRegressor

CONTEXT = ModelContext(feature_names=("a", "b", "c"), window=6, horizon=1, seed=7)
STREAM = list(synthetic_batches(CONTEXT, n_batches=30, batch_size=16, seed=3))
PLAIN = {"learn_every": 16, "minibatch_rows": 16}  # one step per 16-row batch
AVERAGED = {**PLAIN, "average": 0.9}


def build(params: dict[str, Any]) -> OnlineRegressor:
    model = registry.build("torch.mlp", params, CONTEXT)
    assert isinstance(model, OnlineRegressor)
    return model


def weights(model: OnlineRegressor) -> np.ndarray[Any, Any]:
    return torch.cat([p.detach().flatten() for p in model.network.parameters()]).numpy().copy()


def _in_step(
    a: OnlineRegressor,
    b: OnlineRegressor,
    stream: list[tuple[FeatureBatch, FloatArray]],
    same: Callable[[FloatArray, FloatArray], None],
) -> None:
    """Both models predict each batch (``same`` compares them), then learn it."""
    for batch, target in stream:
        same(a.predict(batch), b.predict(batch))
        a.learn(batch, target)
        b.learn(batch, target)


def debiased_average(path: list[np.ndarray[Any, Any]], decay: float) -> np.ndarray[Any, Any]:
    """``sum_s decay^(t-s) theta_s / sum_s decay^(t-s)`` over the steps' weights."""
    factors = decay ** np.arange(len(path))[::-1]
    mean: np.ndarray[Any, Any] = factors @ np.stack(path) / factors.sum()
    return mean


def test_the_average_weighs_the_steps_weights_and_never_the_initial_ones() -> None:
    rng = np.random.default_rng(0)
    param = torch.nn.Parameter(torch.from_numpy(rng.normal(size=5).astype(np.float32)))
    average, flat = WeightAverage([param], decay=0.8), WeightAverage([param], decay=0.8)
    path = []
    for _ in range(6):
        with torch.no_grad():
            param.copy_(torch.from_numpy(rng.normal(size=5).astype(np.float32)))
        path.append(param.detach().numpy().copy())
        average.update([param])
        flat.update_flat(param.detach().numpy())
        expected = debiased_average(path, 0.8)
        np.testing.assert_allclose(average.flat.numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(flat.flat.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("trainer", ["numpy", "autograd"])
def test_predictions_come_from_the_average_and_learning_is_unchanged(
    trainer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if trainer == "autograd":
        monkeypatch.setattr(MLPKernel, "build", classmethod(lambda cls, *args: None))
    averaged, plain = build(AVERAGED), build(PLAIN)
    assert averaged.trainer == plain.trainer == trainer
    path = []
    for batch, target in STREAM[:12]:
        averaged.learn(batch, target)
        plain.learn(batch, target)
        path.append(weights(plain))
    # the optimizer stepped the same weights: averaging only changes what predicts
    np.testing.assert_array_equal(weights(averaged), weights(plain))
    # a plain model holding the averaged weights predicts what the averaged one does
    probe = build(PLAIN)
    probe.load_state_dict(plain.state_dict())
    with torch.no_grad():
        start = 0
        for p in probe.network.parameters():
            mean = debiased_average(path, 0.9)[start : start + p.numel()]
            p.copy_(torch.from_numpy(mean).view_as(p))
            start += p.numel()
    batch = STREAM[12][0]
    np.testing.assert_allclose(averaged.predict(batch), probe.predict(batch), rtol=1e-4, atol=1e-6)
    assert not np.allclose(averaged.predict(batch), plain.predict(batch), rtol=1e-3)


def test_the_two_paths_predict_the_same_averages(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = build(AVERAGED)
    with monkeypatch.context() as patch:
        patch.setattr(MLPKernel, "build", classmethod(lambda cls, *args: None))
        slow = build(AVERAGED)
    assert (fast.trainer, slow.trainer) == ("numpy", "autograd")
    # float32 sums in another order drift apart slowly; another average would at once
    _in_step(fast, slow, STREAM[:12], partial(np.testing.assert_allclose, rtol=1e-2, atol=1e-3))


def test_a_checkpoint_keeps_the_average() -> None:
    model = build(AVERAGED)
    for batch, target in STREAM[:10]:
        model.learn(batch, target)
    restored = build(AVERAGED)
    restored.load_state_dict(model.state_dict())
    _in_step(restored, model, STREAM[10:16], np.testing.assert_array_equal)


def test_a_checkpoint_without_an_average_predicts_with_its_weights_then_averages() -> None:
    plain = build(PLAIN)
    for batch, target in STREAM[:10]:
        plain.learn(batch, target)
    averaged = build(AVERAGED)
    averaged.load_state_dict(plain.state_dict())
    batch, target = STREAM[10]
    np.testing.assert_array_equal(averaged.predict(batch), plain.predict(batch))
    before = weights(averaged)
    averaged.learn(batch, target)
    plain.learn(batch, target)
    # one step moves the average a tenth of the way, not all the way to the new weights
    assert averaged._average is not None
    expected = before + 0.1 * (weights(plain) - before)
    np.testing.assert_allclose(averaged._average.flat.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5])
def test_an_average_outside_zero_to_one_is_refused(value: float) -> None:
    with pytest.raises(ValidationError, match="average"):
        registry.build("torch.mlp", {"average": value}, CONTEXT)
