"""The ``ridge`` kind: a regression of the level on the event's raw features, solved in
their own running frame, so that the order rows come in does not skew the fit."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from models import registry
from models.base import FeatureBatch, ModelContext, Plan, interleaved, run_plan
from models.ridge import RAW_LIMIT, OnlineRidge, RidgeParams, solve_every
from models.rls import RLS

CONTEXT = ModelContext(
    feature_names=("diff_1", "a", "b"), window=1, horizon=0, exogenous=("a", "b")
)


def table(
    raw: np.ndarray,
    offset: np.ndarray | None = None,
    unit: np.ndarray | None = None,
    scaled: np.ndarray | None = None,
) -> FeatureBatch:
    """Rows of a table: ``raw`` the events' features; ``scaled`` what the pipeline's
    ``x`` holds (default: noise, which the model must not read when it has ``raw``)."""
    n = len(raw)
    x = np.random.default_rng(99).normal(size=(n, 3)) if scaled is None else scaled
    return FeatureBatch(
        x=x,
        window=np.full((n, 1), np.nan),
        offset=np.zeros(n) if offset is None else offset,
        keys=["k"] * n,
        feature_names=list(CONTEXT.feature_names),
        scale=unit,
        exogenous=raw,
    )


def one_by_one(model: OnlineRidge, batch: FeatureBatch, level: np.ndarray) -> np.ndarray:
    """Each row predicted, then learned (a table at horizon 0); the levels predicted."""
    out = np.empty(len(level))
    for i in range(len(level)):
        row = batch.rows(i, i + 1)
        out[i] = row.offset[0] + row.units[0] * model.predict(row)[0]
        model.learn(row, row.to_target(level[i : i + 1]))
    return out


def test_it_holds_the_exact_ridge_fit_of_its_rows_in_their_own_frame() -> None:
    """After n rows (errors unclipped) its forecast is that of the weighted ridge
    regression on the rows standardised by their own weighted mean and spread, with
    the penalty on the standardised slopes and on the intercept about the anchor."""
    rng = np.random.default_rng(0)
    n = 300
    raw = np.column_stack([rng.normal(1000.0, 50.0, n), rng.normal(0.0, 0.01, n)])
    level = 0.5 * raw[:, 0] + 300.0 * raw[:, 1] + rng.normal(0, 3.0, n)
    params = RidgeParams(memory=100, ridge=5.0, clip=1e9)
    model = OnlineRidge(params, columns=(1, 2))
    model.learn(table(raw), level)
    age = (1 - 1 / params.memory) ** np.arange(n - 1, -1, -1)
    mean = age @ raw / age.sum()
    spread = np.sqrt(age @ (raw - mean) ** 2 / age.sum())
    z = (raw - mean) / spread
    anchored = level - level[0]
    gram = (z * age[:, None]).T @ z + params.ridge * np.eye(2)
    slopes = np.linalg.solve(gram, (z * age[:, None]).T @ anchored)
    intercept = age @ anchored / (age.sum() + params.ridge)
    probe = np.array([[990.0, 0.005], [1040.0, -0.02]])
    exact = level[0] + intercept + ((probe - mean) / spread) @ slopes
    np.testing.assert_allclose(model.predict(table(probe)), exact, rtol=1e-9)


def test_its_forecasts_do_not_depend_on_the_features_units() -> None:
    """A feature in grams or in tonnes, shifted by a year's worth of seconds: the same
    forecasts (the penalty acts on standardised slopes)."""
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(200, 2))
    level = 3.0 * raw[:, 0] - raw[:, 1] + rng.normal(0, 0.5, 200)
    other = raw * np.array([1e6, 1e-4]) + np.array([3.15e7, -12.0])
    a = one_by_one(OnlineRidge(RidgeParams(), (1, 2)), table(raw), level)
    b = one_by_one(OnlineRidge(RidgeParams(), (1, 2)), table(other), level)
    np.testing.assert_allclose(a[1:], b[1:], rtol=1e-7, atol=1e-7)


def test_rows_sorted_by_a_feature_are_fitted_as_well_as_shuffled_ones() -> None:
    """Why it replaced ``rls`` on the scaled features as the tables' member: rows that
    come sorted (cars by model year) move the pipeline's running scale all along, and
    a fit that keeps its past rows in the scale of their day drifts from the truth;
    one in the features' own frame does not."""
    from service.pipeline.features import RunningScaler

    rng = np.random.default_rng(2)
    n = 400
    raw = np.sort(rng.uniform(0.0, 100.0, size=(n, 1)), axis=0)
    raw = np.column_stack([raw, rng.normal(size=n)])
    level = 2.0 * raw[:, 0] + 5.0 * raw[:, 1] + rng.normal(0, 1.0, n)
    scaler = RunningScaler(2)
    scaled = np.column_stack([np.zeros(n), scaler.fit_transform(raw)])
    batch = table(raw, scaled=scaled)
    ridge = one_by_one(OnlineRidge(RidgeParams(), (1, 2)), batch, level)
    old = registry.build("rls", {"inputs": "exogenous", "target": "level", "ridge": 1.0}, CONTEXT)
    assert isinstance(old, RLS)
    scaled_fit = np.empty(n)
    for i in range(n):
        row = batch.rows(i, i + 1)
        scaled_fit[i] = old.predict(row)[0]
        old.learn(row, level[i : i + 1])
    late = slice(n // 5, None)
    ridge_mae = float(np.mean(np.abs(ridge[late] - level[late])))
    scaled_mae = float(np.mean(np.abs(scaled_fit[late] - level[late])))
    assert ridge_mae < 1.2  # the noise's MAE is 0.8
    assert ridge_mae < 0.5 * scaled_mae


def test_it_learns_the_level_whatever_each_rows_offset_and_unit() -> None:
    rng = np.random.default_rng(3)
    n = 500
    raw = rng.normal(size=(n, 2))
    level = 300.0 + 20.0 * raw[:, 0] - 5.0 * raw[:, 1] + rng.normal(0, 0.1, n)
    offset = rng.uniform(250.0, 350.0, n)  # an unrelated previous row's value
    unit = rng.uniform(5.0, 50.0, n)
    model = registry.build("ridge", {}, CONTEXT)
    batch = table(raw, offset, unit)
    model.learn(batch, batch.to_target(level))
    predicted = offset + unit * model.predict(batch)
    assert float(np.mean(np.abs(predicted - level))) < 0.2


def test_without_raw_features_it_reads_their_columns_of_x() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 3))
    level = 4.0 * x[:, 1] + 2.0 * x[:, 2] + 10.0
    batch = FeatureBatch(
        x=x,
        window=np.full((300, 1), np.nan),
        offset=np.zeros(300),
        keys=["k"] * 300,
        feature_names=list(CONTEXT.feature_names),
    )
    model = registry.build("ridge", {}, CONTEXT)
    model.learn(batch, level)
    np.testing.assert_allclose(model.predict(batch), level, atol=0.1)  # ridge: a small shrink
    none_kept = dataclasses.replace(batch, exogenous=np.empty((300, 0)))  # a task's (n, 0)
    np.testing.assert_array_equal(model.predict(none_kept), model.predict(batch))


