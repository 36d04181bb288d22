"""Feature pipeline and running scaler against hand and numpy computations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service.pipeline.features import FeaturePipeline, RunningScaler, nan_moments


def test_change_mode_features_by_hand() -> None:
    pipeline = FeaturePipeline(lags=2, target="change", exogenous=("temp",))
    history = np.array([[np.nan, 1.0, 2.0, 4.0]])
    computed = pipeline.compute(history, np.array([[7.0]]))
    named = dict(zip(pipeline.names, computed.raw[0], strict=True))
    unit = float(np.sqrt((1.0**2 + 2.0**2) / 2))  # the key's changes, 1 and 2: their RMS
    assert computed.scale.tolist() == [unit]
    expected = {
        "diff_1": 2.0 / unit,
        "diff_2": 1.0 / unit,
        "mean_dev": (7 / 3 - 4.0) / unit,
        "std": float(np.std([1.0, 2.0, 4.0])) / unit,
        "min_dev": -3.0 / unit,
        "max_dev": 0.0,
        "level_z": (4.0 - 7 / 3) / float(np.std([1.0, 2.0, 4.0])),
        "temp": 7.0,
    }
    for name, value in expected.items():
        assert named[name] == pytest.approx(value), name
    assert pipeline.names[-1] == "temp"


def test_a_steady_grower_is_measured_in_its_step() -> None:
    """Changes of a constant size have no spread; their size is the key's unit (a
    standard deviation would leave a guess of 1% of the level here)."""
    pipeline = FeaturePipeline(lags=2, target="change", exogenous=())
    for history in ([[np.nan, np.nan, 40.0, 47.0]], [[12.0, 19.0, 26.0, 33.0]]):
        computed = pipeline.compute(np.array(history), np.empty((1, 0)))
        assert computed.scale.tolist() == [7.0]
        assert computed.unit.tolist() == [7.0]
    young = pipeline.compute(np.array([[np.nan, np.nan, np.nan, 40.0]]), np.empty((1, 0)))
    assert young.scale.tolist() == [pytest.approx(0.4)]  # no change yet: 1% of the level
    assert np.isnan(young.unit[0])


def test_level_mode_adds_level_and_lags() -> None:
    pipeline = FeaturePipeline(lags=2, target="level", exogenous=())
    computed = pipeline.compute(np.array([[1.0, 2.0, 4.0]]), np.empty((1, 0)))
    named = dict(zip(pipeline.names, computed.raw[0], strict=True))
    assert (named["level"], named["lag_1"], named["lag_2"]) == (4.0, 2.0, 1.0)
    assert computed.scale.tolist() == [1.0]  # level targets are not rescaled


def test_seasonal_lags_read_one_season_before_the_target() -> None:
    pipeline = FeaturePipeline(lags=1, target="change", exogenous=(), horizon=1)
    history = np.arange(30.0)[None, :] ** 2  # y_t = t^2, newest t = 29
    periods = np.array([[24, 0]], dtype=np.intp)
    computed = pipeline.compute(history, np.empty((1, 0)), periods=periods)
    named = dict(zip(pipeline.names, computed.raw[0], strict=True))
    unit = computed.scale[0]
    # target time 30, one season back: t = 6, neighbours 5 and 7
    assert named["season1"] == pytest.approx((36.0 - 841.0) / unit)
    assert named["season1_prev"] == pytest.approx((25.0 - 841.0) / unit)
    assert named["season1_next"] == pytest.approx((49.0 - 841.0) / unit)
    # the seasonal naive's forecast: the last value plus the change from t = 5 to 6
    # (one season back; two would need 49 values): 841 + (36 - 25)
    assert computed.seasonal.tolist() == [852.0]
    assert np.isnan(named["season2"])


def test_the_seasonal_forecast_averages_the_change_over_the_last_seasons() -> None:
    """A season of 4 over a growing level: the change over the same stretch one, two
    and three seasons back, averaged, added to the last value; with horizon 2 the
    stretch is two steps long."""
    pattern = np.array([0.0, 5.0, 1.0, -3.0])
    t = np.arange(21.0)
    history = (10.0 + 0.5 * t + pattern[np.arange(21) % 4])[None, :]
    history[0, 12] += 3.0  # noise in one of the three seasons back
    periods = np.array([[4, 0]], dtype=np.intp)
    for horizon in (1, 2):
        pipeline = FeaturePipeline(lags=1, target="change", exogenous=(), horizon=horizon)
        computed = pipeline.compute(history, np.empty((1, 0)), periods=periods)
        newest = 20
        back = 4  # one whole season covers either horizon
        changes = [
            history[0, newest - back * k + horizon] - history[0, newest - back * k]
            for k in (1, 2, 3)
        ]
        assert computed.seasonal[0] == pytest.approx(history[0, -1] + np.mean(changes))
        truth = 10.0 + 0.5 * (newest + horizon) + pattern[(newest + horizon) % 4]
        assert computed.seasonal[0] == pytest.approx(truth, abs=1.01)  # the noise, a third
    none = FeaturePipeline(lags=1, target="change", exogenous=()).compute(
        history, np.empty((1, 0)), periods=np.zeros((1, 2), np.intp)
    )
    assert np.isnan(none.seasonal[0])  # no season: the model falls back on persistence


def test_calendar_features_only_for_keys_that_tick_within_the_cycle() -> None:
    pipeline = FeaturePipeline(lags=1, target="change", exogenous=(), horizon=1)
    history = np.ones((2, 4))
    ts = np.array([6 * 3600 * 1000 - 3600 * 1000, 0], dtype=np.int64)  # 05:00 and midnight
    spacing = np.array([3600.0, 30 * 86400.0])
    computed = pipeline.compute(history, np.empty((2, 0)), ts, spacing)
    named = [dict(zip(pipeline.names, row, strict=True)) for row in computed.raw]
    assert named[0]["hour_sin"] == pytest.approx(1.0)  # the target is at 06:00
    assert np.isnan(named[1]["hour_sin"])
    assert np.isnan(named[1]["dow_sin"])
    assert np.isfinite(named[1]["doy_sin"])


def test_calendar_features_wait_until_the_key_has_spanned_part_of_the_cycle() -> None:
    """A key a millisecond apart (a backlog sent without event times) that has been
    seen for ten seconds gets no hour of day; an hourly key seen for two days gets the
    hour and the weekday, not yet the day of the year."""
    pipeline = FeaturePipeline(lags=1, target="change", exogenous=(), horizon=1)
    ts = np.array([10_000, 86_400_000], dtype=np.int64)
    spacing = np.array([0.001, 3600.0])
    computed = pipeline.compute(
        np.ones((2, 4)), np.empty((2, 0)), ts, spacing, span_s=spacing * [10_000, 48]
    )
    named = [dict(zip(pipeline.names, row, strict=True)) for row in computed.raw]
    assert all(np.isnan(named[0][f"{c}_sin"]) for c in ("hour", "dow", "doy"))
    assert np.isfinite(named[1]["hour_sin"])
    assert np.isfinite(named[1]["dow_sin"])
    assert np.isnan(named[1]["doy_sin"])


def test_young_windows_give_nan_that_scales_to_zero() -> None:
    pipeline = FeaturePipeline(lags=3, target="change", exogenous=("temp",))
    raw = pipeline.compute(np.array([[np.nan, np.nan, np.nan, 5.0]]), np.array([[np.nan]])).raw
    scaler = RunningScaler(len(pipeline.names))
    scaler.update(raw)
    scaled = scaler.transform(raw)
    assert np.isfinite(scaled).all()
    assert scaled[0, 0] == 0.0


@settings(max_examples=30)
@given(
    arrays(np.float64, st.tuples(st.integers(2, 40), st.just(3)), elements=st.floats(-1e3, 1e3)),
    st.integers(1, 7),
)
def test_sequential_scaling_does_not_depend_on_batching(data: np.ndarray, pieces: int) -> None:
    whole = RunningScaler(3).fit_transform(data)
    split = RunningScaler(3)
    parts = np.vstack([split.fit_transform(chunk) for chunk in np.array_split(data, pieces)])
    np.testing.assert_allclose(whole, parts, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("value", [1.0, 0.3, 123.456, 1e-3])
def test_a_column_that_barely_moved_scales_alike_in_any_batching(value: float) -> None:
    """A column that moved only by rounding, after NaN (seen in a feature of a key's
    second value): one batch scales it as row by row does. Its sums taken about 0 made
    its spread the rounding of a difference of sums: a feature of 1e-6 in one batching
    and -1 in the other."""
    rows = np.array([[np.nan], [np.nan], [value * (1 + 3.4e-14)], [value], [value], [value]])
    whole = RunningScaler(1).fit_transform(rows)
    split = RunningScaler(1)
    one_by_one = np.vstack([split.fit_transform(rows[i : i + 1]) for i in range(len(rows))])
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-9, atol=1e-12)


def test_extreme_inputs_keep_the_scaler_finite() -> None:
    scaler = RunningScaler(1)
    scaler.fit_transform(np.array([[1.0], [1e300], [-1e308], [2.0]]))
    assert np.isfinite(scaler.mean).all()
    assert np.isfinite(scaler.m2).all()


@settings(max_examples=50)
@given(
    arrays(np.float64, st.tuples(st.integers(2, 40), st.just(3)), elements=st.floats(-1e3, 1e3)),
    st.integers(1, 7),
)
def test_scaler_matches_numpy_over_any_batching(data: np.ndarray, pieces: int) -> None:
    scaler = RunningScaler(3)
    for chunk in np.array_split(data, pieces):
        scaler.update(chunk)
    np.testing.assert_allclose(scaler.mean, data.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(scaler.m2 / len(data), data.var(axis=0), rtol=1e-7, atol=1e-7)


def test_scaled_values_are_clipped() -> None:
    scaler = RunningScaler(1)
    scaler.update(np.zeros((100, 1)) + np.arange(100.0)[:, None] % 2)
    assert scaler.transform(np.array([[1e9]]))[0, 0] == 10.0


@pytest.mark.parametrize("seed", range(5))
def test_nan_moments_are_numpys(seed: int) -> None:
    """The same numbers as nanmean and nanstd, bit for bit, NaN rows included."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(9, 40)) * 10.0 ** rng.integers(-4, 6, size=(9, 1)) + 50.0
    values[rng.random(values.shape) < 0.3] = np.nan
    values[0] = np.nan
    values[1, :-1] = np.nan  # one value: spread 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = nan_moments(values)
        np.testing.assert_array_equal(mean, np.nanmean(values, axis=1))
        np.testing.assert_array_equal(std, np.nanstd(values, axis=1))


