"""Online training of torch networks: state, determinism, the NaN guard, batching knobs,
normalisation, params validation; plus conformance of non-default configurations."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from models import online, registry
from models.base import FeatureBatch, Model, ModelContext
from models.checks import run_all, synthetic_batches
from models.mlp_kernel import MLPKernel
from models.online import OnlineConfig, OnlineRegressor

CONTEXT = ModelContext(feature_names=("a", "b", "c"), window=6, horizon=1, seed=7)
STREAM = list(synthetic_batches(CONTEXT, n_batches=12, batch_size=16, seed=2))
KINDS = ["torch.mlp", "torch.attention"]

# Every knob that changes what is stored or drawn at random.
BUSY: dict[str, Any] = {
    "dropout": 0.2,
    "key_embedding": 3,
    "key_buckets": 8,
    "learn_every": 20,
    "max_step_rows": 6,
    "replay_size": 20,
    "replay_samples": 4,
}


def build(kind: str, params: dict[str, Any] | None = None, seed: int = 7) -> OnlineRegressor:
    context = ModelContext(CONTEXT.feature_names, CONTEXT.window, CONTEXT.horizon, seed=seed)
    model = registry.build(kind, params or {}, context)
    assert isinstance(model, OnlineRegressor)
    return model


def network_state(model: OnlineRegressor) -> dict[str, torch.Tensor]:
    network: dict[str, torch.Tensor] = model.state_dict()["network"]
    return network


def assert_same_tensors(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], dict):
            assert_same_tensors(a[name], b[name])
        elif isinstance(a[name], torch.Tensor):
            assert torch.equal(a[name], b[name]), name
        else:
            assert a[name] == b[name], name


# -- conformance of non-default configurations (defaults run in test_conformance) ------

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("torch.mlp", BUSY),
    ("torch.mlp", {"optimizer": "sgd", "momentum": 0.9, "lr": 0.01, "clip_norm": None}),
    ("torch.mlp", {"hidden": [8], "activation": "tanh", "replay_size": 0, "weight_decay": 0.01}),
    ("torch.attention", BUSY),
    ("torch.attention", {"learn_every": 1, "max_step_rows": None, "width": 8, "heads": 4}),
]


@pytest.mark.parametrize(("kind", "params"), VARIANTS)
def test_variants_conform(kind: str, params: dict[str, Any]) -> None:
    run_all(lambda: registry.build(kind, params, CONTEXT), STREAM)


# -- state -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trip_carries_on_exactly(kind: str) -> None:
    model = build(kind, BUSY)
    for batch, target in STREAM[:5]:
        model.learn(batch, target)
    state = model.state_dict()
    assert len(state["pending"]["target"]) > 0, "want pending rows in the snapshot"
    assert len(state["replay"]["rows"]["target"]) > 0
    restored = build(kind, BUSY)
    restored.load_state_dict(pickle.loads(pickle.dumps(state)))  # noqa: S301 - own bytes
    assert_same_tensors(restored.state_dict()["network"], state["network"])
    assert_same_tensors(restored.state_dict()["optimizer"], state["optimizer"])
    for batch, target in STREAM[5:]:
        np.testing.assert_array_equal(restored.predict(batch), model.predict(batch))
        model.learn(batch, target)
        restored.learn(batch, target)
    assert (restored.updates, restored.nonfinite_events) == (model.updates, model.nonfinite_events)
    assert model.updates > 0


def test_state_of_another_shape_is_refused() -> None:
    state = build("torch.mlp", {"hidden": [8]}).state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        build("torch.mlp", {"hidden": [16]}).load_state_dict(state)


def test_loading_does_not_alias_the_given_state() -> None:
    model = build("torch.mlp")
    for batch, target in STREAM[:3]:
        model.learn(batch, target)
    state = model.state_dict()
    frozen = pickle.loads(pickle.dumps(state))  # noqa: S301 - own bytes
    other = model.clone()
    other.load_state_dict(state)
    for batch, target in STREAM[3:]:
        other.learn(batch, target)
    assert_same_tensors(state["optimizer"], frozen["optimizer"])
    assert_same_tensors(state["network"], frozen["network"])


def test_replay_buffer_is_bounded() -> None:
    model = build("torch.mlp", {"replay_size": 10})
    for batch, target in STREAM:
        model.learn(batch, target)
    rows = model.state_dict()["replay"]["rows"]
    assert rows["x"].shape == (10, 3)
    # the newest rows, in ring order: the last 10 targets learned, rotated
    assert sorted(rows["target"].tolist()) == sorted(STREAM[-1][1][-10:].tolist())


# -- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_predictions_other_seed_other_predictions(kind: str) -> None:
    a, b, c = build(kind, BUSY), build(kind, BUSY), build(kind, BUSY, seed=8)
    for batch, target in STREAM:
        for model in (a, b, c):
            model.learn(batch, target)
    probe = STREAM[0][0]
    np.testing.assert_array_equal(a.predict(probe), b.predict(probe))
    assert not np.array_equal(a.predict(probe), c.predict(probe))


def test_models_leave_the_global_torch_generator_alone() -> None:
    before = torch.get_rng_state()
    model = build("torch.mlp", BUSY)
    for batch, target in STREAM:
        model.learn(batch, target)
    assert torch.equal(torch.get_rng_state(), before)


# -- the NaN guard -----------------------------------------------------------------------


@pytest.fixture
def autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.mlp`` trained through autograd and ``torch.optim``, not
    :mod:`models.mlp_kernel` (whose own guard tests are in ``test_mlp_kernel.py``):
    the guard tests below poison torch's functions."""
    monkeypatch.setattr(MLPKernel, "build", classmethod(lambda cls, *args: None))


