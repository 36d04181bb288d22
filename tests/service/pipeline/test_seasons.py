"""Season detection: seasons under a trend are found, random walks get none."""

from __future__ import annotations

import numpy as np
import pytest

from service.pipeline import seasons
from service.pipeline.seasons import detect

_MONTH_S = 30.44 * 86_400.0
_DAY_S = 86_400.0


_COUNTS = (48, 96, 192, 400, 600, 800, 1000, 1257)
"""Value counts at which a task detects, up to a daily price series' length."""


def _walks() -> list[np.ndarray]:
    """Forty random walks of daily prices, a third of them with each of three drifts."""
    return [
        100.0 + np.cumsum(np.random.default_rng(seed).normal(0.05 * (seed % 3), 1.0, 1257))
        for seed in range(40)
    ]


def _growing_seasonal(n: int, seed: int) -> np.ndarray:
    """A monthly series whose level grows and whose yearly swing grows with it, as
    airline passengers' does."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    level = 100.0 + 2.5 * t
    return level * (1.0 + 0.15 * np.sin(2 * np.pi * t / 12)) + rng.normal(0.0, 3.0, n)


@pytest.mark.parametrize("seed", range(5))
def test_a_season_under_a_trend_is_found_after_four_cycles(seed: int) -> None:
    assert detect(_growing_seasonal(48, seed), _MONTH_S) == [12]


def test_the_trend_rule_finds_nothing_more_in_random_walks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Random walks with and without a drift (daily prices) get the same seasons,
    detected at the value counts where a task detects, as without the variance rule:
    the mean squares' rule alone (MAX_DIP) already finds a spurious one now and then,
    the variance rule must not add to that."""
    counts, walks = _COUNTS, _walks()
    found = [[detect(walk[:n], _DAY_S) for n in counts] for walk in walks]
    monkeypatch.setattr(seasons, "MAX_TREND_DIP", -1.0)  # the variance rule off
    without = [[detect(walk[:n], _DAY_S) for n in counts] for walk in walks]
    assert found == without
    assert any(any(s) for s in without), "no spurious season at all: the walks test nothing"


def _quarter_ends(n: int, seed: int) -> np.ndarray:
    """A monthly index whose quarter-end months stand out, on a wandering level, as
    many business series' do (orders, production, sales booked by quarter)."""
    rng = np.random.default_rng(seed)
    year = np.array([0.0, -1, 8, 2, 0, 9, 1, -2, 12, 3, 4, 10])
    level = np.cumsum(rng.normal(0.0, 1.0, n))
    values: np.ndarray = 70.0 + level + np.tile(year, n // 12 + 1)[:n] + rng.normal(0.0, 1.0, n)
    return values


def test_a_yearly_season_with_quarters_inside_it_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Six months apart such a series is as alike as twelve (its quarters repeat), so
    comparing the yearly lag with the half-year lag alone saw no season; the lags
    across the whole cycle see the year."""
    series = [_quarter_ends(120, seed) for seed in range(6)]
    assert all(12 in detect(values, _MONTH_S) for values in series)
    monkeypatch.setattr(seasons, "_between", lambda p: [max(p // 2, 1)])  # half a cycle only
    assert not all(12 in detect(values, _MONTH_S) for values in series)


def test_the_lags_across_a_cycle_find_nothing_more_in_random_walks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reference of the lags across a cycle is never below that of half a cycle,
    so it can only keep more periods; on random walks (daily prices) it keeps none
    that half a cycle did not."""
    counts, walks = _COUNTS, _walks()
    found = [[detect(walk[:n], _DAY_S) for n in counts] for walk in walks]
    monkeypatch.setattr(seasons, "_between", lambda p: [max(p // 2, 1)])
    assert found == [[detect(walk[:n], _DAY_S) for n in counts] for walk in walks]


@pytest.mark.parametrize("spacing_s", [0.001, _DAY_S], ids=["no-calendar", "invented-days"])
def test_the_season_is_found_among_the_peaks_divisors(spacing_s: float) -> None:
    """A key whose times say nothing of its season (a backlog sent without event
    times, broker timestamps a millisecond apart; a monthly series a tool stamped a
    day apart) has no calendar period that is its season, and on a long history the
    autocorrelation's strongest peak is a multiple of it. The peak's divisors are
    candidates too, and the year, whose changes repeat best, comes first, not the
    quarters inside it."""
    for n in (120, 240):
        found = [detect(_quarter_ends(n, seed), spacing_s) for seed in range(6)]
        assert sum(s[:1] == [12] for s in found) >= 5, (n, found)


@pytest.mark.parametrize("spacing_s", [0.001, _DAY_S], ids=["no-calendar", "days"])
def test_the_peaks_divisors_find_nothing_more_in_random_walks_and_noise(
    monkeypatch: pytest.MonkeyPatch, spacing_s: float
) -> None:
    """Random walks (daily prices) and white noise have a season exactly where they
    had one without the divisors (the mean squares' rule finds a spurious one now and
    then): the divisors never give a season to a key that had none."""
    noise = [np.random.default_rng(100 + seed).normal(size=1257) for seed in range(20)]
    series = [*_walks(), *noise]
    found = [[bool(detect(s[:n], spacing_s)) for n in _COUNTS] for s in series]
    monkeypatch.setattr(seasons, "_divisors", lambda p: set())
    assert found == [[bool(detect(s[:n], spacing_s)) for n in _COUNTS] for s in series]
    assert any(any(f) for f in found), "no spurious season at all: the series test nothing"
