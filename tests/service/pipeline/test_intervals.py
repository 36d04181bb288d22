"""Per-key scaled conformal intervals with ACI (service/pipeline/intervals.py)."""

from __future__ import annotations

import pickle

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


def test_a_checkpoint_with_per_slot_lists_restores_the_same_intervals() -> None:
    """Checkpoints written before the per-slot state moved into arrays hold it as
    lists: restoring one must give the same widths and keep learning the same way."""
    current, old = _calibrated(), _calibrated()
    for name in ("_scale", "_alpha"):
        old.__dict__[name] = list(old.__dict__[name])
    old.__dict__["_known"] = [bool(v) for v in old.__dict__["_known"]]
    restored = pickle.loads(pickle.dumps(old))  # noqa: S301 - bytes made here
    assert isinstance(restored._known, bytearray)
    restored.ensure(3)  # grows like a fresh one after the restore
    current.ensure(3)
    for intervals in (current, restored):
        intervals.run(SLOT + 2, SLOT + 2, np.array([3.0]), np.array([np.nan]), np.array([1]))
    assert _half(restored) == _half(current)
    assert list(restored._scale) == list(current._scale)
    assert list(restored._alpha) == list(current._alpha)
    assert bytes(restored._known) == bytes(current._known)


def test_a_checkpoint_pickles_the_per_slot_blocks_out_of_band() -> None:
    """A checkpoint (protocol 5, a buffer callback) keeps the three per-slot blocks
    out of the pickle stream; the same pickle read back, or one without the
    callback, restores the same intervals."""
    intervals = _calibrated()
    intervals.ensure(1000)
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(intervals, protocol=5, buffer_callback=buffers.append)
    assert sorted(buffer.raw().nbytes for buffer in buffers) == [1000, 8000, 8000]
    assert len(stream) < 8000
    copies = [bytearray(buffer.raw()) for buffer in buffers]
    for restored in (
        pickle.loads(stream, buffers=copies),  # noqa: S301 - bytes made here
        pickle.loads(pickle.dumps(intervals, protocol=5)),  # noqa: S301 - bytes made here
    ):
        assert _half(restored) == _half(intervals)
        assert restored._scale == intervals._scale
        assert restored._alpha == intervals._alpha
        assert restored._known == intervals._known