def trained(kind: str = "torch.mlp") -> tuple[OnlineRegressor, dict[str, Any]]:
    model = build(kind, {"learn_every": 1})
    for batch, target in STREAM[:4]:
        model.learn(batch, target)
    return model, model.state_dict()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_targets_are_dropped_and_counted(bad: float) -> None:
    model, before = trained()
    batch, target = STREAM[4]
    model.learn(batch, np.full_like(target, bad))
    assert model.nonfinite_events == 1
    assert model.updates == before["updates"]
    assert_same_tensors(network_state(model), before["network"])
    # a partly bad batch learns from its finite rows
    partly = target.copy()
    partly[::2] = bad
    model.learn(batch, partly)
    assert model.nonfinite_events == 2
    assert model.updates == before["updates"] + int(np.isfinite(partly).sum())  # rows learned
    assert np.all(np.isfinite(model.predict(batch)))


@pytest.mark.usefixtures("autograd")
def test_a_non_finite_loss_skips_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    model, before = trained()
    batch, target = STREAM[4]
    with monkeypatch.context() as patch:
        nan_loss = lambda a, b, **_: (a - b).sum() * np.nan  # noqa: E731
        patch.setattr(torch.nn.functional, "mse_loss", nan_loss)
        patch.setattr(torch.nn.functional, "huber_loss", nan_loss)
        model.learn(batch, target)
    assert model.nonfinite_events == 1
    assert model.updates == before["updates"]
    assert_same_tensors(model.state_dict()["network"], before["network"])
    assert_same_tensors(model.state_dict()["optimizer"], before["optimizer"])
    assert model.state_dict()["targets"] == before["targets"]
    assert np.all(np.isfinite(model.predict(batch)))
    model.learn(batch, target)  # and learning goes on
    assert model.updates == before["updates"] + len(target)


@pytest.mark.usefixtures("autograd")
def test_a_non_finite_gradient_skips_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    model, before = trained()
    batch, target = STREAM[4]
    with monkeypatch.context() as patch:
        patch.setattr(online, "clip_gradients", lambda *a, **k: torch.tensor(np.inf))
        model.learn(batch, target)
    assert model.nonfinite_events == 1
    assert_same_tensors(model.state_dict()["network"], before["network"])
    model.learn(batch, target)
    assert model.updates == before["updates"] + len(target)


