"""Drift detection on each model's absolute residuals, with River's detectors.

A model whose error distribution shifts has met a changed world (a regime change, a
broken sensor, a new product). Detectors see ``|y - y_hat| / scale``, where ``scale``
is the model's mean absolute error before the batch: that makes one threshold
meaningful for series of any unit (prices in cents or sensors in kPa).
"""

from __future__ import annotations

from typing import Any

from river import drift

from service.config import DriftSettings
from service.scoring import FloatArray

_MIN_SCALE = 1e-12


class DriftMonitor:
    """The configured detectors for one model in one task."""

    def __init__(self, settings: DriftSettings) -> None:
        self._settings = settings
        self._detectors: dict[str, Any] = {name: self._build(name) for name in settings.detectors}

    def _build(self, name: str) -> Any:
        if name == "adwin":
            return drift.ADWIN(delta=self._settings.adwin_delta)  # type: ignore[no-untyped-call]
        return drift.PageHinkley(
            threshold=self._settings.page_hinkley_threshold, delta=self._settings.page_hinkley_delta
        )

    def update(self, abs_errors: FloatArray, scale: float) -> dict[str, int]:
        """Feed a batch of absolute errors; return detections per detector name.

        With no error history yet (``scale`` 0) nothing is fed: there is no unit.
        """
        values = (abs_errors / max(scale, _MIN_SCALE)).tolist() if scale > 0 else []
        detections = dict.fromkeys(self._detectors, 0)
        for name, detector in self._detectors.items():
            for value in values:
                detector.update(value)
                if detector.drift_detected:
                    detections[name] += 1
        return detections
