"""The ``rls`` kind: least squares without a learning rate, bounded steps, forgetting."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest

from models import registry
from models.base import FeatureBatch, Model, ModelContext, Plan, run_plan
from models.rls import RLS, KeyedRLS, RLSParams

CONTEXT = ModelContext(feature_names=("x1", "x2", "x3"), window=1, horizon=0, seed=3)


def rows(x: np.ndarray, context: ModelContext = CONTEXT) -> FeatureBatch:
    """Rows whose offset is 0 and unit 1 (a level model's targets are levels)."""
    n = len(x)
    return FeatureBatch(
        x=x,
        window=np.full((n, 1), np.nan),
        offset=np.zeros(n),
        keys=["k"] * n,
        feature_names=list(context.feature_names),
    )


def stream(rng: np.random.Generator, n: int, coefficients: np.ndarray) -> tuple[np.ndarray, ...]:
    x = rng.normal(size=(n, 3))
    return x, x @ coefficients + 0.5 + 0.1 * rng.normal(size=n)


def test_it_holds_the_exact_weighted_ridge_fit_after_every_event() -> None:
    """RLS is not an approximation: after n events its weights solve the ridge
    problem with weights ``lambda ** age`` on the events and ``lambda ** n * ridge``
    on the prior (errors unclipped)."""
    rng = np.random.default_rng(0)
    x, y = stream(rng, 300, np.array([2.0, -1.0, 0.3]))
    params = RLSParams(memory=100, ridge=10.0, clip=1e9)
    model = RLS(params, n_features=3)
    model.learn(rows(x), y)
    forget = 1 - 1 / params.memory
    age = forget ** np.arange(len(y) - 1, -1, -1)
    design = np.column_stack([x, np.ones(len(x))])
    gram = (design * age[:, None]).T @ design + forget ** len(y) * params.ridge * np.eye(4)
    exact = np.linalg.solve(gram, (design * age[:, None]).T @ y)
    np.testing.assert_allclose(model.weights, exact, atol=1e-6)


def test_it_learns_faster_than_sgd_on_few_rows() -> None:
    """The reason it is a default member: on a few hundred rows SGD has barely moved."""
    rng = np.random.default_rng(1)
    x, y = stream(rng, 200, np.array([2.0, -1.0, 0.3]))
    test_x, test_y = stream(rng, 500, np.array([2.0, -1.0, 0.3]))
    errors = {}
    for kind in ("rls", "river.linear"):
        model = registry.build(kind, {}, CONTEXT)
        model.learn(rows(x), y)
        errors[kind] = float(np.mean(np.abs(model.predict(rows(test_x)) - test_y)))
    assert errors["rls"] < 0.5 * errors["river.linear"]


def test_it_follows_a_change_of_the_relation_within_a_few_memories() -> None:
    rng = np.random.default_rng(2)
    model = RLS(RLSParams(memory=200), n_features=3)
    before, after = np.array([2.0, -1.0, 0.3]), np.array([-1.0, 1.0, 0.0])
    for coefficients in (before, after):
        x, y = stream(rng, 1500, coefficients)
        model.learn(rows(x), y)
    np.testing.assert_allclose(model.weights[:3], after, atol=0.05)


def test_one_outlier_moves_the_fit_by_a_bounded_step() -> None:
    rng = np.random.default_rng(3)
    x, y = stream(rng, 500, np.array([2.0, -1.0, 0.3]))
    probe = rng.normal(size=(50, 3))
    moved = {}
    for clip in (4.0, 1e9):
        model = RLS(RLSParams(clip=clip), n_features=3)
        model.learn(rows(x), y)
        before = model.predict(rows(probe))
        model.learn(rows(x[:1]), np.array([1e6]))
        moved[clip] = float(np.max(np.abs(model.predict(rows(probe)) - before)))
    assert moved[4.0] < 1.0 < moved[1e9]


def test_an_input_that_stops_varying_does_not_wind_up_the_covariance() -> None:
    """Forgetting alone would grow P without bound along a silent input, and the next
    event that excites it would throw the weights."""
    rng = np.random.default_rng(4)
    model = RLS(RLSParams(memory=50), n_features=3)
    x, y = stream(rng, 200, np.array([2.0, -1.0, 0.3]))
    model.learn(rows(x), y)
    silent = x.copy()
    silent[:, 2] = 0.0
    for _ in range(20):
        model.learn(rows(silent), silent @ np.array([2.0, -1.0, 0.3]) + 0.5)
    state = model.state_dict()
    assert np.trace(state["p"]) * state["p_scale"] <= 4 / RLSParams().ridge + 1e-9
    model.learn(rows(np.array([[0.0, 0.0, 5.0]])), np.array([2.0]))
    assert np.all(np.abs(model.weights) < 10)


def test_a_state_of_another_feature_list_is_refused() -> None:
    model = RLS(RLSParams(), n_features=3)
    other = RLS(RLSParams(), n_features=5)
    with pytest.raises(ValueError, match="feature list changed"):
        model.load_state_dict(other.state_dict())


def test_a_covariance_broken_by_rounding_starts_again_from_the_prior() -> None:
    rng = np.random.default_rng(5)
    model = RLS(RLSParams(), n_features=3)
    x, y = stream(rng, 100, np.array([2.0, -1.0, 0.3]))
    model.learn(rows(x), y)
    weights = model.weights.copy()
    state = model.state_dict()
    model.load_state_dict({**state, "p": -np.eye(4)})  # what rounding could leave
    model.learn(rows(x[:1]), y[:1])
    assert model.nonfinite_events == 1
    np.testing.assert_array_equal(model.weights, weights)
    model.learn(rows(x), y)
    assert np.all(np.isfinite(model.predict(rows(x))))


def test_on_its_exogenous_inputs_it_is_a_regression_of_the_level() -> None:
    """``inputs: exogenous, target: level``: it reads only the event's own features
    (the last columns), learns the value itself from the pipeline's targets and
    returns its forecasts as targets, whatever the offset and unit of each row."""
    context = ModelContext(
        feature_names=("diff_1", "a", "b"), window=1, horizon=0, exogenous=("a", "b")
    )
    model = registry.build("rls", {"inputs": "exogenous", "target": "level", "ridge": 1.0}, context)
    rng = np.random.default_rng(4)
    n = 600
    x = rng.normal(size=(n, 3))
    level = 300.0 + 20.0 * x[:, 1] - 5.0 * x[:, 2] + rng.normal(0, 0.1, size=n)
    offset = rng.uniform(250.0, 350.0, size=n)  # an unrelated previous row's value
    unit = rng.uniform(5.0, 50.0, size=n)
    batch = FeatureBatch(
        x=x,
        window=np.full((n, 1), np.nan),
        offset=offset,
        keys=["k"] * n,
        feature_names=list(context.feature_names),
        scale=unit,
    )
    model.learn(batch, (level - offset) / unit)
    assert isinstance(model, RLS)
    np.testing.assert_allclose(model.weights[:2], [20.0, -5.0], atol=0.05)
    assert model.predict(rows(np.zeros((1, 3)), context)).item() == pytest.approx(300.0, abs=0.1)
    predicted = offset + unit * model.predict(batch)
    assert float(np.mean(np.abs(predicted - level))) < 0.2
    x[:, 0] = 1e6  # a column it does not read
    np.testing.assert_allclose(offset + unit * model.predict(batch), predicted)
    clone = model.clone()
    assert isinstance(clone, RLS)
    assert (clone.columns, clone.level) == ((1, 2), True)


def test_a_model_pickled_before_inputs_existed_reads_every_feature() -> None:
    model = RLS(RLSParams(), n_features=3)
    rng = np.random.default_rng(2)
    x, y = stream(rng, 50, np.array([1.0, 2.0, 3.0]))
    model.learn(rows(x), y)
    state = dict(model.__dict__)
    for name in ("columns", "_take", "level", "_anchor"):
        del state[name]
    params = dict(model.params.__dict__)
    del params["inputs"], params["target"]
    state["params"] = RLSParams.model_construct(**params)
    old = RLS.__new__(RLS)
    old.__setstate__(state)
    np.testing.assert_allclose(old.predict(rows(x)), model.predict(rows(x)))
    assert old.clone().params == RLSParams()


def test_the_exogenous_features_are_the_last_columns() -> None:
    with pytest.raises(ValueError, match="last of the feature names"):
        ModelContext(feature_names=("a", "diff_1"), window=1, horizon=0, exogenous=("a",))


def keyed_rows(x: np.ndarray, keys: list[str]) -> FeatureBatch:
    n = len(x)
    return FeatureBatch(
        x=x,
        window=np.full((n, 1), np.nan),
        offset=np.zeros(n),
        keys=keys,
        feature_names=list(CONTEXT.feature_names),
    )


def test_one_key_in_buckets_is_the_shared_fit_exactly() -> None:
    """With one key (or keys in one bucket) the keyed model is the shared one, to the
    bit: single-series topics forecast as before."""
    rng = np.random.default_rng(1)
    x, y = stream(rng, 400, np.array([1.0, 0.5, -2.0]))
    shared, keyed = RLS(RLSParams(), n_features=3), KeyedRLS(RLSParams(key_buckets=128), 3)
    batch = keyed_rows(x, ["only"] * 400)
    shared.learn(batch, y)
    keyed.learn(batch, y)
    assert np.array_equal(keyed.predict(batch), shared.predict(batch))
    assert keyed.updates == shared.updates == 400


def test_unlike_keys_each_get_their_own_fit() -> None:
    """Two keys whose changes follow opposite relations, interleaved: one shared fit
    learns their blend (near nothing), the keyed model each key's own."""
    rng = np.random.default_rng(2)
    x, _ = stream(rng, 2000, np.zeros(3))
    keys = ["up", "down"] * 1000
    sign = np.where(np.array(keys) == "up", 1.0, -1.0)
    y = sign * (x @ np.array([2.0, -1.0, 0.5])) + 0.05 * rng.normal(size=2000)
    batch = keyed_rows(x, keys)
    shared, keyed = RLS(RLSParams(), n_features=3), KeyedRLS(RLSParams(key_buckets=128), 3)
    shared.learn(batch, y)
    keyed.learn(batch, y)
    probe = keyed_rows(rng.normal(size=(200, 3)), ["up", "down"] * 100)
    truth = np.where(np.array(probe.keys) == "up", 1.0, -1.0) * (probe.x @ [2.0, -1.0, 0.5])
    keyed_error = np.mean(np.abs(keyed.predict(probe) - truth))
    shared_error = np.mean(np.abs(shared.predict(probe) - truth))
    assert keyed_error < 0.1 < shared_error


class WithoutRunner:
    """A model behind ``predict`` and ``learn`` alone: :func:`run_plan` drives it with
    its generic loop."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def predict(self, batch: FeatureBatch) -> np.ndarray:
        return self.model.predict(batch)

    def learn(self, batch: FeatureBatch, target: np.ndarray) -> None:
        self.model.learn(batch, target)


def test_its_plan_runner_makes_the_generic_loops_calls_to_the_bit() -> None:
    """``KeyedRLS.run`` takes the buckets and learned rows of a whole plan at once;
    its numbers are those of :func:`run_plan`'s generic loop (predict the rows up to
    each learned row, learn it), row for row and bit for bit, for a level model too."""
    rng = np.random.default_rng(4)
    n = 300
    x, y = stream(rng, n, np.array([1.0, -0.5, 2.0]))
    keys = [f"k{i % 5}" for i in range(n)]
    batch = keyed_rows(x, keys)
    for params in (RLSParams(key_buckets=4), RLSParams(key_buckets=4, target="level")):
        planned, looped = KeyedRLS(params, 3), KeyedRLS(params, 3)
        for start in range(0, n, 60):  # polls of 60; a row resolves the one 3 before it
            stop = min(start + 60, n)
            learned = np.arange(max(start - 3, 0), stop - 3)
            plan = Plan(
                predict=batch.rows(start, stop),
                learn=batch.take(learned),
                target=y[learned],
                before=np.clip(learned + 3 - start, 0, stop - start).astype(np.intp),
            )
            generic = run_plan(cast(Model, WithoutRunner(looped)), plan)
            np.testing.assert_array_equal(planned.run(plan), generic)
        assert planned.updates == looped.updates


def test_buckets_are_made_as_keys_learn_and_bounded() -> None:
    model = KeyedRLS(RLSParams(key_buckets=4), n_features=3)
    x = np.random.default_rng(3).normal(size=(100, 3))
    model.predict(keyed_rows(x, [f"k{i}" for i in range(100)]))
    assert model.state_dict()["buckets"] == {}  # predicting makes no fit
    model.learn(keyed_rows(x, [f"k{i}" for i in range(100)]), x[:, 0])
    assert set(model.state_dict()["buckets"]) == {"0", "1", "2", "3"}


def test_a_shared_checkpoint_goes_on_as_every_buckets_start() -> None:
    """Turning key_buckets on keeps the learned state (the fingerprint leaves it out):
    each bucket starts from the checkpoint's shared fit, then learns its own keys."""
    rng = np.random.default_rng(4)
    x, y = stream(rng, 500, np.array([1.5, 0.0, -1.0]))
    shared = RLS(RLSParams(), n_features=3)
    shared.learn(keyed_rows(x, ["a"] * 500), y)
    keyed = KeyedRLS(RLSParams(key_buckets=16), n_features=3).adopt(shared)
    assert isinstance(keyed, KeyedRLS)
    probe = keyed_rows(x[:5], ["new", "b", "c", "d", "e"])
    assert np.allclose(keyed.predict(probe), shared.predict(probe))
    keyed.learn(keyed_rows(x[:1], ["b"]), y[:1])
    assert shared.updates == 500  # the restored fit itself is not moved by a bucket
    assert keyed.updates == 501  # the published model version goes on counting
    back = RLS(RLSParams(), n_features=3).adopt(keyed)
    assert isinstance(back, RLS)
    assert back.updates == 501


def test_the_registry_builds_the_keyed_model_when_asked() -> None:
    assert isinstance(registry.build("rls", {"key_buckets": 2}, CONTEXT), KeyedRLS)
    assert isinstance(registry.build("rls", {}, CONTEXT), RLS)
