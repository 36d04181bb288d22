"""Feature pipeline and running scaler against hand and numpy computations."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service.features import FeaturePipeline, RunningScaler


def test_change_mode_features_by_hand() -> None:
    pipeline = FeaturePipeline(lags=2, target="change", exogenous=("temp",))
    window = np.array([[np.nan, 1.0, 2.0, 4.0]])
    raw = pipeline.compute(window, np.array([[7.0]]))
    assert pipeline.names == ("diff_1", "diff_2", "mean_dev", "std", "min_dev", "max_dev", "temp")
    expected = [2.0, 1.0, 7 / 3 - 4.0, float(np.std([1.0, 2.0, 4.0])), -3.0, 0.0, 7.0]
    np.testing.assert_allclose(raw[0], expected)


def test_level_mode_adds_level_and_lags() -> None:
    pipeline = FeaturePipeline(lags=2, target="level", exogenous=())
    raw = pipeline.compute(np.array([[1.0, 2.0, 4.0]]), np.empty((1, 0)))
    named = dict(zip(pipeline.names, raw[0], strict=True))
    assert (named["level"], named["lag_1"], named["lag_2"]) == (4.0, 2.0, 1.0)


def test_young_windows_give_nan_that_scales_to_zero() -> None:
    pipeline = FeaturePipeline(lags=3, target="change", exogenous=("temp",))
    raw = pipeline.compute(np.array([[np.nan, np.nan, np.nan, 5.0]]), np.array([[np.nan]]))
    scaler = RunningScaler(len(pipeline.names))
    scaler.update(raw)
    scaled = scaler.transform(raw)
    assert np.isfinite(scaled).all()
    assert scaled[0, 0] == 0.0


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
