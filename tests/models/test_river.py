"""RiverModel and the river.* kinds: learning, batching paths, state, custom estimators."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from river import linear_model, preprocessing, tree

from models import registry
from models.base import FeatureBatch, ModelContext
from models.river import MANY_MIN_ROWS, RiverModel, predicts_many

CONTEXT = ModelContext(feature_names=("x1", "x2"), window=1, horizon=0, seed=11)


def linear_batch(rng: np.random.Generator, n: int) -> tuple[FeatureBatch, np.ndarray]:
    """Rows of ``y = 2*x1 - x2 + small noise`` in level mode (offset 0)."""
    x = rng.normal(size=(n, 2))
    y = 2.0 * x[:, 0] - x[:, 1] + 0.01 * rng.normal(size=n)
    batch = FeatureBatch(
        x=x,
        window=np.full((n, 1), np.nan),
        offset=np.zeros(n),
        keys=["k"] * n,
        feature_names=["x1", "x2"],
    )
    return batch, y


def train_and_score(
    params: dict[str, Any], rows: int, batch_size: int, kind: str = "river.linear"
) -> float:
    rng = np.random.default_rng(0)
    train, target = linear_batch(rng, rows)
    test, y = linear_batch(rng, 500)
    model = registry.build(kind, params, CONTEXT)
    for start in range(0, rows, batch_size):
        idx = np.arange(start, min(start + batch_size, rows))
        model.learn(train.take(idx), target[idx])
    return float(np.mean(np.abs(model.predict(test) - y)))


def test_linear_learns_a_linear_function_from_a_few_thousand_rows() -> None:
    assert train_and_score({}, rows=3000, batch_size=32) < 0.05


def test_linear_learning_does_not_depend_on_batch_size() -> None:
    # one SGD step per event: batching only changes how rows are grouped
    assert train_and_score({}, rows=3000, batch_size=1) == pytest.approx(
        train_and_score({}, rows=3000, batch_size=100), rel=1e-9
    )


def test_custom_mini_batch_mode_learns_with_one_step_per_batch() -> None:
    params = {"estimator": "linear_model.LinearRegression", "mini_batch": True}
    untrained = train_and_score(params, rows=0, batch_size=16, kind="river.custom")
    trained = train_and_score(params, rows=3000, batch_size=16, kind="river.custom")
    assert trained < 0.5 * untrained


def test_predict_many_and_predict_one_agree() -> None:
    rng = np.random.default_rng(1)
    model = registry.build("river.linear", {}, CONTEXT)
    assert isinstance(model, RiverModel)
    assert predicts_many(model.estimator)  # through the target scaler, see predict_frame
    model.learn(*linear_batch(rng, 300))
    big, _ = linear_batch(rng, MANY_MIN_ROWS + 8)  # predict_many path
    chunks = [big.take(np.arange(i, min(i + 10, len(big)))) for i in range(0, len(big), 10)]
    one_by_one = np.concatenate([model.predict(chunk) for chunk in chunks])
    np.testing.assert_allclose(model.predict(big), one_by_one, rtol=1e-12, atol=1e-12)


class Silent:
    """A River-like regressor that has nothing to say yet."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def learn_one(self, x: dict[str, Any], y: Any) -> None:
        pass

    def predict_one(self, x: dict[str, Any]) -> Any:
        return self.value

    def clone(self) -> Silent:
        return Silent(self.value)


@pytest.mark.parametrize("value", [None, float("nan"), float("inf")])
def test_non_finite_river_outputs_become_zero(value: Any) -> None:
    batch, _ = linear_batch(np.random.default_rng(2), 4)
    out = RiverModel(Silent(value)).predict(batch)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.zeros(4))


def test_learn_refuses_bad_targets() -> None:
    model = RiverModel(linear_model.LinearRegression())
    batch, y = linear_batch(np.random.default_rng(3), 4)
    with pytest.raises(ValueError, match="non-finite"):
        model.learn(batch, np.where(np.arange(4) == 2, np.nan, y))
    with pytest.raises(ValueError, match="shape"):
        model.learn(batch, y[:3])
    assert model.updates == 0


