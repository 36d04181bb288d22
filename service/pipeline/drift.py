"""Drift detection on each model's absolute residuals: ADWIN and Page-Hinkley.

A model whose error distribution shifts has met a changed world (a regime change, a
broken sensor, a new product). Detectors see ``|y - y_hat| / scale``, where ``scale``
is the model's mean absolute error before the batch: that makes one threshold
meaningful for series of any unit (prices in cents or sensors in kPa).

ADWIN is River's (its window bookkeeping is compiled). Page-Hinkley is River's
algorithm run a micro-batch at a time with NumPy: River's ``PageHinkley.update`` is
Python per value, paid by every model on every event, which made it the largest fixed
cost of scoring (``python -m bench.pipeline`` shows what the detectors cost now). Its recursions
are a running mean (a cumulative sum), two first-order linear filters (``lfilter``)
and running extrema (``minimum.accumulate``), so a batch costs a handful of array
calls. It detects at the same events as River's (``tests/service/pipeline/test_drift.py``
feeds both the same streams) and, like River's, starts afresh after each detection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
from river import drift
from scipy.signal import lfilter

from service.config import DriftSettings
from service.pipeline.scoring import FloatArray

IntArray = npt.NDArray[np.intp]

_MIN_SCALE = 1e-12


class BatchDetector(Protocol):
    def update_many(self, values: FloatArray) -> list[int]:
        """Feed ``values`` in order; return the index of each value at which a drift
        was detected."""
        ...


class PageHinkley:
    """River's ``drift.PageHinkley`` (mode ``"both"``) over NumPy batches.

    Args mirror River's: after ``min_instances`` values since the last reset, drift
    is detected when the cumulative deviation from the running mean (less ``delta``
    per value, forgotten by ``alpha`` per value) rose more than ``threshold`` above
    its minimum, or fell more than ``threshold`` below its maximum.

    >>> detector = PageHinkley(threshold=5.0)
    >>> detector.update_many(np.zeros(100)), detector.update_many(np.full(100, 3.0))
    ([], [1])
    """

    def __init__(
        self,
        threshold: float = 50.0,
        delta: float = 0.005,
        min_instances: int = 30,
        alpha: float = 1 - 0.0001,
    ) -> None:
        self.threshold, self.delta = threshold, delta
        self.min_instances, self.alpha = min_instances, alpha
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._total = 0.0  # sum since reset: cumulative sums continue it exactly
        self._increase = 0.0
        self._decrease = 0.0
        self._min_increase = float("inf")
        self._max_decrease = -1.0  # River's initial value

    def update_many(self, values: FloatArray) -> list[int]:
        detections: list[int] = []
        start = 0
        while start < len(values):
            hit = self._scan(values[start:])
            if hit is None:
                break
            detections.append(start + hit)
            start += hit + 1
            self._reset()
        return detections

    def _scan(self, values: FloatArray) -> int | None:
        """Index of the first detection in ``values`` (state untouched then), or None
        with the state advanced past all of them."""
        count = self._n + np.arange(1, len(values) + 1)
        totals = np.cumsum(np.concatenate(([self._total], values)))[1:]
        deviation = values - totals / count
        increase = self._forget(deviation - self.delta, self._increase)
        decrease = self._forget(deviation + self.delta, self._decrease)
        min_increase = np.minimum.accumulate(np.concatenate(([self._min_increase], increase)))[1:]
        max_decrease = np.maximum.accumulate(np.concatenate(([self._max_decrease], decrease)))[1:]
        rose = increase - min_increase > self.threshold
        fell = max_decrease - decrease > self.threshold
        hits = np.flatnonzero((count >= self.min_instances) & (rose | fell))
        if len(hits):
            return int(hits[0])
        self._n = int(count[-1])
        self._total = float(totals[-1])
        self._increase, self._decrease = float(increase[-1]), float(decrease[-1])
        self._min_increase, self._max_decrease = float(min_increase[-1]), float(max_decrease[-1])
        return None

    @staticmethod
    def update_together(detectors: Sequence[PageHinkley], values: FloatArray) -> list[list[int]]:
        """``update_many`` of each detector with its row of ``values`` (one row per
        detector, all the same length), in one pass of array calls for all of them: a
        task feeds the same rows to the detector of each of its models, and per call a
        scan costs the same for a few rows as for a few hundred. A detector that
        detects in its row is then run again on its own (the joint pass leaves its
        state as it was), so the results are those of ``update_many``."""
        rows, width = values.shape
        if rows == 0 or width == 0:
            return [[] for _ in range(rows)]
        first = detectors[0]
        alpha, delta = first.alpha, first.delta
        if any(
            d.alpha != alpha or d.delta != delta or d.threshold != first.threshold
            for d in detectors
        ):
            return [d.update_many(row) for d, row in zip(detectors, values, strict=True)]
        state = np.array(
            [
                (d._n, d._total, d._increase, d._decrease, d._min_increase, d._max_decrease)
                for d in detectors
            ]
        )
        count = state[:, :1] + np.arange(1, width + 1)
        totals = np.cumsum(np.concatenate((state[:, 1:2], values), axis=1), axis=1)[:, 1:]
        deviation = values - totals / count
        steps = np.concatenate((deviation - delta, deviation + delta))
        moved, _ = lfilter(
            [1.0], [1.0, -alpha], steps, axis=1, zi=alpha * state[:, 2:4].T.reshape(-1, 1)
        )
        increase, decrease = moved[:rows], moved[rows:]
        min_increase = np.minimum(np.minimum.accumulate(increase, axis=1), state[:, 4:5])
        max_decrease = np.maximum(np.maximum.accumulate(decrease, axis=1), state[:, 5:6])
        hit = (count >= first.min_instances) & (
            (increase - min_increase > first.threshold)
            | (max_decrease - decrease > first.threshold)
        )
        found = hit.any(axis=1).tolist()
        ends = np.column_stack(
            (
                count[:, -1],
                totals[:, -1],
                increase[:, -1],
                decrease[:, -1],
                min_increase[:, -1],
                max_decrease[:, -1],
            )
        ).tolist()
        out: list[list[int]] = []
        for detector, row, detected, end in zip(detectors, values, found, ends, strict=True):
            if detected:
                out.append(detector.update_many(row))
                continue
            detector._n = int(end[0])
            detector._total, detector._increase, detector._decrease = end[1], end[2], end[3]
            detector._min_increase, detector._max_decrease = end[4], end[5]
            out.append([])
        return out

    def _forget(self, steps: FloatArray, previous: float) -> FloatArray:
        """``s[t] = alpha * s[t-1] + steps[t]`` from ``s[-1] = previous``."""
        out, _ = lfilter([1.0], [1.0, -self.alpha], steps, zi=[self.alpha * previous])
        result: FloatArray = out
        return result


class Adwin:
    """River's ``drift.ADWIN`` behind :class:`BatchDetector`."""

    def __init__(self, delta: float) -> None:
        self._detector: Any = drift.ADWIN(delta=delta)  # type: ignore[no-untyped-call]

    def update_many(self, values: FloatArray) -> list[int]:
        detector, detections = self._detector, []
        for index, value in enumerate(values.tolist()):
            detector.update(value)
            if detector.drift_detected:
                detections.append(index)
        return detections


