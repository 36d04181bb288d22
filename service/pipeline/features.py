"""The one feature pipeline every model sees, live and offline.

From a batch of histories (``(n, H)``: each row the key's last ``H`` values, oldest
first, NaN-padded on the left, the newest being the event's own value ``y_t``), event
times, each key's spacing and seasons (:mod:`service.pipeline.seasons`) and the exogenous
values (``(n, E)``, NaN where missing) it computes, vectorised over the batch:

* the key's *unit*: the root mean square of its changes over its history, so that
  every change-like feature and the learning target (``target: change``) are in units
  of the key's own typical change, and one model serves keys of any scale. The root
  mean square, not the standard deviation: a key that grows steadily (a growth curve,
  a counter) has changes of a typical size but almost no spread, and from a key's
  second value on its one change already gives it a size, where a spread needs more;
* ``diff_1 .. diff_L``: the last ``L`` first differences, newest first, in key units;
* ``mean_dev``, ``std``, ``min_dev``, ``max_dev``: mean/std/min/max of the last ``W``
  values (``forecast.window``) relative to the last value, in key units;
* with ``target: level`` only, ``level`` and ``lag_1 .. lag_L`` (raw values);
* ``level_z``, ``lag_z_1 .. lag_z_3``: where the last values stand in the key's own
  range (standardised by the mean and spread of its history): the level a nonlinear
  map or a mean-reverting series depends on, comparable across keys;
* ``season{1,2}_prev``, ``season{1,2}``, ``season{1,2}_next``: the key's value one
  season before the target's time and its two neighbours, relative to the last value,
  in key units (NaN while the key has no such season);
* not a feature but the seasonal naive's forecast (:attr:`Computed.seasonal`): the
  last value plus the key's mean change over the same stretch of its first season,
  one to :data:`SEASON_CYCLES` seasons back (Hyndman & Athanasopoulos's seasonal naive
  of the changes, averaged over cycles). The value one season ago alone would forecast
  a growing seasonal series (airline passengers, monthly CO2) a year's growth low;
  the change over the same stretch carries the season and the last value the level,
  and the mean over a few cycles is less noisy than one cycle's change;
* ``hour_sin/cos``, ``dow_sin/cos``, ``doy_sin/cos``: the target's time of day, week
  and year, for keys whose spacing and span make them meaningful
  (:func:`~service.pipeline.seasons.calendar_mask`; NaN otherwise);
* the exogenous features, in ``schema.features`` order.

Then online standardisation per column (:class:`RunningScaler`), row by row in event
order (each row scaled with the statistics of the rows up to it, so the poll size does
not change a single number), and ``(x - mean) / std``. Missing values become 0 after
scaling, i.e. they are imputed with the running mean, and scaled values are clipped to
±10. Fitting the scaler on the inputs being predicted leaks nothing: it never sees a
target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.moments import merge_moments
from service.pipeline.scoring import LARGEST, finite_or_zero
from service.pipeline.seasons import MAX_SEASONS, calendar_mask

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

_EPS = 1e-12
_FLAT = 1e-9  # a spread below this fraction of a column's level is rounding
_CLIP = 10.0  # standard deviations; one wild input must not blow up an SGD step
_LEVEL_LAGS = 3
SEASON_CYCLES = 3
"""Seasons back over which the seasonal naive's change is averaged."""
_CALENDAR = ("hour", "dow", "doy")
_DAY_S = 86_400.0
_CYCLE_S = (_DAY_S, 7 * _DAY_S, 365.2425 * _DAY_S)
_EPOCH_WEEKDAY = 3.0  # 1970-01-01 was a Thursday: days since a Monday


@dataclass(frozen=True, slots=True)
class Computed:
    """Raw features and what else the models need of the same rows."""

    raw: FloatArray  # (n, F), NaN where undefined
    scale: FloatArray  # (n,) the learning target's unit (the key's unit; 1 for levels)
    unit: FloatArray  # (n,) the typical size of the key's changes; NaN while it has none
    seasonal: FloatArray  # (n,) the seasonal naive's forecast level (module docstring), or NaN