@pytest.mark.usefixtures("autograd")
@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_parameters_are_restored(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, before = trained(kind)
    batch, target = STREAM[4]
    good_prediction = model.predict(batch)
    real_step = torch.optim.Adam.step

    def poisoned_step(self: torch.optim.Adam, closure: Any = None) -> Any:
        real_step(self)  # moves the moments too, which must be undone as well
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(np.nan)

    with monkeypatch.context() as patch:
        patch.setattr(torch.optim.Adam, "step", poisoned_step)
        model.learn(batch, target)
    assert model.nonfinite_events == 1
    assert model.updates == before["updates"]
    after = model.state_dict()
    assert_same_tensors(after["network"], before["network"])
    assert_same_tensors(after["optimizer"], before["optimizer"])
    np.testing.assert_array_equal(model.predict(batch), good_prediction)
    model.learn(batch, target)
    assert model.updates == before["updates"] + len(target)
    assert model.state_dict()["nonfinite_events"] == 1


def test_predictions_stay_finite_whatever_the_state() -> None:
    model, state = trained()
    state["targets"] = {"count": 10.0, "mean": np.inf, "m2": 1.0}
    model.load_state_dict(state)
    np.testing.assert_array_equal(model.predict(STREAM[0][0]), np.zeros(16))


# -- batching knobs, normalisation -----------------------------------------------------


def test_learn_every_accumulates_rows_then_takes_one_step() -> None:
    model = build("torch.mlp", {"learn_every": 10})
    batch, target = STREAM[0]
    small = batch.take(np.arange(4))
    counts = []
    for _ in range(6):
        model.learn(small, target[:4])
        counts.append(model.updates)
    assert counts == [0, 0, 12, 12, 12, 24]  # steps (of rows learned) at 12 and 12 more


def test_max_step_rows_still_learns_every_row_into_replay() -> None:
    model = build("torch.mlp", {"max_step_rows": 4, "replay_size": 100})
    for batch, target in STREAM[:3]:
        model.learn(batch, target)
    assert model.updates == 48  # every row learned, though each step fit 4 of them
    assert len(model.state_dict()["replay"]["rows"]["target"]) == 48


def test_targets_are_normalised_and_predictions_in_the_original_scale() -> None:
    # level-like targets around 1000 with a spread of 50: hopeless for a unit-scale
    # network without normalisation at this learning rate and step count
    rng = np.random.default_rng(4)
    model = build("torch.mlp")

    def batch_of(n: int) -> tuple[FeatureBatch, np.ndarray]:
        x = rng.normal(size=(n, 3))
        batch = FeatureBatch(x, np.full((n, 6), np.nan), np.zeros(n), ["k"] * n, ("a", "b", "c"))
        return batch, 1000.0 + 50.0 * x[:, 0]

    for _ in range(200):
        model.learn(*batch_of(32))
    batch, y = batch_of(500)
    assert float(np.mean(np.abs(model.predict(batch) - y))) < 5.0


def test_an_untrained_model_predicts_no_change() -> None:
    for kind in KINDS:
        np.testing.assert_array_equal(build(kind).predict(STREAM[0][0]), np.zeros(16))


def test_bad_inputs_are_refused() -> None:
    model = build("torch.mlp")
    batch, target = STREAM[0]
    with pytest.raises(ValueError, match="shape"):
        model.learn(batch, target[:3])
    narrow = FeatureBatch(batch.x[:, :2], batch.window, batch.offset, batch.keys, ["a", "b"])
    with pytest.raises(ValueError, match="3 features"):
        model.predict(narrow)
    empty = batch.take(np.zeros(0, dtype=np.intp))
    assert model.predict(empty).shape == (0,)
    model.learn(empty, target[:0])
    assert model.updates == 0


# -- params, threads, device -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "loc"),
    [
        ("torch.mlp", {"lr": 0}, ("lr",)),
        ("torch.mlp", {"lr": float("nan")}, ("lr",)),
        ("torch.mlp", {"hidden": []}, ("hidden",)),
        ("torch.mlp", {"hidden": [64, 0]}, ("hidden", 1)),
        ("torch.mlp", {"dropout": 1.0}, ("dropout",)),
        ("torch.mlp", {"optimizer": "adamw"}, ("optimizer",)),
        ("torch.mlp", {"activation": "swish"}, ("activation",)),
        ("torch.mlp", {"learn_every": 0}, ("learn_every",)),
        ("torch.mlp", {"max_step_rows": 0}, ("max_step_rows",)),
        ("torch.mlp", {"clip_norm": -1.0}, ("clip_norm",)),
        ("torch.mlp", {"device": "gpu"}, ("device",)),
        ("torch.mlp", {"hiden": [8]}, ("hiden",)),
        ("torch.attention", {"width": 10, "heads": 4}, ("heads",)),
        ("torch.attention", {"hidden": [8]}, ("hidden",)),
    ],
)
def test_bad_params_are_rejected_with_their_location(
    kind: str, params: dict[str, Any], loc: tuple[str | int, ...]
) -> None:
    with pytest.raises(ValidationError) as info:
        registry.validate_params(kind, params)
    assert [error["loc"] for error in info.value.errors()] == [loc]


