"""The NumPy MLP kernel: the same steps as autograd + ``torch.optim.Adam``, the same
checkpoints, the same guard against non-finite steps, and only where it applies."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import registry
from models.base import ModelContext
from models.checks import synthetic_batches
from models.guard import clip_gradients
from models.mlp import MLP, Activation, MLPConfig
from models.mlp_kernel import MLPKernel
from models.online import OnlineConfig, OnlineRegressor

CONTEXT = ModelContext(feature_names=("a", "b", "c"), window=6, horizon=1, seed=7)
STREAM = list(synthetic_batches(CONTEXT, n_batches=40, batch_size=16, seed=3))


def twin_networks(
    activation: Activation, weight_decay: float, seed: int = 0
) -> tuple[MLP, torch.optim.Adam, MLP, torch.optim.Adam]:
    """Two equal networks and their Adams (a non-zero output layer, so every layer
    gets a gradient from the first step)."""
    torch.manual_seed(seed)
    config = MLPConfig(in_features=5, hidden=(8, 7), activation=activation)
    a, b = MLP(config), MLP(config)
    with torch.no_grad():
        a.out.weight.normal_()
    b.load_state_dict(a.state_dict())
    adam_a = torch.optim.Adam(a.parameters(), lr=0.01, weight_decay=weight_decay, fused=True)
    adam_b = torch.optim.Adam(b.parameters(), lr=0.01, weight_decay=weight_decay, fused=True)
    return a, adam_a, b, adam_b


def flat(net: MLP) -> np.ndarray[Any, Any]:
    return torch.cat([p.detach().flatten() for p in net.parameters()]).numpy()


@pytest.mark.parametrize("activation", ["relu", "tanh", "silu", "gelu"])
@pytest.mark.parametrize(("weight_decay", "clip"), [(0.0, 1.0), (0.01, None)])
@pytest.mark.parametrize("huber", [None, 0.5])
def test_steps_are_autograd_and_adam_steps(
    activation: Activation, weight_decay: float, clip: float | None, huber: float | None
) -> None:
    reference, adam, net, kernel_adam = twin_networks(activation, weight_decay)
    config = OnlineConfig(lr=0.01, weight_decay=weight_decay, clip_norm=clip, huber_delta=huber)
    kernel = MLPKernel.build(net, kernel_adam, list(net.parameters()), config)
    assert kernel is not None
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.normal(size=(12, 5)).astype(np.float32)
        y = (3 * rng.normal(size=12)).astype(np.float32)
        out, truth = reference(torch.from_numpy(x)), torch.from_numpy(y)
        # y's spread (3) puts most residuals beyond the Huber threshold
        loss = F.mse_loss(out, truth) if huber is None else F.huber_loss(out, truth, delta=huber)
        adam.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        clip_gradients(list(reference.parameters()), clip)
        adam.step()
        assert kernel.step(x, y)
        np.testing.assert_allclose(flat(net), flat(reference), rtol=1e-4, atol=1e-6)
    probe = rng.normal(size=(4, 5)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(probe)).numpy()
    np.testing.assert_allclose(kernel.forward(probe), expected, rtol=1e-4, atol=1e-6)
    # the optimizer's own state is the kernel's: a checkpoint sees what it did
    for p_ref, p in zip(reference.parameters(), net.parameters(), strict=True):
        ours, theirs = kernel_adam.state[p], adam.state[p_ref]
        assert float(ours["step"]) == float(theirs["step"]) == 20.0
        for name in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4, atol=1e-7)


def autograd_model(monkeypatch: pytest.MonkeyPatch, params: dict[str, Any]) -> OnlineRegressor:
    with monkeypatch.context() as patch:
        patch.setattr(MLPKernel, "build", classmethod(lambda cls, *args: None))
        model = registry.build("torch.mlp", params, CONTEXT)
    assert isinstance(model, OnlineRegressor)
    assert model.trainer == "autograd"
    return model


def kernel_model(params: dict[str, Any]) -> OnlineRegressor:
    model = registry.build("torch.mlp", params, CONTEXT)
    assert isinstance(model, OnlineRegressor)
    assert model.trainer == "numpy"
    return model


def test_a_model_learns_the_same_through_either_path(monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"learn_every": 16, "minibatch_rows": 16, "weight_decay": 0.001}
    fast, slow = kernel_model(params), autograd_model(monkeypatch, params)
    # float32 sums in another order (NumPy's BLAS, not torch's kernels) drift apart
    # slowly over many steps; a different step would differ at once
    for batch, target in STREAM[:12]:
        np.testing.assert_allclose(fast.predict(batch), slow.predict(batch), rtol=1e-2, atol=1e-3)
        fast.learn(batch, target)
        slow.learn(batch, target)
    assert fast.updates == slow.updates == 12 * 16


def test_checkpoints_load_across_the_two_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = kernel_model({"learn_every": 4})
    for batch, target in STREAM[:8]:
        fast.learn(batch, target)
    slow = autograd_model(monkeypatch, {"learn_every": 4})
    slow.load_state_dict(fast.state_dict())
    again = kernel_model({"learn_every": 4})
    again.load_state_dict(slow.state_dict())
    for batch, target in STREAM[8:14]:
        expected = slow.predict(batch)
        np.testing.assert_allclose(fast.predict(batch), expected, rtol=1e-2, atol=1e-3)
        np.testing.assert_allclose(again.predict(batch), expected, rtol=1e-2, atol=1e-3)
        for model in (fast, slow, again):
            model.learn(batch, target)
    # a kernel model restored from a checkpoint trains its restored moments, not zeros
    np.testing.assert_array_equal(fast.predict(STREAM[20][0]), again.predict(STREAM[20][0]))


def test_a_fresh_model_round_trips_before_its_first_step() -> None:
    fresh = kernel_model({})
    copy = kernel_model({})
    copy.load_state_dict(fresh.state_dict())
    batch, target = STREAM[0]
    fresh.learn(batch, target)
    copy.learn(batch, target)
    np.testing.assert_array_equal(fresh.predict(batch), copy.predict(batch))


def poisoned(model: OnlineRegressor, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Make the kernel's next step meet a non-finite loss, gradient or parameter."""
    kernel = model._kernel
    assert kernel is not None
    if how == "loss":
        monkeypatch.setattr(kernel, "_backward", lambda x, y: None)
    elif how == "gradient":
        real = kernel._backward

        def infinite(x: Any, y: Any) -> Any:
            grad = real(x, y)
            assert grad is not None
            grad[0] = np.inf
            return grad

        monkeypatch.setattr(kernel, "_backward", infinite)
    else:
        monkeypatch.setattr(kernel, "_lr", float("inf"))


