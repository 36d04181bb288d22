"""Baselines that every learned model must beat: persistence, seasonal naive, EWMA and
Holt's damped trend.

They think in levels: each computes a level from the raw window and returns it in the
learning-target space of :mod:`models.base` (``FeatureBatch.to_target``). They do not learn:
``learn`` leaves them unchanged and ``updates`` stays 0, which the metrics show as a
model whose version never moves. A row without any history (an all-NaN window) gets
0, i.e. "the offset itself", the only finite guess that needs no data.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field

from models.base import FeatureBatch, FloatArray, Model, ModelContext, Plan
from models.registry import ModelParams, ModelSpec, register

__all__ = [
    "EWMA",
    "EWMAParams",
    "Holt",
    "HoltParams",
    "Persistence",
    "PersistenceParams",
    "SeasonalNaive",
    "SeasonalNaiveParams",
    "ewm_level",
    "holt_level",
]


class _Baseline(Model):
    """Shared plumbing of the stateless baselines: no learning, no state."""

    @property
    def updates(self) -> int:
        """Always 0: a baseline never changes, so its version never moves."""
        return 0

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        """Do nothing: baselines are fixed functions of the window."""

    def predict(self, batch: FeatureBatch) -> FloatArray:
        """Each baseline's own fixed function of the window."""
        raise NotImplementedError

    def run(self, plan: Plan) -> FloatArray:
        """Every row in one call: nothing learned can change a baseline's output."""
        return self.predict(plan.predict)

    def state_dict(self) -> dict[str, Any]:
        """Empty: everything a baseline needs is in its constructor arguments."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Accept only an empty state, so a state saved by another kind is not ignored."""
        if state:
            raise ValueError(
                f"{type(self).__name__} has no state; got keys {sorted(state)} "
                "(was the state saved by another model kind?)"
            )


class Persistence(_Baseline):
    """Predict that the next value equals the last observed one.

    The random-walk forecast: hard to beat on prices, and the reference a forecaster's
    skill is measured against. In change mode its output is 0.

    >>> batch = FeatureBatch(
    ...     x=np.zeros((2, 0)),
    ...     window=np.array([[1.0, 2.0], [np.nan, 5.0]]),
    ...     offset=np.array([0.0, 4.0]),
    ...     keys=["a", "b"],
    ...     feature_names=[],
    ... )
    >>> Persistence().predict(batch).tolist()
    [2.0, 1.0]
    """

    def predict(self, batch: FeatureBatch) -> FloatArray:
        """The last value as a target per row; 0 where the key has no history yet."""
        last = batch.last
        out: FloatArray = np.where(np.isfinite(last), batch.to_target(last), 0.0)
        return out

    def clone(self) -> Persistence:
        """A new Persistence (it has neither parameters nor state)."""
        return Persistence()


class SeasonalNaive(_Baseline):
    """Predict the last value plus the key's change over the same stretch of its
    season, averaged over the last few seasons (the feature pipeline computes it:
    :attr:`~service.pipeline.features.Computed.seasonal`); the last value where the
    key has no known season yet (see :mod:`service.pipeline.seasons`).

    The benchmark of seasonal series (Hyndman & Athanasopoulos, *Forecasting:
    Principles and Practice*, 5.2), taken on the changes: an hourly load with a daily
    cycle moves from this hour to the next as it did yesterday at the same hours. The
    value one season ago itself would miss a growing series by a season's growth.

    >>> batch = FeatureBatch(
    ...     x=np.zeros((2, 0)),
    ...     window=np.array([[1.0, 2.0], [3.0, 5.0]]),
    ...     offset=np.array([2.0, 5.0]),
    ...     keys=["a", "b"],
    ...     feature_names=[],
    ...     seasonal=np.array([7.0, np.nan]),
    ... )
    >>> SeasonalNaive().predict(batch).tolist()
    [5.0, 0.0]
    """

    def predict(self, batch: FeatureBatch) -> FloatArray:
        """The seasonal forecast as a target; persistence where none is known."""
        level = np.where(np.isfinite(batch.season_forecast), batch.season_forecast, batch.last)
        out: FloatArray = np.where(np.isfinite(level), batch.to_target(level), 0.0)
        return out

    def clone(self) -> SeasonalNaive:
        """A new SeasonalNaive (it has neither parameters nor state)."""
        return SeasonalNaive()