class DriftMonitor:
    """The configured detectors for one model in one task."""

    def __init__(self, settings: DriftSettings) -> None:
        self._settings = settings
        self._detectors: dict[str, BatchDetector] = {
            name: self._build(name) for name in settings.detectors
        }

    def _build(self, name: str) -> BatchDetector:
        if name == "adwin":
            return Adwin(self._settings.adwin_delta)
        return PageHinkley(
            threshold=self._settings.page_hinkley_threshold, delta=self._settings.page_hinkley_delta
        )

    def update(self, abs_errors: FloatArray, scale: float | FloatArray) -> dict[str, list[int]]:
        """Feed a batch of absolute errors, each divided by its ``scale`` (the model's
        MAE before it, per row, so that detections do not depend on where batches
        begin; or one number for the batch); return, per detector name, the indices of
        the errors at which it detected a drift.

        Errors with no error history yet (``scale`` 0) are not fed: there is no unit.
        """
        return DriftMonitor.update_together([self], [abs_errors], [scale])[0]

    @staticmethod
    def update_together(
        monitors: Sequence[DriftMonitor],
        abs_errors: Sequence[FloatArray] | FloatArray,
        scales: Sequence[float | FloatArray] | FloatArray,
    ) -> list[dict[str, list[int]]]:
        """:meth:`update` of each monitor with its errors and scales, with the
        Page-Hinkley detectors of those fed the same number of rows run in one pass
        (:meth:`PageHinkley.update_together`): the same detections, for a fraction of
        the per-call cost on a live stream's small batches."""
        fed = _fed_together(abs_errors, scales)
        out: list[dict[str, list[int]]] = [{} for _ in monitors]
        joint: dict[tuple[str, int], list[int]] = {}  # detector name, rows fed: monitors
        for i, (monitor, (rows, values)) in enumerate(zip(monitors, fed, strict=True)):
            for name, detector in monitor._detectors.items():
                if len(rows) == 0:
                    out[i][name] = []
                elif isinstance(detector, PageHinkley):
                    joint.setdefault((name, len(rows)), []).append(i)
                else:
                    out[i][name] = rows[detector.update_many(values)].tolist()
        for (name, _), members in joint.items():
            detectors = [cast(PageHinkley, monitors[i]._detectors[name]) for i in members]
            found = PageHinkley.update_together(detectors, np.stack([fed[i][1] for i in members]))
            for i, hits in zip(members, found, strict=True):
                out[i][name] = fed[i][0][hits].tolist()
        return out


def _fed_together(
    abs_errors: Sequence[FloatArray] | FloatArray,
    scales: Sequence[float | FloatArray] | FloatArray,
) -> list[tuple[IntArray, FloatArray]]:
    """:func:`_fed` of each pair; in a few array calls when every row of errors of the
    same length has a scale, as it has once each model has been scored."""
    lengths = {len(errors) for errors in abs_errors}
    if len(lengths) == 1 and all(np.shape(scale) == np.shape(abs_errors[0]) for scale in scales):
        stacked = np.asarray(scales, dtype=np.float64)
        if bool((stacked > 0).all()):
            values = np.asarray(abs_errors, dtype=np.float64) / np.maximum(stacked, _MIN_SCALE)
            every = np.arange(lengths.pop())
            return [(every, row) for row in values]
    return [_fed(errors, scale) for errors, scale in zip(abs_errors, scales, strict=True)]


def _fed(abs_errors: FloatArray, scale: float | FloatArray) -> tuple[IntArray, FloatArray]:
    """The indices of the errors that have a scale, and those errors in its units."""
    errors = np.asarray(abs_errors, dtype=np.float64)
    scales = np.broadcast_to(np.asarray(scale, dtype=np.float64), errors.shape)
    fed = np.flatnonzero(scales > 0)
    return fed, errors[fed] / np.maximum(scales[fed], _MIN_SCALE)
