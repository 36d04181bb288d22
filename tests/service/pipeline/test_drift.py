"""forecastd's batch Page-Hinkley against River's, and the monitor's contract."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import drift

from service.config import DriftSettings
from service.pipeline.drift import DriftMonitor, PageHinkley


def _river_detections(values: np.ndarray, threshold: float, delta: float) -> list[int]:
    detector: Any = drift.PageHinkley(threshold=threshold, delta=delta)
    found = []
    for index, value in enumerate(values.tolist()):
        detector.update(value)
        if detector.drift_detected:
            found.append(index)
    return found


def _one_at_a_time(values: np.ndarray, detector: PageHinkley) -> list[int]:
    """Indices of the values at which ``detector`` detects, fed singly."""
    return [i for i in range(len(values)) if detector.update_many(values[i : i + 1])]


def _regime_stream(seed: int, length: int = 3000) -> np.ndarray:
    """Absolute errors whose level and spread change a few times, as a model's do."""
    rng = np.random.default_rng(seed)
    parts, left = [], length
    while left > 0:
        size = min(left, int(rng.integers(100, 900)))
        parts.append(np.abs(rng.normal(rng.uniform(0.2, 5.0), rng.uniform(0.1, 3.0), size)))
        left -= size
    return np.concatenate(parts)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("threshold", "delta"), [(50.0, 0.005), (10.0, 0.05), (3.0, 0.0)])
def test_detects_where_river_does(seed: int, threshold: float, delta: float) -> None:
    values = _regime_stream(seed)
    expected = _river_detections(values, threshold, delta)
    assert expected, "the stream must drift, or the comparison says nothing"
    singles = PageHinkley(threshold=threshold, delta=delta)
    assert _one_at_a_time(values, singles) == expected
    found: list[int] = []
    start = 0
    detector = PageHinkley(threshold=threshold, delta=delta)
    rng = np.random.default_rng(seed)
    while start < len(values):  # batches of random size, as micro-batches come
        end = min(len(values), start + int(rng.integers(1, 400)))
        found.extend(start + i for i in detector.update_many(values[start:end]))
        start = end
    assert found == expected


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=400),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_batch_boundaries_change_nothing(values: list[float], cuts: list[int]) -> None:
    """Fed whole, in pieces, or one value at a time: the same detections."""
    stream = np.asarray(values)
    whole = PageHinkley(threshold=5.0).update_many(stream)
    pieces: list[int] = []
    start = 0
    split = PageHinkley(threshold=5.0)
    for end in [*sorted(c for c in set(cuts) if c < len(stream)), len(stream)]:
        pieces += [start + i for i in split.update_many(stream[start:end])]
        start = end
    singles = _one_at_a_time(stream, PageHinkley(threshold=5.0))
    assert whole == pieces == singles


def test_monitor_feeds_nothing_without_a_scale() -> None:
    monitor = DriftMonitor(DriftSettings(page_hinkley_threshold=1.0))
    assert monitor.update(np.full(500, 100.0), scale=0.0) == {"adwin": [], "page_hinkley": []}


def test_monitor_reports_a_shift_in_errors() -> None:
    monitor = DriftMonitor(DriftSettings())
    calm = np.abs(np.random.default_rng(0).normal(1.0, 0.2, 2000))
    assert monitor.update(calm, scale=1.0) == {"adwin": [], "page_hinkley": []}
    detections = monitor.update(calm * 8.0, scale=1.0)
    assert len(detections["adwin"]) >= 1
    assert len(detections["page_hinkley"]) >= 1


@pytest.mark.parametrize("seed", range(4))
def test_detectors_run_together_as_alone(seed: int) -> None:
    """A task feeds its models' detectors together: the same detections and states
    as fed one by one, whatever the batches, and whichever detect."""
    rng = np.random.default_rng(seed)
    streams = [_regime_stream(seed * 10 + i) for i in range(5)]
    settings_ = DriftSettings(page_hinkley_threshold=8.0)
    together = [DriftMonitor(settings_) for _ in streams]
    alone = [DriftMonitor(settings_) for _ in streams]
    start, detections = 0, 0
    while start < len(streams[0]):
        end = start + int(rng.integers(1, 120))
        errors = [s[start:end] for s in streams]
        # a model with no error history yet is not fed (scale 0 on its first rows)
        scales = [
            np.where(np.arange(len(e)) + start < 40 * i, 0.0, 1.0) for i, e in enumerate(errors)
        ]
        joint = DriftMonitor.update_together(together, errors, scales)
        singly = [m.update(e, sc) for m, e, sc in zip(alone, errors, scales, strict=True)]
        assert joint == singly
        detections += sum(len(hits) for found in singly for hits in found.values())
        start = end
    assert detections > 10, "the streams must drift, or the comparison says nothing"
    for a, b in zip(together, alone, strict=True):
        ph_a, ph_b = a._detectors["page_hinkley"], b._detectors["page_hinkley"]
        assert vars(ph_a) == vars(ph_b)


@pytest.mark.parametrize("seed", range(4))
def test_joint_scan_is_update_many(seed: int) -> None:
    """The joint 2D scan detects where, and leaves the states that, each detector's own
    ``update_many`` does: batches of random size, rows that detect and rows that do not."""
    rng = np.random.default_rng(seed)
    streams = np.stack([_regime_stream(seed * 10 + i) for i in range(5)])
    joint = [PageHinkley(threshold=8.0) for _ in streams]
    alone = [PageHinkley(threshold=8.0) for _ in streams]
    start, detections = 0, 0
    while start < streams.shape[1]:
        end = start + int(rng.integers(1, 120))
        found = PageHinkley.update_together(joint, streams[:, start:end])
        assert found == [d.update_many(s[start:end]) for d, s in zip(alone, streams, strict=True)]
        detections += sum(map(len, found))
        for a, b in zip(joint, alone, strict=True):
            assert vars(a) == vars(b)
        start = end
    assert detections > 10, "the streams must drift, or the comparison says nothing"