def ewm_level(window: FloatArray, alpha: float) -> FloatArray:
    """Exponentially weighted mean of each row of ``window``, skipping NaN.

    Same recursion as ``pandas.Series.ewm(alpha=alpha, adjust=False, ignore_na=True)``
    read at the newest value: ``s = v_0`` for the oldest finite value, then
    ``s = alpha * v_i + (1 - alpha) * s`` for each newer finite value. Unrolled, the
    finite values ``v_0 .. v_{m-1}`` (oldest first) get weights
    ``(1 - alpha) ** (m - 1)`` for ``v_0`` and ``alpha * (1 - alpha) ** (m - 1 - i)``
    for ``i >= 1``; these are non-negative and sum to 1, so the result is a convex
    combination of the finite values. Computing the weights directly vectorises the
    recursion over the whole batch. The result is clipped to the row's finite range to
    keep that guarantee exact under rounding. Rows without a finite value give NaN.

    >>> ewm_level(np.array([[np.nan, 1.0, 3.0], [2.0, 2.0, 2.0]]), alpha=0.5).tolist()
    [2.0, 2.0]
    """
    finite = np.isfinite(window)
    if window.size and bool(finite.all()):  # a mature key's window: weights fixed
        level = window @ _full_weights(alpha, window.shape[1])
        full: FloatArray = np.clip(level, window.min(axis=1), window.max(axis=1))
        return full
    count = finite.sum(axis=1)
    # rank of each finite value counted from the newest (0 = newest)
    rank = np.maximum(np.cumsum(finite[:, ::-1], axis=1)[:, ::-1] - 1, 0)
    decay = (1.0 - alpha) ** rank
    oldest = rank == (count - 1)[:, None]
    weights = np.where(finite, np.where(oldest, decay, alpha * decay), 0.0)
    values = np.where(finite, window, 0.0)
    level = np.einsum("ij,ij->i", weights, values)
    lo = np.min(np.where(finite, window, np.inf), axis=1)
    hi = np.max(np.where(finite, window, -np.inf), axis=1)
    out: FloatArray = np.where(count > 0, np.clip(level, lo, hi), np.nan)
    return out


@functools.lru_cache(maxsize=64)
def _full_weights(alpha: float, width: int) -> FloatArray:
    """:func:`ewm_level`'s weights for a window without NaN, oldest first."""
    rank = np.arange(width - 1, -1, -1, dtype=np.float64)
    weights: FloatArray = alpha * np.power(1.0 - alpha, rank)
    weights[0] = (1.0 - alpha) ** (width - 1)
    weights.flags.writeable = False
    return weights


class EWMA(_Baseline):
    """Predict the exponentially weighted mean of the window (see :func:`ewm_level`).

    Smooths noise that persistence passes straight through, at the price of lagging
    trends; ``alpha`` near 1 approaches persistence.

    >>> batch = FeatureBatch(
    ...     x=np.zeros((1, 0)),
    ...     window=np.array([[1.0, 3.0]]),
    ...     offset=np.array([3.0]),
    ...     keys=["a"],
    ...     feature_names=[],
    ... )
    >>> EWMA(alpha=0.5).predict(batch).tolist()
    [-1.0]
    """

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha

    def predict(self, batch: FeatureBatch) -> FloatArray:
        """``ewma(window) - offset`` per row; 0 where the key has no history yet."""
        level = ewm_level(batch.window, self.alpha)
        out: FloatArray = np.where(np.isfinite(level), batch.to_target(level), 0.0)
        return out

    def clone(self) -> EWMA:
        """A new EWMA with the same ``alpha``."""
        return EWMA(alpha=self.alpha)