class FeaturePipeline:
    """Stateless feature computation; scalers and seasons are owned by each task."""

    def __init__(
        self,
        lags: int,
        target: str,
        exogenous: tuple[str, ...],
        window: int | None = None,
        horizon: int = 1,
    ) -> None:
        self.lags = lags
        self.window = window
        self.horizon = horizon
        self.change = target == "change"
        self.level_features = target == "level"
        names = [f"diff_{i}" for i in range(1, lags + 1)]
        names += ["mean_dev", "std", "min_dev", "max_dev"]
        if self.level_features:
            names += ["level", *[f"lag_{i}" for i in range(1, lags + 1)]]
        names += ["level_z", *[f"lag_z_{i}" for i in range(1, _LEVEL_LAGS + 1)]]
        for j in range(1, MAX_SEASONS + 1):
            names += [f"season{j}_prev", f"season{j}", f"season{j}_next"]
        for cycle in _CALENDAR:
            names += [f"{cycle}_sin", f"{cycle}_cos"]
        self.exogenous = exogenous
        self.names: tuple[str, ...] = (*names, *exogenous)

    def with_exogenous(self, exogenous: tuple[str, ...]) -> FeaturePipeline:
        """The same pipeline with another list of exogenous features."""
        return FeaturePipeline(
            self.lags,
            "change" if self.change else "level",
            exogenous,
            self.window,
            self.horizon,
        )

    def compute(
        self,
        history: FloatArray,
        exogenous: FloatArray,
        ts_ms: npt.NDArray[np.int64] | None = None,
        spacing_s: FloatArray | None = None,
        periods: IntArray | None = None,
        seasons: FloatArray | None = None,
        steps: FloatArray | None = None,
        span_s: FloatArray | None = None,
    ) -> Computed:
        """Raw (unscaled) features of each row; see the module docstring.

        ``history`` may hold only the newest values (the statistics use what it
        holds); ``seasons`` (``(n, 2, 3)``, from :func:`season_offsets`) then gives
        the values one season back, and ``steps`` (``(n, cycles, 2)``, from
        :func:`season_step_offsets`) those the first season's changes are taken
        between, which ``periods`` would otherwise locate in it. ``span_s``: how long
        each row's key has been seen (its spacing times its values); a calendar
        feature waits for a part of its cycle (None: it does not wait)."""
        n = history.shape[0]
        if n == 0:
            return Computed(np.empty((0, len(self.names))), np.ones(0), np.ones(0), np.empty(0))
        last = history[:, -1]
        # NaN-aware without np.nan* and their warnings context (a young key's rows are
        # all NaN): fmin/fmax skip NaN as nanmin/nanmax do (which call them), and
        # nan_moments takes nanmean's steps, at a fraction of the per-call cost on a
        # live stream's few rows per task.
        with np.errstate(invalid="ignore", over="ignore"):
            changes = np.diff(history, axis=1)
            drift, spread = nan_moments(changes)
            unit = np.sqrt(drift * drift + spread * spread)
            level_mean, level_std = nan_moments(history)
            recent = history[:, -self.window :] if self.window else history
            recent_mean, recent_std = nan_moments(recent)
            stats = np.column_stack(
                [
                    recent_mean - last,
                    recent_std,
                    np.fmin.reduce(recent, axis=1) - last,
                    np.fmax.reduce(recent, axis=1) - last,
                ]
            )
        scale = self._scale(unit, last, level_std)
        units = scale if self.change else np.ones(n)
        diffs = _newest(changes, self.lags)
        parts = [diffs / units[:, None], stats / units[:, None]]
        if self.level_features:
            parts.append(_newest(history, self.lags + 1))
        spread = np.where(level_std > _EPS, level_std, np.nan)
        newest = _newest(history, _LEVEL_LAGS + 1)
        parts.append((newest - level_mean[:, None]) / spread[:, None])
        for j in range(MAX_SEASONS):
            if seasons is not None:
                around = seasons[:, j, :]
            else:
                period = np.zeros(n, np.intp) if periods is None else periods[:, j]
                around = self._season(history, period)
            parts.append((around - last[:, None]) / scale[:, None])
        parts.append(self._calendar(n, ts_ms, spacing_s, span_s))
        parts.append(exogenous.reshape(n, -1))
        raw = np.concatenate(parts, axis=1)
        real = np.isfinite(unit) & (unit > 1e-9 * np.maximum(np.abs(np.nan_to_num(last)), 1.0))
        if steps is None:
            period = np.zeros(n, np.intp) if periods is None else periods[:, 0]
            offsets, valid = season_step_offsets(period, self.horizon, history.shape[1])
            steps = np.where(valid[:, :, None], _at(history, offsets), np.nan)
        with np.errstate(invalid="ignore", over="ignore"):
            step, _ = nan_moments(steps[:, :, 1] - steps[:, :, 0])  # NaN: no season yet
        return Computed(raw, units, np.where(real, unit, np.nan), last + step)

    @staticmethod
    def _scale(unit: FloatArray, last: FloatArray, level_std: FloatArray) -> FloatArray:
        """The key's typical change; for a key too young to have one, 1% of its level
        (a guess of the right order that keeps its first targets near unit size). At
        least 1% of the spread of its levels: a key that sat still for most of its
        history still moves in units of its range."""
        magnitude = np.where(np.isfinite(last), np.abs(last), 0.0)
        guess = np.maximum(0.01 * magnitude, 1e-6)
        spread = np.where(np.isfinite(level_std), 0.01 * level_std, 0.0)
        floor = np.maximum(1e-9 * np.maximum(magnitude, 1.0), spread)
        scale: FloatArray = np.where(
            np.isfinite(unit) & (unit > floor), unit, np.maximum(guess, floor)
        )
        return scale

    def _season(self, history: FloatArray, period: IntArray) -> FloatArray:
        """``(n, 3)`` the values one season before the target and its neighbours; NaN
        where the row's key has no such season."""
        offsets, valid = season_offsets(period, self.horizon, history.shape[1])
        return np.where(valid, _at(history, offsets), np.nan)

    def _calendar(
        self,
        n: int,
        ts_ms: npt.NDArray[np.int64] | None,
        spacing_s: FloatArray | None,
        span_s: FloatArray | None,
    ) -> FloatArray:
        """Sine and cosine of the target's phase in each cycle, where meaningful."""
        if ts_ms is None or spacing_s is None:
            return np.full((n, 2 * len(_CALENDAR)), np.nan)
        lead = np.where(np.isfinite(spacing_s), spacing_s, 0.0) * self.horizon
        seconds = ts_ms.astype(np.float64) / 1000.0 + lead
        mask = calendar_mask(spacing_s, span_s)
        out = np.full((n, 2 * len(_CALENDAR)), np.nan)
        for j, cycle in enumerate(_CYCLE_S):
            shift = _EPOCH_WEEKDAY * _DAY_S if j == 1 else 0.0
            phase = 2 * np.pi * np.mod(seconds + shift, cycle) / cycle
            out[:, 2 * j] = np.where(mask[:, j], np.sin(phase), np.nan)
            out[:, 2 * j + 1] = np.where(mask[:, j], np.cos(phase), np.nan)
        return out


