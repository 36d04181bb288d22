"""The contract every forecastd model fulfils.

A model sees *micro-batches*: one :class:`FeatureBatch` holds one row per event that
needs a prediction (or that was just scored and is now learned from). Models never see
raw Kafka records, keys' histories or wall-clock time; the processing task builds the
batch with the one shared feature pipeline, so live and offline runs feed models the
very same numbers.

Learning target. Models predict and learn a *learning target*, not the level:
``target = (y_true - batch.offset) / batch.scale``. With ``forecast.target: change``
(the default), ``offset`` is the last observed value of the series and ``scale`` the
typical size of the key's own changes, so the model learns the change over the
horizon in units of that key: stationary for prices, loads and sensors that drift in
level, and comparable across keys whose values differ by orders of magnitude (one
network per partition serves all of them). With ``forecast.target: level`` the offset
is 0 and the scale 1. The task maps predictions back (``offset + scale * output``)
before publishing, so users always see the original scale. Baselines that think in
levels (persistence, EWMA, seasonal naive) compute a level and map it with
:meth:`FeatureBatch.to_target`.

Ordering. Every prediction is made before any model learned the value it predicts
(prequential, test-then-train, as River's ``progressive_val_score``), and after it
learned every value that arrived before it: a task hands a model a whole poll as a
:class:`Plan`, and the model works through it in event order (:func:`run_plan`). So a
poll of 1,000 records gives the numbers a poll of one record at a time gives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """One micro-batch of model inputs; arrays share their first dimension ``n``.

    Attributes:
        x: ``(n, F)`` standardised feature vectors (window statistics, lags,
            differences, exogenous features), finite. Column ``j`` is named
            ``feature_names[j]``.
        window: ``(n, W)`` raw target values of the key's window, oldest first,
            newest last, left-padded with NaN where the key has fewer than ``W``
            events so far. Always in the original scale.
        offset: ``(n,)`` what is added to a model output to get a level (the last
            observed value with ``target: change``, 0 with ``target: level``).
        keys: the series key of each row (for models that keep per-key state).
        feature_names: names of the columns of ``x``.
        scale: ``(n,)`` the unit of the learning target per row, positive (``None``:
            1 everywhere).
        seasonal: ``(n,)`` the seasonal naive forecast of the target (the last value
            plus the key's change over the same stretch of recent seasons), in the
            original scale, NaN where no season is known (``None``: none known).
        exogenous: ``(n, E)`` the event's own features as it carried them, before
            any scaling, NaN where missing (``None``: not kept; a model that needs
            them reads their scaled columns of ``x``).
    """

    x: FloatArray
    window: FloatArray
    offset: FloatArray
    keys: Sequence[str]
    feature_names: Sequence[str]
    scale: FloatArray | None = None
    seasonal: FloatArray | None = None
    exogenous: FloatArray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def units(self) -> FloatArray:
        """``(n,)`` the learning target's unit per row (``scale``, or ones)."""
        if self.scale is None:
            return np.ones(len(self))
        return self.scale

    @property
    def season_forecast(self) -> FloatArray:
        """``(n,)`` the seasonal naive forecast of the target (NaN where unknown)."""
        if self.seasonal is None:
            return np.full(len(self), np.nan)
        return self.seasonal

    def to_target(self, level: FloatArray) -> FloatArray:
        """Levels in the original scale as learning targets, ``(level - offset) / scale``."""
        out: FloatArray = (level - self.offset) / self.units
        return out

    def to_level(self, target: FloatArray) -> FloatArray:
        """Learning targets as levels in the original scale, ``offset + scale * target``
        (the inverse of :meth:`to_target`)."""
        out: FloatArray = self.offset + self.units * target
        return out

    def rows(self, start: int, stop: int) -> FeatureBatch:
        """Rows ``start:stop`` as views (cheap; for readers that do not mutate)."""
        return FeatureBatch(
            x=self.x[start:stop],
            window=self.window[start:stop],
            offset=self.offset[start:stop],
            keys=self.keys[start:stop],
            feature_names=self.feature_names,
            scale=None if self.scale is None else self.scale[start:stop],
            seasonal=None if self.seasonal is None else self.seasonal[start:stop],
            exogenous=None if self.exogenous is None else self.exogenous[start:stop],
        )

    @property
    def last(self) -> FloatArray:
        """``(n,)`` the newest observed value of each row's window (NaN if none)."""
        return self.window[:, -1]

    def take(self, rows: npt.NDArray[np.intp]) -> FeatureBatch:
        """Return the sub-batch with the given row indices (copies, never views)."""
        return FeatureBatch(
            x=self.x[rows],
            window=self.window[rows],
            offset=self.offset[rows],
            keys=[self.keys[i] for i in rows],
            feature_names=self.feature_names,
            scale=None if self.scale is None else self.scale[rows],
            seasonal=None if self.seasonal is None else self.seasonal[rows],
            exogenous=None if self.exogenous is None else self.exogenous[rows],
        )


IntArray = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class Plan:
    """One poll of a partition task as a model must work through it, in event order.

    Attributes:
        predict: the rows to predict, in event order.
        learn: the rows whose true value arrived in this poll, in arrival order (rows
            predicted in an earlier poll, or earlier in this one).
        target: ``(len(learn),)`` their learning targets, finite.
        before: ``(len(learn),)`` non-decreasing: learn row ``j`` arrives after the
            first ``before[j]`` rows of ``predict`` were predicted, and before the
            others. A row predicted and resolved by the same event (``horizon: 0``)
            is predicted first.

    Working through a plan means: for each ``j``, predict every row before
    ``before[j]`` not predicted yet, then learn row ``j``; finally predict the rest.
    """

    predict: FeatureBatch
    learn: FeatureBatch
    target: FloatArray
    before: IntArray

    def groups(self) -> list[tuple[int, int, int]]:
        """``(predicted_before, start, stop)``: runs of learn rows with no prediction
        between them, in order."""
        n = len(self.before)
        if n == 0:
            return []
        cuts = [0, *(np.flatnonzero(np.diff(self.before)) + 1).tolist(), n]
        before = self.before.tolist()
        return [(before[a], a, b) for a, b in pairwise(cuts)]


@runtime_checkable
class Model(Protocol):
    """An online regression model driven in micro-batches.

    Contract (checked for every registered kind by :mod:`models.checks`):

    * ``predict`` returns a finite ``(n,)`` float64 array in learning-target space and
      changes no state of the model and nothing in the batch.
    * ``learn`` updates the model from the batch and the learning targets and does not
      modify either argument.
    * ``clone`` returns a fresh, untrained model with the same parameters and seed.
    * ``load_state_dict(state_dict())`` on a clone reproduces the predictions exactly;
      the state holds only plain Python values, numpy arrays, bytes and tensors.
    * Two models built with the same parameters and seed and fed the same batches
      give the same predictions.
    * An empty batch (``n == 0``) is valid: ``predict`` returns an empty array and
      ``learn`` changes nothing. ``learn`` only ever receives finite targets.

    The model kinds subclass this protocol, so they inherit the defaults below
    (:attr:`nonfinite_events`); a structural implementation must define them too.
    """

    @property
    def updates(self) -> int:
        """The events the model has learned from: its version number, published as a
        prediction's ``model_version`` (docs/forecasting.md, "Model versions").

        Stays 0 for models that do not learn (the baselines).
        """
        ...

    @property
    def nonfinite_events(self) -> int:
        """Non-finite inputs, losses, gradients or parameters the model met and undid so
        far (``forecastd_model_nonfinite_total{model}``). 0, the default, for a model
        with no such guard."""
        return 0

    def predict(self, batch: FeatureBatch) -> FloatArray: ...

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None: ...

    def clone(self) -> Model: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def adopt(self, restored: Model) -> Model:
        """The model to go on with after a restore, ``self`` being the one these
        settings build and ``restored`` the checkpoint's (pickled under the same
        settings fingerprint, so its params differ at most in the kind's
        ``state_neutral`` ones). The default goes on with ``restored``; a kind whose
        neutral params change the model's shape converts it here."""
        return restored


@runtime_checkable
class PlanRunner(Protocol):
    """A model that works through a whole :class:`Plan` itself, faster than
    :func:`run_plan`'s generic loop (same numbers)."""

    def run(self, plan: Plan) -> FloatArray: ...


def run_plan(model: Model, plan: Plan) -> FloatArray:
    """Predictions for ``plan.predict``, learning ``plan.learn`` in event order.

    Predictions between two learned rows are made in one ``predict`` call, and learned
    rows between two predictions in one ``learn`` call: exactly the numbers of a
    one-event-at-a-time loop, with as few calls as the interleaving allows. A model
    that implements :class:`PlanRunner` does it its own way.
    """
    runner = getattr(model, "run", None)  # isinstance(model, PlanRunner), in a tenth of the time
    if callable(runner):
        out: FloatArray = runner(plan)
        return out
    return interleaved(
        plan,
        lambda start, stop: model.predict(plan.predict.rows(start, stop)),
        lambda start, stop: model.learn(plan.learn.rows(start, stop), plan.target[start:stop]),
    )


def reads_raw_features(model: Model) -> bool:
    """Whether ``model`` (or the model a :class:`PassThrough` wraps) reads
    :attr:`FeatureBatch.exogenous`: a task keeps its rows' raw features only then (they
    cost a pending row 8 bytes each, and its checkpoint as much)."""
    while isinstance(model, PassThrough):
        model = model.inner
    return bool(getattr(model, "reads_raw_features", False))


def interleaved(
    plan: Plan,
    predict: Callable[[int, int], FloatArray],
    learn: Callable[[int, int], None],
) -> FloatArray:
    """:func:`run_plan`'s order of calls, for a plan runner that makes them its own way:
    ``predict(start, stop)`` gives predict rows ``start:stop`` (each run of them
    between two learned rows in one call), ``learn(start, stop)`` learns learn rows
    ``start:stop`` (each run with no prediction between them)."""
    n = len(plan.predict)
    out = np.zeros(n)
    done = 0
    for before, start, stop in plan.groups():
        if before > done:
            out[done:before] = predict(done, before)
            done = before
        learn(start, stop)
    if done < n:
        out[done:] = predict(done, n)
    return out


class PassThrough(Model):
    """A model that is another model: every call goes to ``inner`` unchanged (``run``
    is :func:`run_plan` on it, so an inner model with its own plan runner keeps it).
    Subclasses watch what passes by: the workbench's learning-curve probes, the live
    explanations' record of a poll's rows."""

    def __init__(self, inner: Model) -> None:
        self.inner = inner

    @property
    def updates(self) -> int:
        return self.inner.updates

    @property
    def nonfinite_events(self) -> int:
        return self.inner.nonfinite_events

    def predict(self, batch: FeatureBatch) -> FloatArray:
        return self.inner.predict(batch)

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        self.inner.learn(batch, target)

    def run(self, plan: Plan) -> FloatArray:
        return run_plan(self.inner, plan)

    def clone(self) -> Model:
        return self.inner.clone()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:
        """The inner model's other attributes (a kind's extras, e.g. ``network``)."""
        if name == "inner":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


@dataclass(frozen=True, slots=True)
class ModelContext:
    """What a builder may need to know about the stream to size a model.

    Attributes:
        feature_names: the columns of ``FeatureBatch.x``, fixed for the daemon's life.
        window: ``W``, the number of events kept per key (``FeatureBatch.window`` width).
        horizon: ``forecast.horizon``.
        seed: the seed for every random choice the model makes.
        exogenous: the names of the event's own features (``schema.features``), the
            last columns of ``feature_names``.
    """

    feature_names: tuple[str, ...]
    window: int
    horizon: int
    seed: int = 0
    exogenous: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        tail = self.feature_names[len(self.feature_names) - len(self.exogenous) :]
        if self.exogenous and tail != self.exogenous:
            raise ValueError(
                f"exogenous {list(self.exogenous)} must be the last of the feature names"
                f" {list(self.feature_names)}"
            )

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def exogenous_columns(self) -> tuple[int, ...]:
        """The columns of ``FeatureBatch.x`` that hold the exogenous features."""
        return tuple(range(self.n_features - len(self.exogenous), self.n_features))