def test_one_outlier_row_moves_the_fit_by_a_bounded_step() -> None:
    rng = np.random.default_rng(5)
    raw = rng.normal(size=(300, 2))
    level = raw @ np.array([2.0, -1.0]) + rng.normal(0, 0.1, 300)
    probe = table(rng.normal(size=(50, 2)))
    moved = {}
    for clip in (4.0, 1e9):
        model = OnlineRidge(RidgeParams(clip=clip), (1, 2))
        model.learn(table(raw), level)
        before = model.predict(probe)
        model.learn(table(raw[:1]), np.array([1e6]))
        moved[clip] = float(np.max(np.abs(model.predict(probe) - before)))
    assert moved[4.0] < 1.0 < moved[1e9]


def test_missing_huge_and_non_finite_values_neither_raise_nor_poison_it() -> None:
    rng = np.random.default_rng(6)
    raw = rng.normal(size=(200, 2))
    level = raw @ np.array([1.0, 2.0]) + 5.0
    model = OnlineRidge(RidgeParams(), (1, 2))
    model.learn(table(raw), level)
    hostile = np.array([[np.nan, 1.0], [1e300, 0.5], [-np.inf, 0.0], [RAW_LIMIT * 10, 1.0]])
    model.learn(table(hostile), np.array([1.0, np.inf, np.nan, 1e308]))
    out = model.predict(table(np.vstack([hostile, raw[:5]])))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[4:], level[:5], atol=0.2)
    assert model.nonfinite_events == 0


def test_with_no_features_it_forecasts_the_levels_mean() -> None:
    context = ModelContext(feature_names=("diff_1",), window=1, horizon=0)
    model = registry.build("ridge", {"ridge": 1.0}, context)
    n = 100
    batch = FeatureBatch(
        x=np.zeros((n, 1)),
        window=np.full((n, 1), np.nan),
        offset=np.zeros(n),
        keys=["k"] * n,
        feature_names=["diff_1"],
        exogenous=np.empty((n, 0)),
    )
    level = np.where(np.arange(n) % 2 == 0, 10.0, 20.0)
    model.learn(batch, level)
    assert model.predict(batch.rows(0, 1)).item() == pytest.approx(15.0, abs=0.2)