def test_yaml_style_params_validate() -> None:
    params = registry.validate_params(
        "torch.mlp", {"hidden": [64, 64], "lr": 0.001, "weight_decay": 0.0001}
    )
    assert params.hidden == (64, 64)  # type: ignore[attr-defined]


def test_building_a_model_never_sets_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    build("torch.mlp")
    build("torch.attention")
    assert calls == []


@pytest.mark.parametrize("kind", ["torch.mlp", "torch.attention"])
def test_the_old_threads_param_names_its_replacement(kind: str) -> None:
    with pytest.raises(ValidationError, match=r"processing\.torch_threads"):
        registry.validate_params(kind, {"threads": 2})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only failure")
def test_cuda_without_a_gpu_fails_at_validation() -> None:
    with pytest.raises(ValidationError) as info:
        registry.validate_params("torch.mlp", {"device": "cuda"})
    [error] = info.value.errors()
    assert error["loc"] == ("device",)
    assert "torch.cuda.is_available() is False" in error["msg"]
    with pytest.raises(ValueError, match="cuda"):
        OnlineRegressor(lambda: torch.nn.Linear(3, 1), 3, 6, OnlineConfig(device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_models_agree_with_cpu_checkpoints(kind: str) -> None:
    gpu: Model = build(kind, {"device": "cuda"})
    for batch, target in STREAM[:6]:
        gpu.learn(batch, target)
    state = gpu.state_dict()
    assert all(t.device.type == "cpu" for t in state["network"].values())
    cpu = build(kind)
    cpu.load_state_dict(state)
    probe = STREAM[6][0]
    np.testing.assert_allclose(cpu.predict(probe), gpu.predict(probe), rtol=1e-4, atol=1e-6)
    run_all(lambda: registry.build(kind, {"device": "cuda"}, CONTEXT), STREAM[:4])


@pytest.mark.parametrize("first_missing", ["huber_delta", "average"])
def test_a_config_pickled_before_its_last_fields_loads_in_place(first_missing: str) -> None:
    """A slotted dataclass pickles as its fields' values in order; a checkpoint from
    before ``huber_delta`` (or ``average``) holds fewer values, which must not shift
    the others, and the missing fields take the behaviour the model was trained with."""
    new = OnlineConfig(lr=0.02, replay_size=7, key_buckets=9, seed=5, huber_delta=0.5, average=0.9)
    names = [field.name for field in dataclasses.fields(new)]
    older = [getattr(new, name) for name in names[: names.index(first_missing)]]
    restored = OnlineConfig.__new__(OnlineConfig)
    restored.__setstate__(older)
    for name in names[names.index(first_missing) :]:
        assert getattr(restored, name) is None
    for name in names[: names.index(first_missing)]:
        assert getattr(restored, name) == getattr(new, name)
    assert pickle.loads(pickle.dumps(new)) == new  # noqa: S301 - own bytes