@pytest.mark.parametrize("how", ["loss", "gradient", "parameter"])
def test_a_non_finite_step_changes_nothing(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    model = kernel_model({"learn_every": 1})
    for batch, target in STREAM[:4]:
        model.learn(batch, target)
    before = model.state_dict()
    batch, target = STREAM[4]
    good = model.predict(batch)
    with monkeypatch.context() as patch:
        poisoned(model, patch, how)
        model.learn(batch, target)
    assert model.nonfinite_events == 1
    assert model.updates == before["updates"]
    after = model.state_dict()
    for name, tensor in before["network"].items():
        torch.testing.assert_close(after["network"][name], tensor, rtol=0, atol=0)
    for index, state in before["optimizer"].items():
        for name, value in state.items():
            torch.testing.assert_close(after["optimizer"][index][name], value, rtol=0, atol=0)
    np.testing.assert_array_equal(model.predict(batch), good)
    model.learn(batch, target)  # and learning goes on
    assert model.updates == before["updates"] + len(target)


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("torch.attention", {}),
        ("torch.mlp", {"dropout": 0.1}),
        ("torch.mlp", {"optimizer": "sgd"}),
        ("torch.mlp", {"key_embedding": 2}),
    ],
)
def test_other_networks_train_through_autograd(kind: str, params: dict[str, Any]) -> None:
    model = registry.build(kind, params, CONTEXT)
    assert isinstance(model, OnlineRegressor)
    assert model.trainer == "autograd"


def test_the_default_mlp_uses_the_kernel() -> None:
    kernel_model({})


def test_a_pickled_model_is_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # checkpoints pickle the task's models: the copy must keep the kernel's buffers
    # and the module's tensors one memory, and be no larger than an autograd model's
    fast, slow = kernel_model({"learn_every": 4}), autograd_model(monkeypatch, {"learn_every": 4})
    for batch, target in STREAM[:8]:
        fast.learn(batch, target)
        slow.learn(batch, target)
    copy = pickle.loads(pickle.dumps(fast))  # noqa: S301 - own bytes
    assert copy.trainer == "numpy"
    pickled = copy.state_dict()["network"]
    assert len(pickle.dumps(fast)) < 1.2 * len(pickle.dumps(slow))
    for batch, target in STREAM[8:14]:
        np.testing.assert_array_equal(copy.predict(batch), fast.predict(batch))
        copy.learn(batch, target)
        fast.learn(batch, target)
    learned = copy.state_dict()["network"]  # what a checkpoint of the copy holds
    for name, tensor in fast.state_dict()["network"].items():
        torch.testing.assert_close(learned[name], tensor, rtol=0, atol=0)
    assert not torch.equal(learned["body.out.weight"], pickled["body.out.weight"])


def test_a_model_pickled_as_its_attributes_loads_with_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # how checkpoints pickled a model before OnlineRegressor.__getstate__
    old = autograd_model(monkeypatch, {"learn_every": 4})
    for batch, target in STREAM[:8]:
        old.learn(batch, target)
    attributes = dict(old.__dict__)
    del attributes["_kernel"]
    restored = OnlineRegressor.__new__(OnlineRegressor)
    restored.__setstate__(pickle.loads(pickle.dumps(attributes)))  # noqa: S301 - own bytes
    assert restored.trainer == "numpy"
    batch, target = STREAM[8]
    np.testing.assert_allclose(restored.predict(batch), old.predict(batch), rtol=1e-5)
    restored.learn(batch, target)
    old.learn(batch, target)
    np.testing.assert_allclose(restored.predict(batch), old.predict(batch), rtol=1e-3, atol=1e-5)
