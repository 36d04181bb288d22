"""``rls``: online least squares by recursive least squares, with forgetting.

Why a second linear model beside ``river.linear``: stochastic gradient descent takes
thousands of events to settle, and its learning rate is a guess about the stream. RLS
keeps the exact (exponentially weighted, ridge-regularised) least-squares solution
after every event: the Kalman filter of a linear model with constant weights (Haykin,
*Adaptive Filter Theory*, ch. 10; Ljung & Söderström, *Theory and Practice of
Recursive Identification*, 1983). It converges in a few times as many events as it has
features and has no learning rate: on a table of a few hundred rows, where SGD has
barely moved, it already holds the least-squares fit of the rows seen so far. It does
not replace ``river.linear`` in the default ensemble: with many features and few rows
an exact fit overfits where SGD's slow start acts as shrinkage, and the ensemble
picks whichever of the two is ahead on each key.

Per event of ``d`` inputs (the features and an intercept) it costs ``O(d^2)``: the
gain ``k = P x / (lambda + x' P x)``, the weights ``w += k e`` and the inverse
correlation matrix ``P = (P - k x' P) / lambda``. Three guards make it safe to run for
months:

* *forgetting* ``lambda = 1 - 1/memory``: old events fade, so the model tracks a
  stream whose relations change;
* *bounded covariance*: forgetting inflates ``P`` in directions no recent input
  excites (estimator wind-up, Åström & Wittenmark, *Adaptive Control*, 11.2), which
  makes the next such input move the weights wildly; ``P``'s trace is capped at its
  initial value, i.e. the ridge prior is never weaker than at the start;
* *bounded errors*: the error an update uses is clipped at ``clip`` times the
  model's running mean absolute a-priori error (a Huber-type update), so one outlier
  moves the weights by a bounded step;
* *a covariance that stays a covariance*: if rounding ever makes ``P`` indefinite
  (``x' P x < 0``, the classic failure of RLS in long runs), ``P`` starts again from
  its prior, the weights are kept, and ``forecastd_model_nonfinite_total`` counts it.

It learns one event at a time (the update is sequential by nature), so how fast it
learns does not depend on batching.

``inputs: exogenous`` with ``target: level`` makes it a plain online regression of
the value on the event's own features (``schema.features``) and an intercept, on the
pipeline's scaled features. The built-in default's member for tables is
:mod:`models.ridge` instead: the pipeline scales each row with the statistics of the
rows before it, and on a table whose rows come in an order that scale keeps moving,
while RLS keeps its past rows in the scale of their day; ``ridge`` keeps raw sums and
solves in their own frame. It shares one fit across a topic's keys, as a regression
on a table does: on a table whose keys stand at different levels that the features
do not explain (a panel of sensors, each nowcast from its own inputs), it is a poor
member, which the ensemble weighs down on each key at a small cost. On series
(``horizon >= 1``) the other members already see the exogenous features beside the
key's history.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field
from scipy.linalg.blas import daxpy, ddot, dgemv, dger

from models.base import FeatureBatch, FloatArray, Model, ModelContext, Plan, interleaved
from models.keys import key_bucket
from models.registry import ModelParams, ModelSpec, register

__all__ = ["RLS", "KeyedRLS", "RLSParams"]

_SCALE_RANGE = (1e-8, 1e8)
"""Where P's scalar factor is folded back into the matrix, long before it could
overflow or lose precision."""


class RLSParams(ModelParams):
    """``rls``: recursive least squares on the shared features (module docstring).

    Attributes:
        memory: events after which an event's weight in the fit has faded to ``1/e``
            (forgetting factor ``1 - 1/memory``).
        ridge: prior precision of the weights (the initial ``P`` is ``I / ridge``);
            larger shrinks the first fits harder towards 0 (no change, in change mode).
        clip: an update's error is clipped at this many running mean absolute errors.
        inputs: ``all``: every feature of the pipeline; ``exogenous``: the event's own
            features (``schema.features``) only, and the intercept. With ``target:
            level`` that is a regression of the value on what the event carries, the
            member the default ensemble adds at ``forecast.horizon: 0``.
        target: ``pipeline``: the pipeline's learning target (``forecast.target``, in
            key units); ``level``: the value itself, in its own scale, as its
            distance from the first value learned (the anchor), so that the ridge
            prior pulls towards that value and not towards 0, whatever the scale.
        key_buckets: 1, one fit for every key of the task; more, one fit per hash
            bucket of the key (:class:`KeyedRLS`), so that unlike series sharing a
            partition are not fitted by one blend.
    """

    memory: int = Field(default=1000, ge=10, le=10_000_000)
    ridge: float = Field(default=10.0, gt=0.0)
    clip: float = Field(default=4.0, gt=0.0)
    inputs: Literal["all", "exogenous"] = "all"
    target: Literal["pipeline", "level"] = "pipeline"
    key_buckets: int = Field(default=1, ge=1, le=65_536)

    # a checkpoint's fit goes on under another key_buckets (RLS.adopt, KeyedRLS.adopt)
    state_neutral: ClassVar[frozenset[str]] = frozenset({"key_buckets"})


class RLS(Model):
    """One linear model for every key of a task, updated by RLS event by event.

    >>> import numpy as np
    >>> from models.base import FeatureBatch
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(2000, 2))
    >>> batch = FeatureBatch(x=x, window=np.zeros((2000, 1)), offset=np.zeros(2000),
    ...                      keys=["k"] * 2000, feature_names=["a", "b"])
    >>> model = RLS(RLSParams(), n_features=2)
    >>> model.learn(batch, 3.0 * x[:, 0] - x[:, 1] + 0.5)
    >>> [round(v, 2) for v in model.weights.tolist()]
    [3.0, -1.0, 0.5]
    """

    def __init__(
        self, params: RLSParams, n_features: int, columns: Sequence[int] | None = None
    ) -> None:
        """``columns``: the columns of ``FeatureBatch.x`` it reads (None: all
        ``n_features``); ``n_features`` is their number."""
        if columns is not None and len(columns) != n_features:
            raise ValueError(f"rls reads {len(columns)} columns, not n_features={n_features}")
        self.params = params
        self.n_features = n_features
        self.columns = None if columns is None else tuple(int(c) for c in columns)
        self._take = None if columns is None else np.asarray(self.columns, dtype=np.intp)
        self.level = params.target == "level"
        self._anchor = 0.0  # a level model's first learned value; 0 until then
        self._lambda = 1.0 - 1.0 / params.memory
        d = n_features + 1
        self._trace_cap = d / params.ridge
        self.weights = np.zeros(d)
        # P is kept as ``_scale * _p`` (Fortran order, for BLAS's in-place rank-1
        # update): dividing P by lambda every event is then one float division.
        self._p = np.asfortranarray(np.eye(d) / params.ridge)
        self._scale = 1.0
        self._trace = self._trace_cap
        self._mae = 0.0
        self._seen = 0
        self._restarts = 0

    @property
    def updates(self) -> int:
        return self._seen

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A model pickled before ``inputs`` and ``target`` existed read every feature
        and learned the pipeline's target."""
        self.__dict__.update(state)
        if "level" not in state:
            self.params = RLSParams.model_validate(
                {k: v for k, v in vars(self.params).items() if k in RLSParams.model_fields}
            )
            self.columns, self._take, self.level, self._anchor = None, None, False, 0.0

    def _inputs(self, batch: FeatureBatch) -> FloatArray:
        return batch.x if self._take is None else batch.x[:, self._take]

    def predict(self, batch: FeatureBatch) -> FloatArray:
        """``w . [x, 1]`` per row (as a learning target, for a level model)."""
        return self._output(self._inputs(batch), batch.offset, batch.units)

    def _output(self, x: FloatArray, offset: FloatArray, units: FloatArray) -> FloatArray:
        """:meth:`predict` of rows given by their inputs, offsets and units."""
        out: FloatArray = x @ self.weights[:-1] + self.weights[-1]
        if self.level:  # the level as a learning target
            level: FloatArray = (out + self._anchor - offset) / units
            return level
        return out

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        """One RLS step per row, in order."""
        rows, target = self._prepared(batch, target)
        for x, y in zip(rows, target.tolist(), strict=True):
            self._learn_one(x, y)

    def _learn_one(self, x: FloatArray, y: float) -> None:
        """One row ``[x, 1]`` and what it learns (a level model's level: its first
        learned one is the anchor the fit is relative to)."""
        if self.level:
            if self._seen == 0:
                self._anchor = y
            y -= self._anchor
        self._step(x, y)

    def _prepared(self, batch: FeatureBatch, target: FloatArray) -> tuple[FloatArray, FloatArray]:
        """The rows ``[x, 1]`` and what they learn: the target, or for a level model
        the level (its anchor not yet taken off)."""
        if self.level:
            target = batch.to_level(target)
        rows = np.empty((len(target), self.n_features + 1))
        rows[:, :-1] = self._inputs(batch)
        rows[:, -1] = 1.0
        return rows, target

    def _step(self, x: FloatArray, y: float) -> None:
        """One RLS update, in BLAS calls on the arrays in place (the per-event cost
        is the Python overhead of each call, not the arithmetic)."""
        lam, scale = self._lambda, self._scale
        px = dgemv(scale, self._p, x)  # P x
        denom = lam + ddot(x, px)
        if not denom >= lam:  # P lost positive definiteness to rounding (or NaN)
            self._restart_covariance()
            return
        error = y - ddot(self.weights, x)
        magnitude = abs(error)
        self._seen += 1
        if self._seen > 1:
            bound = self.params.clip * self._mae
            if magnitude > bound > 0:
                error = bound if error > 0 else -bound
        self._mae += (magnitude - self._mae) / min(self._seen, self.params.memory)
        self.weights = daxpy(px, self.weights, a=error / denom)  # w += gain * error
        # P <- (P - px px' / denom) / lambda, with its trace kept alongside
        dger(-1.0 / (scale * denom), px, px, a=self._p, overwrite_a=True)
        self._trace = (self._trace - ddot(px, px) / denom) / lam
        scale /= lam
        if self._trace > self._trace_cap:
            scale *= self._trace_cap / self._trace
            self._trace = self._trace_cap
        if not _SCALE_RANGE[0] < scale < _SCALE_RANGE[1]:
            self._p *= scale
            scale = 1.0
        self._scale = scale

    def _restart_covariance(self) -> None:
        """Start P again from the prior, keeping the weights: the fit so far stays,
        its confidence is forgotten. Counted as a non-finite event."""
        self._p = np.asfortranarray(np.eye(self.n_features + 1) / self.params.ridge)
        self._scale = 1.0
        self._trace = self._trace_cap
        self._restarts += 1

    @property
    def nonfinite_events(self) -> int:
        """Times rounding broke the covariance and it was started again."""
        return self._restarts

    def clone(self) -> RLS:
        return RLS(self.params, self.n_features, self.columns)

    def adopt(self, restored: Model) -> Model:
        """A checkpoint of fits per key bucket goes on as one fit: its most learned."""
        if isinstance(restored, KeyedRLS):
            return restored.most_learned()
        return restored

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.copy(),
            "p": self._p.copy(),
            "p_scale": self._scale,
            "trace": self._trace,
            "mae": self._mae,
            "seen": self._seen,
            "anchor": self._anchor,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        weights = np.asarray(state["weights"], dtype=np.float64)
        if weights.shape != self.weights.shape:
            raise ValueError(
                f"rls state has {weights.size - 1} features, this model {self.n_features}: "
                "the feature list changed since the state was saved"
            )
        self.weights = weights.copy()
        self._p = np.asfortranarray(np.asarray(state["p"], dtype=np.float64).copy())
        self._scale = float(state["p_scale"])
        self._trace = float(state["trace"])
        self._mae = float(state["mae"])
        self._seen = int(state["seen"])
        self._anchor = float(state.get("anchor", 0.0))


