"""``ridge``: online ridge regression of the level on the event's own features, in the
features' own running frame.

What a table at ``forecast.horizon: 0`` asks for, and what the built-in default adds
to its ensemble there (:mod:`service.config`): each row's value from that row's
features. The pipeline's target there is the change from the key's previous row, an
unrelated row in a table, which doubles the noise a model must see through, and its
window features describe that row; a model of the level from the row's own features
sees neither. It shares one fit across a task's keys, as a regression on a table
does: on keys that stand at different levels the features do not explain, it is a
poor member, which the ensemble weighs down on each key.

``rls`` with ``inputs: exogenous`` did this before, on the pipeline's standardised
features; but the pipeline scales each row with the statistics of the rows up to it
(:class:`~service.pipeline.features.RunningScaler`), and on a table whose rows come in
an order (cars by model year, houses by town) that scale keeps moving, so a fit that
keeps its past rows (RLS holds them in its covariance) holds them in the coordinates
of their day: the same car maps to another point a hundred rows later (README,
"Forecast quality", has what that cost).

This model keeps what ridge regression needs, the exponentially weighted sums of the
raw features, their products and the level (``memory`` sets the fading, as for
``rls``), and solves after each learned row the ridge problem in the frame of those
same sums: each feature centred on its weighted mean and divided by its weighted
spread, the ridge penalty ``ridge`` on the standardised slopes and the intercept (so
the first fits lean towards no effect and towards the first value learned, the
anchor, whatever the scale), as a regression with a scaler fitted on its training
rows does (Hastie, Tibshirani & Friedman, *The Elements of Statistical Learning*,
3.4.1). Every past row is then in today's frame. A solve costs ``O(d^3)`` for ``d``
features: after every learned row on a table of a few hundred rows, less often on a
long stream (:func:`solve_every`); the model reads the event's own features only,
never the pipeline's lags and windows.

Guards, as ``rls``'s: an update's error is clipped at ``clip`` times the running mean
absolute a-priori error (one outlier row moves the fit by a bounded step); a feature
missing from a row, or beyond :data:`RAW_LIMIT` in size, is taken at its mean; a row
whose level is not finite is not learned; a solve that fails keeps the last solution
and counts in ``forecastd_model_nonfinite_total``. The sums are taken about the first
learned row (and the level about the anchor), so a feature far from 0 that barely
moves keeps its spread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import Field
from scipy.linalg.blas import dger
from scipy.linalg.lapack import dposv

from models.base import FeatureBatch, FloatArray, Model, ModelContext, Plan, interleaved
from models.registry import ModelParams, ModelSpec, register

__all__ = ["RAW_LIMIT", "SOLVE_EVERY_MAX", "OnlineRidge", "RidgeParams", "solve_every"]

RAW_LIMIT = 1e100
"""A raw feature larger than this is taken as missing: its square must stay finite
in sums over many rows."""
SOLVE_EVERY_MAX = 16
"""The most rows learned between two solves (a long stream's): what a forecast may
miss, as ``torch.mlp``'s ``learn_every``."""
_CLIP_Z = 10.0  # standardised inputs are clipped here, as the pipeline's are
_FLAT = 1e-12  # a spread below this fraction of the feature's size is rounding
_UNSOLVED: tuple[FloatArray, FloatArray, FloatArray, float] = (
    np.zeros(0),
    np.ones(0),
    np.zeros(0),
    0.0,
)
"""What predicts until a solve succeeds: no slopes (:meth:`OnlineRidge._relative`
then predicts the anchor)."""


def solve_every(seen: int) -> int:
    """Rows to learn between solves, once ``seen`` rows were: every row up to 511,
    then one per 256 seen, at most :data:`SOLVE_EVERY_MAX`. A row moves the fit of
    ``n`` rows by about ``1/n`` of itself, so a solve that waits for ``n / 256`` rows
    misses a small, fixed share of what was learned; a table of a few hundred rows is
    solved at every row. It depends on the count alone, so a stream's forecasts do not
    depend on how its rows are batched.

    >>> [solve_every(n) for n in (1, 511, 512, 1024, 4096, 10**6)]
    [1, 1, 2, 4, 16, 16]
    """
    return max(1, min(SOLVE_EVERY_MAX, seen // 256))


class RidgeParams(ModelParams):
    """``ridge``: online ridge regression of the level on the event's features.

    Attributes:
        memory: rows after which a row's weight in the sums has faded to ``1/e``.
        ridge: penalty on the standardised slopes and the intercept, in rows' worth
            of "no effect".
        clip: an update's error is clipped at this many running mean absolute errors.
    """

    memory: int = Field(default=1000, ge=10, le=10_000_000)
    ridge: float = Field(default=1.0, gt=0.0)
    clip: float = Field(default=4.0, gt=0.0)


class OnlineRidge(Model):
    """Ridge regression of the level on ``columns`` of the event's features.

    It reads :attr:`FeatureBatch.exogenous` (the raw features), or, where a batch
    carries none (or not as many), its columns of ``x``.

    >>> import numpy as np
    >>> from models.base import FeatureBatch
    >>> rng = np.random.default_rng(0)
    >>> raw = np.column_stack([rng.normal(50, 10, 500), rng.normal(0, 1e-3, 500)])
    >>> level = 2.0 * raw[:, 0] - 3000.0 * raw[:, 1] + 7.0
    >>> batch = FeatureBatch(x=np.zeros((500, 2)), window=np.zeros((500, 1)),
    ...                      offset=np.zeros(500), keys=["k"] * 500,
    ...                      feature_names=["a", "b"], exogenous=raw)
    >>> model = OnlineRidge(RidgeParams(), columns=(0, 1))
    >>> model.learn(batch, level)
    >>> probe = batch.rows(0, 3)
    >>> bool(np.all(np.abs(model.predict(probe) - level[:3]) < 0.2))  # slopes a little shrunk
    True
    """

    reads_raw_features: ClassVar[bool] = True  # models.base.reads_raw_features

    def __init__(self, params: RidgeParams, columns: Sequence[int]) -> None:
        self.params = params
        self.columns = tuple(int(c) for c in columns)
        self._take = np.asarray(self.columns, dtype=np.intp)
        d = len(self.columns)
        self._decay = 1.0 - 1.0 / params.memory
        self._origin = np.zeros(d)  # the first learned row's features (finite ones)
        self._anchor = 0.0  # the first learned level
        self._n = 0.0  # weighted count
        self._sx = np.zeros(d)
        self._sxx = np.zeros((d, d), order="F")  # for BLAS's in-place rank-1 update
        self._sy = 0.0
        self._sxy = np.zeros(d)
        self._mae = 0.0
        self._seen = 0
        self._failed = 0
        self._since = 0  # rows learned since the last solve
        self._solution: tuple[FloatArray, FloatArray, FloatArray, float] | None = None

    @property
    def updates(self) -> int:
        return self._seen

    @property
    def nonfinite_events(self) -> int:
        """Solves that failed (the last solution was kept)."""
        return self._failed

    def _features(self, batch: FeatureBatch) -> FloatArray:
        """The rows' raw features (scaled ones where the batch kept none); NaN where
        missing or too large."""
        raw = batch.exogenous
        if raw is None or raw.shape[1] != len(self.columns):  # not kept: the scaled ones
            raw = batch.x[:, self._take]
        out: FloatArray = np.where(np.abs(raw) <= RAW_LIMIT, raw, np.nan)
        return out

    def _solve(self) -> tuple[FloatArray, FloatArray, FloatArray, float]:
        """``(mean, 1 / spread, slopes, intercept)`` of the sums: solved again once
        :func:`solve_every` rows were learned since the last solve."""
        if self._solution is not None and self._since < solve_every(self._seen):
            return self._solution
        self._since = 0
        d, n, ridge = len(self.columns), self._n, self.params.ridge
        mean = self._sx / n
        cov = self._sxx / n
        cov -= mean[:, None] * mean  # the weighted covariance, about the weighted mean
        spread = np.sqrt(np.maximum(cov.diagonal(), 0.0))
        flat = spread <= _FLAT * np.maximum(np.abs(mean + self._origin), 1.0)
        inverse = 1.0 / np.where(flat, 1.0, spread)
        intercept = self._sy / (n + ridge)
        if d == 0:  # no features: the level's weighted mean, shrunk to the anchor
            self._solution = (mean, inverse, np.zeros(0), intercept)
            return self._solution
        gram = cov * (n * inverse)[:, None] * inverse
        gram.flat[:: d + 1] += ridge
        moment = (self._sxy - mean * self._sy) * inverse
        _, slopes, info = dposv(gram, moment, overwrite_a=True, overwrite_b=True)
        if info != 0 or not (np.isfinite(slopes).all() and math.isfinite(intercept)):
            self._failed += 1  # the last good solve stays (restored ones too)
            if self._solution is None:
                self._solution = _UNSOLVED
            return self._solution
        self._solution = (mean, inverse, slopes, intercept)
        return self._solution

    def _relative(self, rows: FloatArray, complete: bool = False) -> FloatArray:
        """The fit's level about the anchor for rows of features about the origin
        (NaN: missing, taken at the mean; ``complete``: none is)."""
        mean, inverse, slopes, intercept = self._solve()
        if len(inverse) != len(self.columns):  # every solve so far failed
            return np.zeros(len(rows))
        z = (rows - mean) * inverse
        z.clip(-_CLIP_Z, _CLIP_Z, out=z)  # NaN stays NaN
        if not complete:
            z[np.isnan(z)] = 0.0
        out: FloatArray = z @ slopes + intercept
        return out

    def predict(self, batch: FeatureBatch) -> FloatArray:
        """The level as a learning target, ``(level - offset) / units``."""
        return self._predicted(self._features(batch), batch.offset, batch.scale)

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        """One row at a time, in order: its a-priori error, clipped, into the sums."""
        self._learn_rows(self._features(batch), batch.to_level(target).tolist())

    def run(self, plan: Plan) -> FloatArray:
        """:func:`~models.base.run_plan`'s calls, the same rows in each, with the
        features and levels of the whole plan taken once: at horizon 0 a poll
        alternates a prediction and a learned row, and building a batch per call
        cost more than the arithmetic."""
        asked, offset, scale = self._features(plan.predict), plan.predict.offset, plan.predict.scale
        learned, levels = self._features(plan.learn), plan.learn.to_level(plan.target).tolist()
        return interleaved(
            plan,
            lambda a, b: self._predicted(
                asked[a:b], offset[a:b], None if scale is None else scale[a:b]
            ),
            lambda a, b: self._learn_rows(learned[a:b], levels[a:b]),
        )

    def _predicted(
        self, features: FloatArray, offset: FloatArray, scale: FloatArray | None
    ) -> FloatArray:
        """:meth:`predict` of rows given by their features, offsets and units."""
        if self._seen == 0:
            return np.zeros(len(features))
        out = self._relative(features - self._origin)
        out += self._anchor - offset
        return out if scale is None else out / scale

    def _learn_rows(self, features: FloatArray, levels: list[float]) -> None:
        """:meth:`learn` of rows given by their features and levels."""
        for row, value in zip(features, levels, strict=True):
            if not (math.isfinite(value) and abs(value) <= RAW_LIMIT):
                continue
            if self._seen == 0:
                self._origin = np.where(np.isnan(row), 0.0, row)
                self._anchor = value
            self._learn_one(row - self._origin, value - self._anchor)

    def _learn_one(self, x: FloatArray, y: float) -> None:
        if self._seen:
            missing = np.isnan(x)
            if missing.any():
                x = np.where(missing, self._sx / self._n, x)
            predicted = float(self._relative(x[None, :], complete=True)[0])
            error = y - predicted
            bound = self.params.clip * self._mae
            clipped = min(max(error, -bound), bound) if bound > 0 else error
            self._mae += (abs(error) - self._mae) / min(self._seen, self.params.memory)
            y = predicted + clipped
        else:  # the first row is the origin: its missing features are 0 about it
            x = np.where(np.isnan(x), 0.0, x)
        keep = self._decay
        self._n = keep * self._n + 1.0
        self._sx *= keep
        self._sx += x
        self._sxx *= keep
        if len(x):  # BLAS refuses empty vectors
            self._sxx = dger(1.0, x, x, a=self._sxx, overwrite_a=True)  # in place (Fortran)
        self._sy = keep * self._sy + y
        self._sxy *= keep
        self._sxy += y * x
        self._seen += 1
        self._since += 1

    def clone(self) -> OnlineRidge:
        return OnlineRidge(self.params, self.columns)

    def state_dict(self) -> dict[str, Any]:
        return {
            "origin": self._origin.copy(),
            "anchor": self._anchor,
            "n": self._n,
            "sx": self._sx.copy(),
            "sxx": self._sxx.copy(),
            "sy": self._sy,
            "sxy": self._sxy.copy(),
            "mae": self._mae,
            "seen": self._seen,
            # the solve in use and its age: a restored model goes on exactly
            "solution": None if self._solution is None else [*self._solution],
            "since": self._since,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        sx = np.asarray(state["sx"], dtype=np.float64)
        if sx.shape != self._sx.shape:
            raise ValueError(
                f"ridge state has {sx.size} features, this model {len(self.columns)}: "
                "the feature list changed since the state was saved"
            )
        self._origin = np.asarray(state["origin"], dtype=np.float64).copy()
        self._anchor = float(state["anchor"])
        self._n = float(state["n"])
        self._sx = sx.copy()
        self._sxx = np.asfortranarray(np.asarray(state["sxx"], dtype=np.float64).copy())
        self._sy = float(state["sy"])
        self._sxy = np.asarray(state["sxy"], dtype=np.float64).copy()
        self._mae = float(state["mae"])
        self._seen = int(state["seen"])
        solution = state.get("solution")
        if solution is None:
            self._solution, self._since = None, 0
        else:
            mean, inverse, slopes, intercept = solution
            self._solution = (
                np.asarray(mean, dtype=np.float64).copy(),
                np.asarray(inverse, dtype=np.float64).copy(),
                np.asarray(slopes, dtype=np.float64).copy(),
                float(intercept),
            )
            self._since = int(state.get("since", 0))


def _build(params: RidgeParams, context: ModelContext) -> Model:
    return OnlineRidge(params, context.exogenous_columns)


register(
    ModelSpec(
        kind="ridge",
        params=RidgeParams,
        build=_build,
        summary="ridge regression of the level on the event's features, in their own frame",
    )
)
