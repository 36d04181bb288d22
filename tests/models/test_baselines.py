"""Persistence and EWMA against hand computations, pandas, and invariants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models.base import FeatureBatch
from models.baselines import EWMA, Persistence, ewm_level


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


@pytest.mark.parametrize("model", [Persistence(), EWMA()])
def test_baselines_do_not_learn(model: Persistence | EWMA) -> None:
    batch = make_batch(WINDOW)
    before = model.predict(batch)
    model.learn(batch, np.full(len(batch), 100.0))
    np.testing.assert_array_equal(model.predict(batch), before)
    assert model.updates == 0
    assert model.state_dict() == {}


@pytest.mark.parametrize("model", [Persistence(), EWMA()])
def test_baselines_refuse_foreign_state(model: Persistence | EWMA) -> None:
    model.load_state_dict({})
    with pytest.raises(ValueError, match="another model kind"):
        model.load_state_dict({"estimator": b"..."})


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
