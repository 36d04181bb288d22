"""``knn``: the nearest of the latest rows, the same in any batching, and what it is for:
a pattern that repeats learned from a few repetitions, where a linear fit cannot."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from models import registry
from models.base import FeatureBatch, ModelContext, Plan, run_plan
from models.knn import KNN, KeyedKNN, KNNParams

NAMES = tuple(f"f{i}" for i in range(32))


def rows(x: np.ndarray, keys: list[str] | None = None) -> FeatureBatch:
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    return FeatureBatch(
        x=x,
        window=np.zeros((len(x), 1)),
        offset=np.zeros(len(x)),
        keys=["k"] * len(x) if keys is None else keys,
        feature_names=NAMES[: x.shape[1]],
    )


def one_step_plan(x: np.ndarray, y: np.ndarray, start: int, stop: int) -> Plan:
    """Rows ``start:stop`` of a one-step-ahead stream as one poll: each row's truth
    arrives with the next row, so the poll learns rows ``start-1 .. stop-2``."""
    learned = np.arange(max(start - 1, 0), stop - 1)
    return Plan(
        predict=rows(x[start:stop]),
        learn=rows(x[learned]),
        target=y[learned],
        before=(learned + 1 - start).astype(np.intp),
    )


def polled(x: np.ndarray, y: np.ndarray, poll: int, params: KNNParams) -> np.ndarray:
    model = KNN(params, n_features=x.shape[1])
    out = [model.run(one_step_plan(x, y, s, min(s + poll, len(y)))) for s in range(0, len(y), poll)]
    return np.concatenate(out)


@pytest.mark.parametrize("aggregate", ["mean", "median"])
def test_any_poll_size_gives_the_same_numbers(aggregate: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 27))  # as wide as a task's feature vector
    x[::7] = x[3]  # repeated rows: exact ties, which must go the same way in any poll
    y = rng.normal(size=600)
    params = KNNParams(window=40, aggregate=aggregate)
    one = polled(x, y, 1, params)
    for poll in (16, 1000):
        np.testing.assert_array_equal(polled(x, y, poll, params), one)


def test_a_prediction_sees_only_the_window_of_rows_learned_before_it() -> None:
    x = np.array([[0.0], [1.0], [2.0], [3.0], [0.1]])
    y = np.array([100.0, 1.0, 2.0, 3.0, 0.0])
    out = polled(x, y, 1000, KNNParams(neighbors=1, window=3))
    # row 0 has nothing to see (0: no change); row 1 sees only row 0; the last row's
    # nearest learned row (row 0, at 0.0) has left the 3-row window, so it gets row 1
    assert out.tolist() == [0.0, 100.0, 1.0, 2.0, 1.0]


def test_ties_go_to_the_newer_row() -> None:
    model = KNN(KNNParams(neighbors=1), n_features=1)
    model.learn(rows(np.array([1.0, 1.0, 1.0])), np.array([1.0, 2.0, 3.0]))
    assert model.predict(rows(np.array([1.0]))).tolist() == [3.0]


def test_median_resists_one_outlying_neighbour() -> None:
    x = np.zeros((5, 1))
    y = np.array([1.0, 1.1, 0.9, 1.0, 50.0])
    mean = KNN(KNNParams(), 1)
    median = KNN(KNNParams(aggregate="median"), 1)
    for model in (mean, median):
        model.learn(rows(x), y)
    assert mean.predict(rows(np.zeros(1)))[0] == pytest.approx(10.8)
    assert median.predict(rows(np.zeros(1)))[0] == pytest.approx(1.0)


def test_state_round_trips_and_refuses_another_feature_list() -> None:
    rng = np.random.default_rng(2)
    model = KNN(KNNParams(window=10), n_features=2)
    model.learn(rows(rng.normal(size=(25, 2))), rng.normal(size=25))
    clone = model.clone()
    clone.load_state_dict(model.state_dict())
    probe = rows(rng.normal(size=(8, 2)))
    np.testing.assert_array_equal(clone.predict(probe), model.predict(probe))
    assert clone.updates == model.updates == 25
    with pytest.raises(ValueError, match="feature list changed"):
        KNN(KNNParams(), n_features=3).load_state_dict(model.state_dict())


def test_a_repeating_pattern_is_learned_from_a_few_repetitions() -> None:
    # the change that follows depends on where in a 12-step cycle the series is, through
    # a phase feature that no linear map turns into the changes; after three cycles the
    # nearest rows are the same phase of earlier cycles
    context = ModelContext(feature_names=("cos", "sin"), window=4, horizon=1, seed=0)
    steps = np.array([5.0, 3.0, -1.0, -6.0, -2.0, 0.5, 4.0, -3.0, 1.0, -4.0, 2.0, 0.5])
    phase = 2 * np.pi * (np.arange(120) % 12) / 12
    x = np.column_stack([np.cos(phase), np.sin(phase)])
    y = steps[np.arange(120) % 12] + np.random.default_rng(3).normal(0.0, 0.2, size=120)
    errors = {}
    for kind in ("knn", "rls"):
        model = registry.build(kind, {}, context)
        batch = FeatureBatch(
            x=x,
            window=np.zeros((120, 4)),
            offset=np.zeros(120),
            keys=["k"] * 120,
            feature_names=context.feature_names,
        )
        plan = Plan(predict=batch, learn=batch, target=y, before=np.arange(1, 121))
        errors[kind] = float(np.abs(run_plan(model, plan) - y)[48:].mean())
    assert errors["knn"] < 0.5, errors
    assert errors["knn"] < 0.2 * errors["rls"], errors


def context_of(x: np.ndarray) -> ModelContext:
    return ModelContext(feature_names=NAMES[: x.shape[1]], window=1, horizon=1, seed=0)


def keyed_polled(x: np.ndarray, y: np.ndarray, keys: list[str], poll: int) -> np.ndarray:
    """A one-step stream of interleaved keys (each row's truth arrives with the next
    row), in polls of ``poll``, through the default keyed model."""
    model = registry.build("knn", {"window": 30, "shared_until": 10}, context_of(x))
    out = []
    for start in range(0, len(y), poll):
        stop = min(start + poll, len(y))
        learned = np.arange(max(start - 1, 0), stop - 1)
        plan = Plan(
            predict=rows(x[start:stop], keys[start:stop]),
            learn=rows(x[learned], [keys[i] for i in learned]),
            target=y[learned],
            before=(learned + 1 - start).astype(np.intp),
        )
        out.append(run_plan(model, plan))
    return np.concatenate(out)


def test_the_keyed_default_gives_the_same_numbers_in_any_poll_size() -> None:
    rng = np.random.default_rng(4)
    keys = [f"key-{i % 7}" for i in range(700)]
    x = rng.normal(size=(700, 27))
    x[::9] = x[5]  # exact ties
    y = rng.normal(size=700)
    one = keyed_polled(x, y, keys, 1)
    for poll in (5, 64, 1000):
        np.testing.assert_array_equal(keyed_polled(x, y, keys, poll), one)


def test_a_young_bucket_searches_the_tasks_rows_and_a_grown_one_its_own() -> None:
    params = KNNParams(neighbors=1, key_buckets=64, shared_until=3)
    model = KeyedKNN(params, n_features=1)
    model.learn(rows(np.zeros((3, 1)), ["up"] * 3), np.array([1.0, 1.0, 1.0]))
    # "down" has learned nothing: its row is predicted from every key's rows
    assert model.predict(rows(np.zeros((1, 1)), ["down"])).tolist() == [1.0]
    model.learn(rows(np.zeros((3, 1)), ["down"] * 3), np.array([-1.0, -1.0, -1.0]))
    # each has learned three rows now: its own are searched, although the newest
    # rows of the task (ties go to newer rows) are the other key's for "up"
    assert model.predict(rows(np.zeros((2, 1)), ["up", "down"])).tolist() == [1.0, -1.0]
    assert model.updates == 6


def test_a_checkpoint_of_one_window_goes_on_as_the_shared_window() -> None:
    """A checkpoint from before the buckets (or with another window) is adopted:
    its rows become the shared window, trimmed to the configured size, and the
    buckets fill from the next rows on."""
    rng = np.random.default_rng(5)
    old = KNN(KNNParams(window=100, key_buckets=1), n_features=2)
    old.learn(rows(rng.normal(size=(150, 2)), ["k"] * 150), rng.normal(size=150))
    fresh = KeyedKNN(KNNParams(window=50), n_features=2)
    adopted = fresh.adopt(old)
    assert isinstance(adopted, KeyedKNN)
    assert adopted.updates == 150
    probe = rows(rng.normal(size=(4, 2)), ["k"] * 4)
    trimmed = KNN(KNNParams(window=50), n_features=2)
    trimmed.learn(rows(old._x[-50:], ["k"] * 50), old._y[-50:])
    np.testing.assert_array_equal(adopted.predict(probe), trimmed.predict(probe))
    # a keyed checkpoint under the same params goes on as it is
    assert fresh.adopt(adopted) is adopted


def test_a_pickled_model_holds_its_window_and_goes_on_as_the_original() -> None:
    """The rows sit in a buffer with room to append; a checkpoint pickles the window
    alone, under the names it had before the buffer (``_x``, ``_y``), so checkpoints
    restore across versions, and the restored model goes on with the same numbers."""
    rng = np.random.default_rng(6)
    model = KNN(KNNParams(window=30), n_features=3)
    for _ in range(7):  # through the buffer's moves to the front
        model.learn(rows(rng.normal(size=(11, 3))), rng.normal(size=11))
    state = model.__getstate__()
    assert state["_x"].shape == (30, 3)
    assert state["_y"].shape == (30,)
    assert not {"_bx", "_by", "_bn", "_start", "_end"} & set(state)
    restored = pickle.loads(pickle.dumps(model))  # noqa: S301 - our own bytes
    for _ in range(3):
        probe = rows(rng.normal(size=(5, 3)))
        np.testing.assert_array_equal(restored.predict(probe), model.predict(probe))
        x, y = rng.normal(size=(9, 3)), rng.normal(size=9)
        model.learn(rows(x), y)
        restored.learn(rows(x), y)
    assert restored.updates == model.updates == 104