def holt_level(
    window: FloatArray, alpha: float, beta: float, damping: float, horizon: int
) -> FloatArray:
    """Holt's damped-trend forecast ``horizon`` steps past the newest value of each row
    of ``window``, skipping NaN; NaN for a row without a finite value.

    The recursion (Hyndman & Athanasopoulos, *Forecasting: Principles and Practice*,
    8.2, with ``phi`` = ``damping``) starts from ``level = v_0``, ``trend = 0`` at the
    oldest finite value: the window slides, so the start is taken again at every
    forecast, and a trend taken from its first two values would pass their noise on
    to every forecast (no trend is the prior the recent changes must overcome). Then,
    for each newer finite value ``v``::

        level' = alpha * v + (1 - alpha) * (level + phi * trend)
        trend' = beta * (level' - level) + (1 - beta) * phi * trend

    and the forecast ``level + (phi + phi**2 + ... + phi**horizon) * trend`` (``level``
    at horizon 0). It is linear in the values, so a window whose finite values are its
    newest ``m`` (a mature key's: all of them; a young key's: NaN before its first
    value) is one dot product with weights computed once per ``m``
    (:func:`_holt_weights`); only a row with a gap runs the recursion.

    >>> holt_level(np.array([[1.0, 2.0, 3.0, 4.0]]), 0.5, 0.5, 1.0, 1).round(4).tolist()
    [4.2969]
    >>> holt_level(np.array([[np.nan, 5.0], [np.nan, np.nan]]), 0.3, 0.1, 0.98, 1).tolist()
    [5.0, nan]
    """
    finite = np.isfinite(window)
    if window.size and bool(finite.all()):
        full: FloatArray = window @ _holt_weights(alpha, beta, damping, horizon, window.shape[1])
        return full
    width = window.shape[1]
    count = finite.sum(axis=1)
    newest = np.cumprod(finite[:, ::-1], axis=1).sum(axis=1) == count
    out: FloatArray = np.full(window.shape[0], np.nan)
    for m in np.unique(count[newest & (count > 0)]).tolist():
        rows = newest & (count == m)
        weights = _holt_weights(alpha, beta, damping, horizon, m)
        out[rows] = window[rows, width - m :] @ weights
    gaps = ~newest
    if gaps.any():
        out[gaps] = _holt_recursion(window[gaps], alpha, beta, damping, horizon)
    return out


def _holt_recursion(
    window: FloatArray, alpha: float, beta: float, damping: float, horizon: int
) -> FloatArray:
    """:func:`holt_level` run value by value, skipping NaN wherever it lies."""
    finite = np.isfinite(window)
    n = window.shape[0]
    level = np.zeros(n)
    trend = np.zeros(n)
    started = np.zeros(n, dtype=np.bool_)
    for column in range(window.shape[1]):
        value = window[:, column]
        seen = finite[:, column]
        step = seen & started
        damped = damping * trend
        smoothed = alpha * value + (1.0 - alpha) * (level + damped)
        trend = np.where(step, beta * (smoothed - level) + (1.0 - beta) * damped, trend)
        level = np.where(step, smoothed, np.where(seen & ~started, value, level))
        started |= seen
    out: FloatArray = np.where(started, level + _damped_steps(damping, horizon) * trend, np.nan)
    return out


def _damped_steps(damping: float, horizon: int) -> float:
    """``phi + phi**2 + ... + phi**horizon``: how many trend steps a forecast adds."""
    return float(sum(damping**step for step in range(1, horizon + 1)))


@functools.lru_cache(maxsize=64)
def _holt_weights(
    alpha: float, beta: float, damping: float, horizon: int, width: int
) -> FloatArray:
    """:func:`holt_level`'s weights for ``width`` finite values, oldest first: the
    forecast is linear in the values, so each value's weight is the forecast of the
    window that holds 1 there and 0 elsewhere."""
    weights = _holt_recursion(np.eye(width), alpha, beta, damping, horizon)
    weights.flags.writeable = False
    return weights


