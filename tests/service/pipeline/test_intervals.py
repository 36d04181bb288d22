"""Per-key scaled conformal intervals with ACI (service/pipeline/intervals.py)."""

from __future__ import annotations

import numpy as np

from service.pipeline.intervals import Intervals

SLOT = np.array([0], dtype=np.intp)


def _calibrated() -> Intervals:
    intervals = Intervals(coverage=0.9, min_samples=10, pool=200)
    intervals.ensure(1)
    rng = np.random.default_rng(0)
    for error in np.abs(rng.normal(size=100)):
        intervals.run(SLOT, SLOT, np.array([error]), np.array([np.nan]), np.array([1]))
    return intervals


def _half(intervals: Intervals) -> float:
    empty = np.empty(0)
    return float(intervals.run(SLOT, SLOT[:0], empty, empty, np.empty(0, np.intp))[0])


def test_a_row_resolved_in_the_run_that_predicted_it_moves_its_keys_aci_level() -> None:
    """At horizon 0 every row is predicted and resolved in one run: its published
    half-width is the one computed in that run, and a miss must widen the next."""
    widened, unaware = _calibrated(), _calibrated()
    assert _half(widened) == _half(unaware)
    for intervals, pointer in ((widened, np.array([0])), (unaware, None)):
        for _ in range(20):
            intervals.run(SLOT, SLOT, np.array([50.0]), np.array([np.nan]), SLOT + 1, pointer)
    assert _half(widened) > _half(unaware)


def test_keys_of_different_scales_get_widths_of_their_own() -> None:
    intervals = Intervals(coverage=0.9, min_samples=10, pool=500)
    intervals.ensure(2)
    rng = np.random.default_rng(1)
    slots = np.array([0, 1], dtype=np.intp)
    for _ in range(200):
        errors = np.abs(rng.normal(size=2)) * np.array([1.0, 100.0])
        intervals.run(slots, slots, errors, np.full(2, np.nan), np.array([1, 2]))
    empty = np.empty(0)
    small, large = intervals.run(slots, slots[:0], empty, empty, np.empty(0, np.intp))
    assert 30 < large / small < 300