@pytest.mark.parametrize("seed", range(3))
def test_nan_aware_statistics_are_numpys_and_warn_nothing(seed: int) -> None:
    """compute() takes its NaN-aware minimum, maximum and seasonal mean without
    np.nan* (which warn on a young key's rows of NaN): no warning, and the numbers
    nanmin, nanmax and nanmean give, rows of NaN included."""
    rng = np.random.default_rng(seed)
    history = rng.normal(size=(6, 30)).cumsum(axis=1) * 10.0 ** rng.integers(-3, 4)
    history[0] = np.nan  # a key with no value yet
    history[1, :-1] = np.nan  # one value
    history[rng.random(history.shape) < 0.2] = np.nan
    steps = rng.normal(size=(6, 3, 2))
    steps[rng.random(steps.shape) < 0.4] = np.nan
    steps[2] = np.nan  # no season yet
    pipeline = FeaturePipeline(lags=3, target="level", exogenous=())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        computed = pipeline.compute(history, np.empty((6, 0)), steps=steps)
    last = history[:, -1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        step = np.nanmean(steps[:, :, 1] - steps[:, :, 0], axis=1)
        lowest, highest = np.nanmin(history, axis=1) - last, np.nanmax(history, axis=1) - last
    np.testing.assert_array_equal(computed.seasonal, last + step)
    stats = computed.raw[:, pipeline.lags : pipeline.lags + 4]  # level mode: units of 1
    np.testing.assert_array_equal(stats[:, 2], lowest)
    np.testing.assert_array_equal(stats[:, 3], highest)