class Holt(_Baseline):
    """Predict the window's level plus its damped trend (see :func:`holt_level`).

    The exponential smoothing of a trend (Holt, 1957; damped: Gardner & McKenzie,
    1985), the benchmark of short trending series, where the learned members have not
    yet seen enough changes to learn a drift: a few dozen monthly sales. A member of
    the default ensemble for series, not for tables, whose rows have no trend (README,
    "Forecast quality"); on longer trending series the learned members follow the
    trend as well, and the ensemble weighs it down. ``damping`` below 1 bends the
    trend flat over long horizons, the safer choice when it is not known to last.

    >>> batch = FeatureBatch(
    ...     x=np.zeros((1, 0)),
    ...     window=np.array([[1.0, 2.0, 3.0, 4.0]]),
    ...     offset=np.array([4.0]),
    ...     keys=["a"],
    ...     feature_names=[],
    ... )
    >>> Holt(alpha=0.5, beta=0.5, damping=1.0, horizon=1).predict(batch).round(4).tolist()
    [0.2969]
    """

    def __init__(
        self, alpha: float = 0.3, beta: float = 0.1, damping: float = 0.98, horizon: int = 1
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        if not 0.0 < damping <= 1.0:
            raise ValueError(f"damping must be in (0, 1], got {damping}")
        if horizon < 0:
            raise ValueError(f"horizon must be at least 0, got {horizon}")
        self.alpha = alpha
        self.beta = beta
        self.damping = damping
        self.horizon = horizon

    def predict(self, batch: FeatureBatch) -> FloatArray:
        """``holt(window) - offset`` per row; 0 where the key has no history yet."""
        level = holt_level(batch.window, self.alpha, self.beta, self.damping, self.horizon)
        out: FloatArray = np.where(np.isfinite(level), batch.to_target(level), 0.0)
        return out

    def clone(self) -> Holt:
        """A new Holt with the same parameters."""
        return Holt(self.alpha, self.beta, self.damping, self.horizon)


class PersistenceParams(ModelParams):
    """``persistence`` takes no params."""


class SeasonalNaiveParams(ModelParams):
    """``seasonal_naive`` takes no params: the season is each key's own (configured in
    ``forecast.seasonal_periods`` or detected)."""


class EWMAParams(ModelParams):
    """Params of ``ewma``.

    Attributes:
        alpha: the smoothing factor: the weight of the newest value (1: persistence).
    """

    alpha: float = Field(default=0.3, gt=0.0, le=1.0)


class HoltParams(ModelParams):
    """Params of ``holt``.

    Attributes:
        alpha: the level's smoothing factor: the weight of the newest value.
        beta: the trend's smoothing factor: the weight of the newest change of level.
        damping: ``phi``, each further step's share of the trend (1: a straight line).
    """

    alpha: float = Field(default=0.3, gt=0.0, le=1.0)
    beta: float = Field(default=0.1, ge=0.0, le=1.0)
    damping: float = Field(default=0.98, gt=0.0, le=1.0)


def _build_persistence(params: PersistenceParams, context: ModelContext) -> Model:
    return Persistence()


def _build_seasonal_naive(params: SeasonalNaiveParams, context: ModelContext) -> Model:
    return SeasonalNaive()


def _build_ewma(params: EWMAParams, context: ModelContext) -> Model:
    return EWMA(alpha=params.alpha)


register(
    ModelSpec(
        kind="persistence",
        params=PersistenceParams,
        build=_build_persistence,
        summary="last observed value (random-walk forecast)",
    )
)
register(
    ModelSpec(
        kind="ewma",
        params=EWMAParams,
        build=_build_ewma,
        summary="exponentially weighted mean of the window",
    )
)


def _build_holt(params: HoltParams, context: ModelContext) -> Model:
    return Holt(params.alpha, params.beta, params.damping, context.horizon)


register(
    ModelSpec(
        kind="holt",
        params=HoltParams,
        build=_build_holt,
        summary="Holt's damped trend: the window's smoothed level plus its smoothed trend",
    )
)
register(
    ModelSpec(
        kind="seasonal_naive",
        params=SeasonalNaiveParams,
        build=_build_seasonal_naive,
        summary="the last value plus its season's change (the last value until a season is known)",
    )
)