def test_empty_batches_predict_nothing_and_learn_nothing() -> None:
    model = RiverModel(linear_model.LinearRegression())
    batch, y = linear_batch(np.random.default_rng(4), 3)
    empty = batch.take(np.zeros(0, dtype=np.intp))
    assert model.predict(empty).shape == (0,)
    model.learn(empty, y[:0])
    assert model.updates == 0


def test_state_dict_refuses_another_estimator_class() -> None:
    state = RiverModel(linear_model.LinearRegression()).state_dict()
    with pytest.raises(ValueError, match="LinearRegression"):
        RiverModel(tree.HoeffdingTreeRegressor()).load_state_dict(state)


def test_mini_batch_needs_learn_many() -> None:
    with pytest.raises(ValueError, match="mini_batch"):
        RiverModel(preprocessing.StandardScaler() | tree.HoeffdingTreeRegressor(), mini_batch=True)


def test_tree_and_forest_are_seeded_from_the_context() -> None:
    tree_model = registry.build("river.tree", {}, CONTEXT)
    forest_model = registry.build("river.forest", {"n_models": 3}, CONTEXT)
    assert isinstance(tree_model, RiverModel)
    assert isinstance(forest_model, RiverModel)
    assert tree_model.estimator.seed == CONTEXT.seed  # type: ignore[attr-defined]
    assert forest_model.estimator.seed == CONTEXT.seed  # type: ignore[attr-defined]
    assert forest_model.estimator.n_models == 3  # type: ignore[attr-defined]


def test_custom_resolves_the_estimator_and_passes_args() -> None:
    model = registry.build(
        "river.custom", {"estimator": "linear_model.PARegressor", "args": {"C": 0.5}}, CONTEXT
    )
    assert isinstance(model, RiverModel)
    regressor = model.estimator  # no StandardScaler in front by default
    assert isinstance(regressor, linear_model.PARegressor)
    assert regressor.C == 0.5


def test_custom_passes_the_seed_unless_args_set_one() -> None:
    path = "tree.HoeffdingAdaptiveTreeRegressor"
    seeded = registry.build("river.custom", {"estimator": path, "scale": False}, CONTEXT)
    explicit = registry.build(
        "river.custom", {"estimator": path, "scale": False, "args": {"seed": 3}}, CONTEXT
    )
    assert seeded.estimator.seed == CONTEXT.seed  # type: ignore[attr-defined]
    assert explicit.estimator.seed == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("params", "loc", "message"),
    [
        ({"estimator": "linear_model.Nope"}, ("estimator",), "has no class 'Nope'"),
        ({"estimator": "nowhere.Regressor"}, ("estimator",), "cannot import river.nowhere"),
        ({"estimator": "preprocessing.StandardScaler"}, ("estimator",), "not a regressor"),
        ({"estimator": "os.path.join"}, ("estimator",), "cannot import river.os"),
        ({"estimator": "PARegressor"}, ("estimator",), "module.ClassName"),
        ({"estimator": "../linear_model.PARegressor"}, ("estimator",), "module.ClassName"),
        ({"estimator": "base.Regressor"}, ("estimator",), "base class"),
        (
            {"estimator": "linear_model.PARegressor", "args": {"speed": 1}},
            ("args",),
            "cannot build river.linear_model.PARegressor",
        ),
        (
            {"estimator": "linear_model.PARegressor", "mini_batch": True},
            ("mini_batch",),
            "no learn_many",
        ),
        ({"estimator": "linear_model.PARegressor", "scaled": True}, ("scaled",), "Extra"),
        ({}, ("estimator",), "Field required"),
    ],
)
def test_custom_rejects_bad_params(
    params: dict[str, Any], loc: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        registry.validate_params("river.custom", params)
    errors = info.value.errors()
    assert [error["loc"] for error in errors] == [loc]
    assert message in errors[0]["msg"]