def _divisor(std: FloatArray, mean: FloatArray) -> FloatArray:
    """What a column is divided by: its spread, or 1 for a column that has not moved,
    i.e. whose spread is below a billionth of its level. Such a spread is rounding,
    rounded differently by another batching of the same rows, and dividing by it
    would make features of any size out of the last bits of a float."""
    flat = std <= _EPS + _FLAT * np.abs(mean)
    out: FloatArray = np.where(flat, 1.0, std)
    return out


def nan_moments(values: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per row, ``nanmean`` and ``nanstd`` (NaN for a row of NaNs), by the steps
    ``nanvar`` takes, so the same numbers; in a third of its array calls, which on a
    live stream's few rows per task are most of the cost."""
    present = ~np.isnan(values)
    count = present.sum(axis=1)
    filled = np.where(present, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=1) / count
        deviation = np.where(present, filled - mean[:, None], 0.0)
        std = np.sqrt((deviation * deviation).sum(axis=1) / count)
    out_mean: FloatArray = mean
    out_std: FloatArray = std
    return out_mean, out_std


def has_season(period: IntArray) -> npt.NDArray[np.bool_]:
    """Where a row's key has a season: a period of at least two events (0 while it
    has none). The one rule the seasonal offsets and their callers share.

    >>> has_season(np.array([24, 0, 1])).tolist()
    [True, False, False]
    """
    return period >= 2


def season_offsets(
    period: IntArray, horizon: int, kept: int
) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """Per row, the offsets from the newest value (-1) of the value one season before
    the target's time and of its two neighbours, ``(n, 3)``, and where they exist in a
    history of ``kept`` values (clipped offsets elsewhere). Whole seasons back, as
    many as the horizon needs for the value to be known.

    >>> offsets, valid = season_offsets(np.array([24, 0]), horizon=1, kept=100)
    >>> offsets[0].tolist(), valid.tolist()
    ([-25, -24, -23], [[True, True, True], [False, False, False]])
    """
    safe = np.maximum(period, 1)
    back = -(-max(horizon, 1) // safe) * safe
    middle = horizon - back - 1
    offsets = middle[:, None] + np.array([-1, 0, 1])[None, :]
    valid = has_season(period)[:, None] & (offsets >= -kept) & (offsets <= -1)
    clipped: IntArray = np.clip(offsets, -kept, -1).astype(np.intp)
    return clipped, valid


def season_step_offsets(
    period: IntArray, horizon: int, kept: int, cycles: int = SEASON_CYCLES
) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """Per row and cycle ``k`` (1 to ``cycles`` seasons back), the offsets from the
    newest value (-1) of the values the first season's change is taken between:
    the one ``k`` seasons before the newest and the one ``k`` seasons before the
    target's time (whole seasons, as :func:`season_offsets`), ``(n, cycles, 2)``; and
    where both exist in a history of ``kept`` values, ``(n, cycles)``.

    >>> offsets, valid = season_step_offsets(np.array([12, 0]), horizon=1, kept=30)
    >>> offsets[0].tolist(), valid.tolist()
    ([[-13, -12], [-25, -24], [-30, -30]], [[True, True, False], [False, False, False]])
    """
    safe = np.maximum(period, 1)
    back = -(-max(horizon, 1) // safe) * safe
    ks = np.arange(cycles)[None, :] * safe[:, None]
    start = (-1 - back)[:, None] - ks
    offsets = np.stack([start, start + horizon], axis=2)
    valid = has_season(period)[:, None] & (start >= -kept)
    clipped: IntArray = np.clip(offsets, -kept, -1).astype(np.intp)
    return clipped, valid


def _at(history: FloatArray, offsets: IntArray) -> FloatArray:
    """``history`` read per row at ``offsets`` from its newest value, any shape after
    the row's."""
    n, width = history.shape
    rows = np.arange(n).reshape((n,) + (1,) * (offsets.ndim - 1))
    out: FloatArray = history[rows, width + offsets]
    return out


def _newest(values: FloatArray, count: int) -> FloatArray:
    """The newest ``count`` columns, newest first, NaN where the row is shorter."""
    out: FloatArray = values[:, ::-1][:, :count]
    if out.shape[1] < count:
        out = np.pad(out, ((0, 0), (0, count - out.shape[1])), constant_values=np.nan)
    return out


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
        raw = np.clip(raw, -LARGEST, LARGEST)
        finite = np.isfinite(raw)
        n_b = finite.sum(axis=0).astype(np.float64)
        if not n_b.any():
            return
        zeroed = np.where(finite, raw, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_b = np.where(n_b > 0, zeroed.sum(axis=0) / n_b, 0.0)
        m2_b = (np.where(finite, raw - mean_b, 0.0) ** 2).sum(axis=0)
        self.count, self.mean, self.m2 = merge_moments(
            self.count, self.mean, self.m2, n_b, mean_b, m2_b
        )

    def transform(self, raw: FloatArray) -> FloatArray:
        std = np.sqrt(self.m2 / np.maximum(self.count, 1.0))
        scaled = (np.clip(raw, -LARGEST, LARGEST) - self.mean) / _divisor(std, self.mean)
        return np.clip(finite_or_zero(scaled), -_CLIP, _CLIP)

    def fit_transform(self, raw: FloatArray) -> FloatArray:
        """Scale each row with the statistics of every row up to it (this one
        included), then keep all of them: row by row, as one row per call would.

        >>> a, b = RunningScaler(1), RunningScaler(1)
        >>> rows = np.array([[1.0], [3.0], [np.nan], [8.0]])
        >>> together = a.fit_transform(rows)
        >>> one_by_one = np.vstack([b.fit_transform(rows[i : i + 1]) for i in range(4)])
        >>> bool(np.allclose(together, one_by_one))
        True
        """
        if len(raw) == 0:
            return np.empty_like(raw)
        raw = np.clip(raw, -LARGEST, LARGEST)
        finite = np.isfinite(raw)
        # Sums are taken about the running mean, or, for a column with no value yet,
        # about its first value in this batch (as one row per call would): about 0, a
        # column far from 0 that barely moves would have its spread computed as the
        # difference of two large sums, i.e. as their rounding, which differs from one
        # batching to another and, divided into another rounding, makes a feature of
        # any size.
        columns = np.arange(raw.shape[1])
        first = raw[np.argmax(finite, axis=0), columns]
        reference = np.where(self.count > 0, self.mean, np.where(np.isfinite(first), first, 0.0))
        centred = np.where(finite, raw - reference, 0.0)
        count = self.count + np.cumsum(finite, axis=0)
        safe = np.maximum(count, 1.0)
        shift = np.cumsum(centred, axis=0) / safe
        mean = reference + shift
        m2 = self.m2 + np.cumsum(centred**2, axis=0) - safe * shift**2
        std = np.sqrt(np.maximum(m2, 0.0) / safe)
        scaled = (raw - mean) / _divisor(std, mean)
        self.count, self.mean, self.m2 = count[-1].copy(), mean[-1].copy(), np.maximum(m2[-1], 0.0)
        out: FloatArray = np.clip(finite_or_zero(scaled), -_CLIP, _CLIP)
        return out
