"""The MLP network and the ``torch.mlp`` kind: shapes, config, and that it learns."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from models import registry
from models.base import FeatureBatch, ModelContext
from models.mlp import ACTIVATIONS, MLP, Activation, MLPConfig, count_parameters
from models.online import key_bucket

NAMES = ("x1", "x2", "noise")
CONTEXT = ModelContext(feature_names=NAMES, window=4, horizon=0, seed=5)


def test_forward_has_one_output_per_row_and_starts_at_zero() -> None:
    net = MLP(MLPConfig(in_features=3, hidden=(16, 8)))
    out = net(torch.randn(7, 3))
    assert out.shape == (7,)
    assert torch.equal(out, torch.zeros(7))  # zero-initialised output layer
    assert count_parameters(net) == 3 * 16 + 16 + 16 * 8 + 8 + 8 + 1


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds(activation: Activation) -> None:
    net = MLP(MLPConfig(in_features=2, hidden=(4,), activation=activation))
    assert isinstance(net.body[1], ACTIVATIONS[activation])


def test_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    net = MLP(MLPConfig(in_features=4, hidden=(64,), dropout=0.5))
    torch.nn.init.normal_(net.out.weight)
    x = torch.randn(3, 4)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_features": 0},
        {"in_features": 2, "hidden": (4, 0)},
        {"in_features": 2, "dropout": 1.0},
        {"in_features": 2, "activation": "swish"},
    ],
)
def test_config_rejects_impossible_shapes(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        MLPConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    config = MLPConfig(in_features=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden = (1,)  # type: ignore[misc]


def nonlinear_stream(
    rows: int, batch_size: int, seed: int, spikes: float = 0.0
) -> Iterator[tuple[FeatureBatch, np.ndarray]]:
    """``y = sin(3 x1) * x2 + noise``; a third feature is pure noise. Level mode.
    With ``spikes``, that share of rows is 5 to 15 higher (one-sided, like a meter's
    bursts: the mean moves, the median does not)."""
    rng = np.random.default_rng(seed)
    for _ in range(rows // batch_size):
        x = rng.uniform(-2.0, 2.0, size=(batch_size, 3))
        y = np.sin(3.0 * x[:, 0]) * x[:, 1] + 0.05 * rng.normal(size=batch_size)
        burst = rng.random(batch_size) < spikes
        y += np.where(burst, rng.uniform(5.0, 15.0, size=batch_size), 0.0)
        batch = FeatureBatch(
            x=x,
            window=np.full((batch_size, 4), np.nan),
            offset=np.zeros(batch_size),
            keys=["k"] * batch_size,
            feature_names=NAMES,
        )
        yield batch, y


def prequential_mae(
    kind: str, rows: int, last: int, params: dict[str, object] | None = None, spikes: float = 0.0
) -> float:
    """MAE of the last ``last`` rows, each predicted before it was learned."""
    model = registry.build(kind, params or {}, CONTEXT)
    errors = []
    for batch, y in nonlinear_stream(rows, batch_size=16, seed=0, spikes=spikes):
        errors.append(np.abs(model.predict(batch) - y))
        model.learn(batch, y)
    return float(np.concatenate(errors)[-last:].mean())


def test_mlp_beats_linear_on_a_nonlinear_target() -> None:
    # accuracy, not time: 4,000 rows in batches of 16, fixed seeds
    mlp = prequential_mae("torch.mlp", rows=4000, last=1000)
    linear = prequential_mae("river.linear", rows=4000, last=1000)
    assert mlp < 0.6 * linear, (mlp, linear)


def test_the_huber_loss_serves_the_absolute_error_on_a_spiky_stream() -> None:
    # one row in ten spikes upwards: the squared error pulls every forecast towards
    # the spikes, the default Huber loss keeps to the bulk (the conditional median)
    huber = prequential_mae("torch.mlp", rows=4000, last=1000, spikes=0.1)
    squared = prequential_mae(
        "torch.mlp", rows=4000, last=1000, params={"huber_delta": None}, spikes=0.1
    )
    assert huber < 0.8 * squared, (huber, squared)


def keyed_batch(rng: np.random.Generator, n: int) -> tuple[FeatureBatch, np.ndarray]:
    """The target is the key's own constant; the features say nothing about it."""
    key_ids = rng.integers(0, 6, size=n)
    batch = FeatureBatch(
        x=rng.normal(size=(n, 3)),
        window=np.full((n, 4), np.nan),
        offset=np.zeros(n),
        keys=[f"sensor-{k}" for k in key_ids],
        feature_names=NAMES,
    )
    return batch, np.where(key_ids % 2 == 0, 1.0, -1.0)


@pytest.mark.parametrize(("dims", "good"), [(0, False), (4, True)])
def test_key_embedding_learns_per_key_offsets(dims: int, good: bool) -> None:
    model = registry.build("torch.mlp", {"key_embedding": dims, "lr": 0.01}, CONTEXT)
    rng = np.random.default_rng(1)
    for _ in range(150):
        model.learn(*keyed_batch(rng, 32))
    batch, y = keyed_batch(rng, 500)
    mae = float(np.mean(np.abs(model.predict(batch) - y)))
    assert (mae < 0.2) is good, mae


def test_key_buckets_are_stable_and_bounded() -> None:
    # CRC-32, not Python's salted hash: the same in every process and replica
    assert key_bucket(["AAPL", "MSFT"], 1 << 32).tolist() == [3060094812, 3974476411]
    buckets = key_bucket([f"k{i}" for i in range(1000)], 16)
    assert buckets.min() >= 0
    assert buckets.max() < 16
    assert len(set(buckets.tolist())) == 16