def test_its_state_goes_on_where_it_stopped_and_refuses_another_feature_list() -> None:
    """Past 1,024 rows it solves every 4th: a state saved between two solves carries
    the solve in use and its age, so the restored model's forecasts are the
    original's to the bit."""
    rng = np.random.default_rng(7)
    n = 1200
    raw = rng.normal(size=(n, 2))
    level = raw @ np.array([1.0, -3.0]) + np.linspace(0.0, 3.0, n) + rng.normal(0, 0.1, n)
    model = OnlineRidge(RidgeParams(), (1, 2))
    model.learn(table(raw[:1030]), level[:1030])
    model.predict(table(raw[:1]))  # a solve, now in use
    model.learn(table(raw[1030:1031]), level[1030:1031])  # one row learned since
    assert solve_every(model.updates) == 4
    restored = model.clone()
    restored.load_state_dict(copy.deepcopy(model.state_dict()))
    rest = table(raw[1031:])
    np.testing.assert_array_equal(
        one_by_one(restored, rest, level[1031:]), one_by_one(model, rest, level[1031:])
    )
    assert restored.updates == n
    narrow = OnlineRidge(RidgeParams(), (1,))
    with pytest.raises(ValueError, match="feature list changed"):
        narrow.load_state_dict(model.state_dict())


def test_a_failed_solve_keeps_the_solve_in_use_restored_or_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A solve that fails (LAPACK refuses the system) leaves the last good one in use
    and is counted; a restored model falls back to the solve its state carried, as
    the original does, not to no solve at all."""
    rng = np.random.default_rng(9)
    raw = rng.normal(size=(600, 2))
    level = raw @ np.array([2.0, -1.0]) + 5.0
    model = OnlineRidge(RidgeParams(), (1, 2))
    model.learn(table(raw[:520]), level[:520])
    probe = table(raw[:5])
    before = model.predict(probe)  # a solve, now in use
    restored = model.clone()
    restored.load_state_dict(copy.deepcopy(model.state_dict()))
    refused = (None, np.zeros(2), 1)  # dposv's (factor, solution, info != 0)
    monkeypatch.setattr("models.ridge.dposv", lambda *args, **kwargs: refused)
    for fitted in (model, restored):
        fitted.learn(table(raw[520:530]), level[520:530])  # solves due, each refused
        np.testing.assert_array_equal(fitted.predict(probe), before)
    assert model.nonfinite_events == restored.nonfinite_events > 0


@pytest.mark.parametrize("poll", [7, 1000])
def test_its_forecasts_do_not_depend_on_how_rows_are_batched(poll: int) -> None:
    """Solves are due by the count of rows learned alone: a stream of 3,000 rows at
    horizon 0 (each row predicted, then learned) gives the same forecasts in polls of
    1, 7 or 1,000, past the point where it stops solving after every row."""
    rng = np.random.default_rng(8)
    n = 3000
    raw = rng.normal(size=(n, 2))
    level = raw @ np.array([1.0, -2.0]) + np.linspace(0.0, 5.0, n) + rng.normal(0, 0.1, n)

    def forecasts(size: int) -> np.ndarray:
        model = OnlineRidge(RidgeParams(), (1, 2))
        out = []
        for start in range(0, n, size):
            rows = table(raw[start : start + size])
            k = len(rows)
            plan = Plan(rows, rows, level[start : start + k], np.arange(1, k + 1))
            out.append(run_plan(model, plan))
        return np.concatenate(out)

    assert solve_every(n) > 1
    np.testing.assert_array_equal(forecasts(poll), forecasts(1))


def test_its_plan_runner_makes_the_generic_loops_calls_to_the_bit() -> None:
    rng = np.random.default_rng(9)
    n = 700
    raw = rng.normal(size=(n, 2))
    raw[::13, 1] = np.nan
    level = raw[:, 0] * 3.0 + rng.normal(0, 0.1, n)
    rows = table(raw, offset=rng.normal(size=n), unit=rng.uniform(1.0, 2.0, n))
    plan = Plan(rows, rows, rows.to_target(level), np.arange(1, n + 1))
    runner, generic = OnlineRidge(RidgeParams(), (1, 2)), OnlineRidge(RidgeParams(), (1, 2))
    expected = interleaved(
        plan,
        lambda a, b: generic.predict(plan.predict.rows(a, b)),
        lambda a, b: generic.learn(plan.learn.rows(a, b), plan.target[a:b]),
    )
    np.testing.assert_array_equal(runner.run(plan), expected)
    assert runner.state_dict()["sxx"].tolist() == generic.state_dict()["sxx"].tolist()
