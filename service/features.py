"""The one feature pipeline every model sees, live and offline.

From a batch of raw windows (``(n, W)``, NaN-padded on the left) and exogenous values
(``(n, E)``, NaN where missing) it computes, vectorised over the batch:

* ``diff_1 .. diff_L``: the last ``L`` first differences, newest first;
* ``mean_dev``, ``min_dev``, ``max_dev``: rolling mean/min/max minus the last value;
* ``std``: rolling standard deviation;
* with ``target: level`` only, ``level`` and ``lag_1 .. lag_L`` (raw values), since a
  model that predicts levels needs them, while one that predicts changes is better off
  without features that drift with the level;
* the exogenous features, in ``schema.features`` order.

Then online standardisation (:class:`RunningScaler`): running mean and variance per
column, merged batch by batch (Chan et al.), and ``(x - mean) / std``. Missing values
(young windows, absent exogenous features) become 0 after scaling, i.e. they are
imputed with the running mean, and scaled values are clipped to ±10. Fitting the
scaler on the inputs of the batch being predicted leaks nothing: it never sees a
target.
"""

from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

_EPS = 1e-12
_CLIP = 10.0  # standard deviations; one wild input must not blow up an SGD step


class FeaturePipeline:
    """Stateless feature computation; the running scaler is owned by each task."""

    def __init__(self, lags: int, target: str, exogenous: tuple[str, ...]) -> None:
        self.lags = lags
        self.level_features = target == "level"
        names = [f"diff_{i}" for i in range(1, lags + 1)]
        names += ["mean_dev", "std", "min_dev", "max_dev"]
        if self.level_features:
            names += ["level", *[f"lag_{i}" for i in range(1, lags + 1)]]
        self.names: tuple[str, ...] = (*names, *exogenous)

    def compute(self, windows: FloatArray, exogenous: FloatArray) -> FloatArray:
        """Raw (unscaled) features, ``(n, F)``; NaN where undefined."""
        n = windows.shape[0]
        if n == 0:
            return np.empty((0, len(self.names)))
        last = windows[:, -1:]
        diffs = np.diff(windows[:, -(self.lags + 1) :], axis=1)[:, ::-1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows of young keys
            stats = np.column_stack(
                [
                    np.nanmean(windows, axis=1) - last[:, 0],
                    np.nanstd(windows, axis=1),
                    np.nanmin(windows, axis=1) - last[:, 0],
                    np.nanmax(windows, axis=1) - last[:, 0],
                ]
            )
        parts = [diffs, stats]
        if self.level_features:
            parts.append(windows[:, ::-1][:, : self.lags + 1])
        parts.append(exogenous.reshape(n, -1))
        return np.concatenate(parts, axis=1)


class RunningScaler:
    """Per-column running mean/variance, ignoring NaN, updated a batch at a time.

    >>> scaler = RunningScaler(1)
    >>> scaler.update(np.array([[1.0], [3.0]]))
    >>> scaler.transform(np.array([[2.0], [np.nan]])).ravel().tolist()
    [0.0, 0.0]
    """

    def __init__(self, width: int) -> None:
        self.count = np.zeros(width)
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)

    def update(self, raw: FloatArray) -> None:
        finite = np.isfinite(raw)
        n_b = finite.sum(axis=0).astype(np.float64)
        if not n_b.any():
            return
        zeroed = np.where(finite, raw, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_b = np.where(n_b > 0, zeroed.sum(axis=0) / n_b, 0.0)
        m2_b = (np.where(finite, raw - mean_b, 0.0) ** 2).sum(axis=0)
        total = self.count + n_b
        delta = mean_b - self.mean
        safe_total = np.maximum(total, 1.0)
        self.mean = self.mean + delta * n_b / safe_total
        self.m2 = self.m2 + m2_b + delta**2 * self.count * n_b / safe_total
        self.count = total

    def transform(self, raw: FloatArray) -> FloatArray:
        std = np.sqrt(self.m2 / np.maximum(self.count, 1.0))
        scaled = (raw - self.mean) / np.where(std > _EPS, std, 1.0)
        return np.clip(np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0), -_CLIP, _CLIP)
