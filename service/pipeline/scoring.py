"""Prequential scores: MAE, MSE, RMSE and R², since start and over a rolling window.

Scores are kept as *sufficient statistics* (:class:`ScoreStats`) so that the scores of
several partition tasks pool exactly (Chan's parallel merge for the target variance),
which is what the Prometheus export needs: one value per model for the whole process.
Definitions match ``river.metrics`` (R² is 0 with fewer than two samples or a constant
target), which the tests check on the same stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.moments import merge_moments

FloatArray = npt.NDArray[np.float64]
LARGEST = 1e100
"""The largest magnitude a value, error or feature keeps: one absurd value can make a
statistic large, never infinite or NaN (its square still fits a float)."""


def bounded(values: FloatArray, limit: float = LARGEST) -> FloatArray:
    """NaN as 0, everything else clipped to ±``limit`` (what ``nan_to_num`` then
    ``clip`` give, in plain ufuncs: scores are updated per model per batch, and those
    two wrappers cost more than the arithmetic on a live stream's small batches)."""
    out: FloatArray = np.where(np.isnan(values), 0.0, np.minimum(np.maximum(values, -limit), limit))
    return out


def finite_or_zero(values: FloatArray) -> FloatArray:
    """NaN and ±inf as 0: ``nan_to_num(values, nan=0, posinf=0, neginf=0)`` in one
    ufunc pass (the wrapper costs several times the pass on a small batch)."""
    out: FloatArray = np.where(np.isfinite(values), values, 0.0)
    return out


def _clipped(y_true: FloatArray, y_pred: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Truth and error, NaN as 0 and clipped to ±:data:`LARGEST`."""
    y_true = bounded(np.asarray(y_true, dtype=np.float64))
    err = bounded(y_true - bounded(np.asarray(y_pred, dtype=np.float64)))
    return y_true, err


@dataclass(frozen=True, slots=True)
class ScoreStats:
    """Sufficient statistics of a set of scored predictions."""

    n: int = 0
    sum_abs: float = 0.0
    sum_sq: float = 0.0
    y_mean: float = 0.0
    y_m2: float = 0.0

    @classmethod
    def of(cls, y_true: FloatArray, y_pred: FloatArray) -> ScoreStats:
        """Statistics of these pairs. Values and errors are clipped to ±1e100 first,
        so that one absurd value can make a score large but never infinite or NaN
        (its square still fits a float)."""
        if len(y_true) == 0:
            return cls()
        return cls.of_clipped(*_clipped(y_true, y_pred))

    @classmethod
    def of_clipped(cls, y_true: FloatArray, err: FloatArray) -> ScoreStats:
        """Statistics of truths and errors already bounded as :meth:`of` bounds them."""
        if len(y_true) == 0:
            return cls()
        mean = float(np.mean(y_true))
        return cls(
            n=len(y_true),
            sum_abs=float(np.sum(np.abs(err))),
            sum_sq=float(np.dot(err, err)),
            y_mean=mean,
            y_m2=float(np.sum((y_true - mean) ** 2)),
        )

    def merge(self, other: ScoreStats) -> ScoreStats:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        _, y_mean, y_m2 = merge_moments(
            float(self.n), self.y_mean, self.y_m2, float(other.n), other.y_mean, other.y_m2
        )
        return ScoreStats(
            n=self.n + other.n,
            sum_abs=self.sum_abs + other.sum_abs,
            sum_sq=self.sum_sq + other.sum_sq,
            y_mean=y_mean,
            y_m2=y_m2,
        )

    @staticmethod
    def pool(parts: Iterable[ScoreStats]) -> ScoreStats:
        total = ScoreStats()
        for part in parts:
            total = total.merge(part)
        return total

    @property
    def mae(self) -> float:
        return self.sum_abs / self.n if self.n else 0.0

    @property
    def mse(self) -> float:
        return self.sum_sq / self.n if self.n else 0.0

    @property
    def rmse(self) -> float:
        return math.sqrt(self.mse)

    @property
    def r2(self) -> float:
        if self.n < 2 or self.y_m2 == 0.0:
            return 0.0
        return 1.0 - self.sum_sq / self.y_m2


class Scorer:
    """Scores of one model in one task: cumulative and over the last ``window`` events.

    The rolling part keeps the signed errors and targets in ring buffers; the
    prediction-interval code reads the recent residuals from it as well.

    >>> scorer = Scorer(window=2)
    >>> scorer.update(np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 1.0]))
    >>> scorer.total.mae, scorer.rolling().mae
    (1.3333333333333333, 2.0)
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.total = ScoreStats()
        self._err = np.zeros(window)
        self._y = np.zeros(window)
        self._filled = 0
        self._head = 0

    def update(self, y_true: FloatArray, y_pred: FloatArray) -> None:
        Scorer.update_together([self], y_true, np.asarray(y_pred, dtype=np.float64)[:, None])

    @staticmethod
    def update_together(
        scorers: Sequence[Scorer], y_true: FloatArray, y_pred: FloatArray
    ) -> list[ScoreStats]:
        """:meth:`update` of each scorer with one column of ``y_pred`` (rows × scorers)
        against the same truths, the truths' statistics computed once: a task scores
        all its models on the same rows. Returns each scorer's statistics of the batch."""
        if len(y_true) == 0:
            return [ScoreStats() for _ in scorers]
        # one row of errors per scorer, so that each one's sums run along a contiguous row
        truth, errors = _clipped(y_true, np.asarray(y_pred, dtype=np.float64).T)
        errors = np.ascontiguousarray(errors)
        of_truth = ScoreStats.of_clipped(truth, truth)
        sum_abs = np.abs(errors).sum(axis=1).tolist()
        sum_sq = np.einsum("ij,ij->i", errors, errors).tolist()
        batches = []
        for i, scorer in enumerate(scorers):
            batch = ScoreStats(len(truth), sum_abs[i], sum_sq[i], of_truth.y_mean, of_truth.y_m2)
            scorer.total = scorer.total.merge(batch)
            scorer._remember(truth, errors[i])
            batches.append(batch)
        return batches

    def _remember(self, y_true: FloatArray, err: FloatArray) -> None:
        """The newest errors and truths into the rolling window."""
        if len(err) >= self.window:
            err, y_true = err[-self.window :], y_true[-self.window :]
        head, end = self._head, self._head + len(err)
        if end <= self.window:  # no wrap: slices, cheaper than an index array per call
            self._err[head:end] = err
            self._y[head:end] = y_true
        else:
            positions = np.arange(head, end) % self.window
            self._err[positions] = err
            self._y[positions] = y_true
        self._head = end % self.window
        self._filled = min(self.window, self._filled + len(err))

    def mae_before(self, abs_errors: FloatArray) -> FloatArray:
        """For each row of a batch about to be scored (its absolute errors, in order):
        the total MAE of everything scored before that row; 0 where nothing was."""
        errors = np.asarray(abs_errors, dtype=np.float64)[None, :]
        out: FloatArray = Scorer.mae_before_together([self], errors)[0]
        return out

    @staticmethod
    def mae_before_together(scorers: Sequence[Scorer], abs_errors: FloatArray) -> FloatArray:
        """:meth:`mae_before` of each scorer with its row of ``abs_errors`` (one row
        per scorer, the same rows of a batch), in one pass for all of them."""
        rows, width = abs_errors.shape
        sums = np.array([[s.total.sum_abs, s.total.n] for s in scorers]).reshape(rows, 2)
        running = np.cumsum(abs_errors, axis=1)
        before = sums[:, :1] + np.concatenate((np.zeros((rows, 1)), running[:, :-1]), axis=1)
        counts = sums[:, 1:] + np.arange(width, dtype=np.float64)
        out: FloatArray = np.divide(before, counts, out=np.zeros((rows, width)), where=counts > 0)
        return out

    def improving_after(self, abs_errors: FloatArray, row: int) -> bool:
        """Whether, with a batch's rows up to ``row`` scored (its absolute errors, in
        order), the rolling MAE would be below the total: the same answer whatever
        the batch boundaries."""
        history = (
            self._err[: self._filled]
            if self._filled < self.window
            else np.roll(self._err, -self._head)
        )
        upto = abs_errors[: row + 1]
        recent = np.concatenate((np.abs(history), upto))[-self.window :]
        total = (self.total.sum_abs + float(upto.sum())) / (self.total.n + len(upto))
        # Until the window is full the two are one mean summed in two orders: only a
        # difference beyond rounding counts.
        return bool(recent.mean() < total * (1.0 - 1e-9))

    def recent_errors(self) -> FloatArray:
        """The signed errors ``y - y_hat`` of the rolling window (unordered)."""
        return self._err[: self._filled].copy() if self._filled < self.window else self._err.copy()

    def rolling(self) -> ScoreStats:
        if self._filled == 0:
            return ScoreStats()
        y = self._y[: self._filled] if self._filled < self.window else self._y
        return ScoreStats.of_clipped(y, self._err[: len(y)])