class KeyedRLS(Model):
    """One :class:`RLS` per hash bucket of the key (``key_buckets``), each fitted on its
    keys' events alone.

    A partition task's keys share one fit by default: their features are in each
    key's own units, so a panel of alike series teaches it what each series would
    learn alone, from more events. Unlike series in one partition (a waveform beside
    a weekly cycle) get one blend that fits neither (``bench.together``). RLS reaches
    its least-squares fit in a few times as many events as it has inputs, which is
    what makes a fit per group of keys affordable where SGD's would still be cold.
    Keys are hashed (:func:`models.keys.key_bucket`, stable across processes) rather
    than given a fit each, so memory stays bounded whatever the number of keys: at
    most ``key_buckets`` fits of ``(d + 1)^2`` floats per task, each made on a
    bucket's first learned row. Keys that share a bucket share a fit, as every key
    does with one bucket. A bucket not yet learned predicts what a fresh fit does (no
    change).

    >>> import numpy as np
    >>> from models.base import FeatureBatch
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(4000, 1))
    >>> keys = ["up", "down"] * 2000
    >>> batch = FeatureBatch(x=x, window=np.zeros((4000, 1)), offset=np.zeros(4000),
    ...                      keys=keys, feature_names=["a"])
    >>> model = KeyedRLS(RLSParams(key_buckets=64), n_features=1)
    >>> model.learn(batch, np.where(np.array(keys) == "up", 2.0, -2.0) * x[:, 0])
    >>> probe = FeatureBatch(x=np.ones((2, 1)), window=np.zeros((2, 1)), offset=np.zeros(2),
    ...                      keys=["up", "down"], feature_names=["a"])
    >>> [round(v, 2) for v in model.predict(probe).tolist()]
    [2.0, -2.0]
    """

    def __init__(
        self, params: RLSParams, n_features: int, columns: Sequence[int] | None = None
    ) -> None:
        self.params = params
        self.n_features = n_features
        self.columns = None if columns is None else tuple(int(c) for c in columns)
        # what a bucket starts from: a fresh fit, or a restored shared one (adopt)
        self._fresh = RLS(params, n_features, columns)
        self._fits: dict[int, RLS] = {}
        self._learned = 0  # rows learned, the restored fit's before it included

    @property
    def updates(self) -> int:
        return self._learned

    @property
    def nonfinite_events(self) -> int:
        return sum(fit.nonfinite_events for fit in self._fits.values())

    def _buckets(self, batch: FeatureBatch) -> list[int]:
        buckets: list[int] = key_bucket(batch.keys, self.params.key_buckets).tolist()
        return buckets

    def predict(self, batch: FeatureBatch) -> FloatArray:
        """Each row by its bucket's fit (a batch of one bucket exactly as one shared
        fit predicts it: a plan predicts one row at a time between learned rows)."""
        x = self._fresh._inputs(batch)
        return self._predict_rows(self._buckets(batch), x, batch.offset, batch.units)

    def _predict_rows(
        self, buckets: list[int], x: FloatArray, offset: FloatArray, units: FloatArray
    ) -> FloatArray:
        """:meth:`predict` of rows given by their buckets, inputs, offsets and units."""
        if len(set(buckets)) <= 1:
            return self._fits.get(buckets[0] if buckets else 0, self._fresh)._output(
                x, offset, units
            )
        out = np.empty(len(buckets))
        of_row = np.asarray(buckets)
        for bucket in sorted(set(buckets)):
            rows = np.flatnonzero(of_row == bucket)
            fit = self._fits.get(bucket, self._fresh)
            out[rows] = fit._output(x[rows], offset[rows], units[rows])
        return out

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        """One RLS step per row, in order, on the row's bucket's fit."""
        rows, target = self._fresh._prepared(batch, target)
        self._learn_rows(self._buckets(batch), rows, target.tolist())

    def _learn_rows(self, buckets: list[int], rows: FloatArray, target: list[float]) -> None:
        """:meth:`learn` of prepared rows (:meth:`RLS._prepared`) given by their buckets."""
        fits = self._fits
        for bucket, x, y in zip(buckets, rows, target, strict=True):
            fit = fits.get(bucket)
            if fit is None:
                fit = fits[bucket] = copy.deepcopy(self._fresh)
                fit._restarts = 0  # the start's own were counted where they happened
            fit._learn_one(x, y)
        self._learned += len(rows)

    def run(self, plan: Plan) -> FloatArray:
        """:func:`~models.base.run_plan`'s calls, the same rows in each, with the
        buckets, inputs and learned rows of the whole plan taken once: a live poll
        alternates a prediction and a learned row, and per call those were most of
        the cost."""
        asks = self._buckets(plan.predict)
        x = self._fresh._inputs(plan.predict)
        offset, units = plan.predict.offset, plan.predict.units
        rows, target = self._fresh._prepared(plan.learn, plan.target)
        learns, targets = self._buckets(plan.learn), target.tolist()
        return interleaved(
            plan,
            lambda a, b: self._predict_rows(asks[a:b], x[a:b], offset[a:b], units[a:b]),
            lambda a, b: self._learn_rows(learns[a:b], rows[a:b], targets[a:b]),
        )

    def clone(self) -> KeyedRLS:
        return KeyedRLS(self.params, self.n_features, self.columns)

    def adopt(self, restored: Model) -> Model:
        """A checkpoint of one fit for every key (or of another number of buckets)
        goes on with that fit as every bucket's start: a bucket's first rows refine
        what the task had learned instead of starting from no fit at all."""
        if isinstance(restored, KeyedRLS):
            if restored.params.key_buckets == self.params.key_buckets:
                return restored
            restored = restored.most_learned()
        if not isinstance(restored, RLS):
            return restored
        keyed = self.clone()
        keyed._fresh, keyed._learned = restored, restored.updates
        return keyed

    def most_learned(self) -> RLS:
        """The bucket fit that learned the most events (a fresh one if none did)."""
        if not self._fits:
            return copy.deepcopy(self._fresh)
        return max(self._fits.values(), key=lambda fit: fit.updates)

    def state_dict(self) -> dict[str, Any]:
        return {
            "start": self._fresh.state_dict(),
            "buckets": {str(b): fit.state_dict() for b, fit in self._fits.items()},
            "learned": self._learned,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        start = self._fresh.clone()
        start.load_state_dict(state["start"])
        fits: dict[int, RLS] = {}
        for bucket, saved in state["buckets"].items():
            fit = fits[int(bucket)] = start.clone()
            fit.load_state_dict(saved)
        self._fresh, self._fits, self._learned = start, fits, int(state["learned"])


def _build(params: RLSParams, context: ModelContext) -> Model:
    keyed = params.key_buckets > 1
    if params.inputs == "exogenous":
        columns = context.exogenous_columns
        n = len(columns)
        return KeyedRLS(params, n, columns) if keyed else RLS(params, n, columns)
    return KeyedRLS(params, context.n_features) if keyed else RLS(params, context.n_features)


register(
    ModelSpec(
        kind="rls",
        params=RLSParams,
        build=_build,
        summary="linear least squares by recursive least squares with forgetting",
    )
)
