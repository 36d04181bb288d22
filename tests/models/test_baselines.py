"""Persistence, EWMA and Holt against hand computations, pandas, and invariants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models.base import FeatureBatch
from models.baselines import EWMA, Holt, Persistence, ewm_level, holt_level


def make_batch(window: np.ndarray, offset: np.ndarray | None = None) -> FeatureBatch:
    n = window.shape[0]
    return FeatureBatch(
        x=np.zeros((n, 1)),
        window=window,
        offset=np.zeros(n) if offset is None else offset,
        keys=[f"k{i}" for i in range(n)],
        feature_names=["f"],
    )


WINDOW = np.array(
    [
        [1.0, 2.0, 4.0],
        [np.nan, np.nan, 7.0],
        [np.nan, np.nan, np.nan],
        [np.nan, 3.0, 5.0],
    ]
)


def test_persistence_is_the_last_value_in_level_space() -> None:
    offset = np.array([0.0, 7.0, 0.0, 2.0])  # level mode, change mode, no history, other
    out = Persistence().predict(make_batch(WINDOW, offset))
    np.testing.assert_array_equal(out + offset, [4.0, 7.0, 0.0, 5.0])


def test_persistence_is_zero_in_change_mode() -> None:
    window = np.array([[1.0, 2.0], [np.nan, 9.5]])
    offset = window[:, -1].copy()  # change mode: offset is the last value
    np.testing.assert_array_equal(Persistence().predict(make_batch(window, offset)), [0.0, 0.0])


def test_ewma_matches_the_recursion_by_hand() -> None:
    # alpha 0.5: s = 1; s = 0.5*2 + 0.5*1 = 1.5; s = 0.5*4 + 0.5*1.5 = 2.75
    # second row: only 7 -> 7; third row: no history -> 0; fourth: 3 -> 0.5*5 + 0.5*3 = 4
    out = EWMA(alpha=0.5).predict(make_batch(WINDOW, np.array([0.0, 1.0, 0.0, 4.0])))
    np.testing.assert_allclose(out, [2.75, 6.0, 0.0, 0.0])


@pytest.mark.parametrize("alpha", [0.05, 0.3, 0.9, 1.0])
def test_ewma_matches_pandas_ewm_adjust_false(alpha: float) -> None:
    rng = np.random.default_rng(0)
    window = rng.normal(100.0, 5.0, size=(50, 12))
    for row, pad in enumerate(rng.integers(0, 12, size=50)):
        window[row, :pad] = np.nan
    window[3, 5] = np.nan  # an interior gap is skipped too
    expected = [
        pd.Series(row).ewm(alpha=alpha, adjust=False, ignore_na=True).mean().iloc[-1]
        for row in window
    ]
    np.testing.assert_allclose(ewm_level(window, alpha), expected, rtol=1e-12)


def test_ewma_with_alpha_one_is_persistence() -> None:
    batch = make_batch(WINDOW, np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(EWMA(alpha=1.0).predict(batch), Persistence().predict(batch))


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, float("nan")])
def test_ewma_rejects_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        EWMA(alpha=alpha)


@pytest.mark.parametrize("model", [Persistence(), EWMA(), Holt()])
def test_baselines_do_not_learn(model: Persistence | EWMA | Holt) -> None:
    batch = make_batch(WINDOW)
    before = model.predict(batch)
    model.learn(batch, np.full(len(batch), 100.0))
    np.testing.assert_array_equal(model.predict(batch), before)
    assert model.updates == 0
    assert model.state_dict() == {}


@pytest.mark.parametrize("model", [Persistence(), EWMA(), Holt()])
def test_baselines_refuse_foreign_state(model: Persistence | EWMA | Holt) -> None:
    model.load_state_dict({})
    with pytest.raises(ValueError, match="another model kind"):
        model.load_state_dict({"estimator": b"..."})


def holt_by_hand(
    values: list[float], alpha: float, beta: float, damping: float, horizon: int
) -> float:
    """The damped-trend recursion written out, one value at a time, NaN skipped."""
    finite = [v for v in values if np.isfinite(v)]
    level, trend = finite[0], 0.0
    for value in finite[1:]:
        previous = level
        level = alpha * value + (1 - alpha) * (level + damping * trend)
        trend = beta * (level - previous) + (1 - beta) * damping * trend
    return level + sum(damping**step for step in range(1, horizon + 1)) * trend


@pytest.mark.parametrize(("damping", "horizon"), [(1.0, 1), (0.98, 1), (0.9, 3), (0.98, 0)])
def test_holt_matches_the_recursion_by_hand_with_and_without_gaps(
    damping: float, horizon: int
) -> None:
    rng = np.random.default_rng(1)
    window = rng.normal(0.0, 1.0, size=(40, 24)).cumsum(axis=1) + np.arange(24.0)
    full = holt_level(window, 0.3, 0.1, damping, horizon)  # the weights' path
    expected = [holt_by_hand(list(row), 0.3, 0.1, damping, horizon) for row in window]
    np.testing.assert_allclose(full, expected, rtol=1e-10, atol=1e-10)
    full_window = window.copy()
    for row, pad in enumerate(rng.integers(0, 24, size=40)):
        window[row, :pad] = np.nan  # young keys: the weights of their own length
    window[5] = full_window[5]
    window[5, 20] = np.nan  # gaps, skipped by the recursion
    window[6] = full_window[6]
    window[6, :4] = window[6, 10] = np.nan
    gappy = holt_level(window, 0.3, 0.1, damping, horizon)
    expected = [holt_by_hand(list(row), 0.3, 0.1, damping, horizon) for row in window]
    np.testing.assert_allclose(gappy, expected, rtol=1e-10, atol=1e-10)


def test_holt_follows_a_straight_line_that_ewma_trails() -> None:
    line = np.arange(32, dtype=float)[None, :] * 2.0 + 10.0  # the next value is 74
    batch = make_batch(line, line[:, -1].copy())
    straight = Holt(alpha=0.3, beta=0.1, damping=1.0, horizon=1).predict(batch)
    assert 1.8 < straight[0] < 2.0  # most of the step of 2, from a start of no trend
    assert EWMA(alpha=0.3).predict(batch)[0] < -4.0  # a smoother trails a trend
    two = Holt(alpha=0.3, beta=0.1, damping=1.0, horizon=2).predict(batch)
    damped = Holt(alpha=0.3, beta=0.1, damping=0.98, horizon=2).predict(batch)
    assert two[0] > straight[0] + 1.5  # one more step of the trend
    assert 0.0 < damped[0] < two[0]  # damped: upwards, by less than the straight trend


def test_holt_with_no_history_predicts_the_offset_and_flat_windows_stay_flat() -> None:
    window = np.array([[np.nan, np.nan], [5.0, 5.0]])
    out = Holt().predict(make_batch(window, np.array([3.0, 5.0])))
    np.testing.assert_array_equal(out, [0.0, 0.0])


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"beta": 1.5}, "beta"),
        ({"damping": 0.0}, "damping"),
        ({"horizon": -1}, "horizon"),
    ],
)
def test_holt_rejects_params_outside_their_range(params: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Holt(**params)  # type: ignore[arg-type]


windows = hnp.arrays(
    dtype=np.float64,
    shape=st.tuples(st.integers(1, 8), st.integers(1, 16)),
    elements=st.one_of(
        st.floats(-1e9, 1e9, allow_nan=False, allow_infinity=False), st.just(np.nan)
    ),
)


@given(
    window=windows,
    alpha=st.floats(1e-6, 1.0),
    shift=st.floats(-1e9, 1e9, allow_nan=False, allow_infinity=False),
)
def test_ewma_lies_within_the_finite_window_values(
    window: np.ndarray, alpha: float, shift: float
) -> None:
    offset = np.full(window.shape[0], shift)
    out = EWMA(alpha=alpha).predict(make_batch(window, offset))
    assert out.shape == (window.shape[0],)
    assert np.all(np.isfinite(out))
    for row, value in zip(window, out, strict=True):
        finite = row[np.isfinite(row)]
        if finite.size == 0:
            assert value == 0.0
        else:
            assert finite.min() - shift <= value <= finite.max() - shift


@given(
    window=windows,
    damping=st.floats(0.01, 1.0),
    horizon=st.integers(0, 48),
)
def test_holt_is_finite_and_a_single_value_is_persistence(
    window: np.ndarray, damping: float, horizon: int
) -> None:
    offset = np.zeros(window.shape[0])
    out = Holt(damping=damping, horizon=horizon).predict(make_batch(window, offset))
    assert np.all(np.isfinite(out))
    for row, value in zip(window, out, strict=True):
        finite = row[np.isfinite(row)]
        if finite.size == 0:
            assert value == 0.0
        elif finite.size == 1:
            assert value == finite[0]
