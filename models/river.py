"""Adapter that runs any River regressor as a forecastd :class:`~models.base.Model`.

River learns one event at a time (``learn_one``/``predict_one`` on dicts); the daemon
works in micro-batches. :class:`RiverModel` bridges the two:

* ``predict`` calls ``predict_many`` on a ``pandas.DataFrame`` when the estimator
  supports it and the batch is large enough to amortise the DataFrame overhead
  (:data:`MANY_MIN_ROWS`; below it a loop over ``predict_one`` is faster), else
  loops over ``predict_one``. Both give the same
  numbers up to floating-point rounding. A target transform (``river.linear``'s
  ``TargetStandardScaler``) has no ``predict_many`` of its own; when the regressor it
  wraps has, that runs and the transform's inverse is applied row by row, exactly what
  its ``predict_one`` does.
* ``run`` works through a task's whole poll (:class:`~models.base.Plan`) event by
  event: ``predict_one`` for each new row, ``learn_one`` as soon as a row's truth
  arrives, exactly River's online loop; rows predicted after the last learned one
  go through ``predict_many`` when there are many. So the poll size never changes what
  River learns before it predicts.
* ``learn`` loops over ``learn_one`` by default: one SGD step per event, exactly River's
  online semantics, whatever the batch size. River's ``learn_many`` takes *one*
  mean-gradient step per batch, so with it the effective learning rate per event would
  shrink as the poll loop happens to batch more records; ``mini_batch=True`` opts into
  that (faster on big batches) for estimators that support it.

The River model kinds (``river.linear``, ``river.tree``, ...) are registered in
:mod:`models.river_kinds`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import pandas as pd
from river import compose

from models.base import FeatureBatch, FloatArray, Model, Plan, interleaved

__all__ = ["MANY_MIN_ROWS", "RiverModel", "RiverRegressor", "supports_mini_batch"]

#: Batches with at least this many rows use ``predict_many``. Below it the per-call cost
#: of building a DataFrame outweighs the vectorised arithmetic (timed for a scaled
#: linear model with 12 features; ``bench/models.py`` compares batch sizes).
MANY_MIN_ROWS = 192


class RiverRegressor(Protocol):
    """The part of River's regressor API the adapter relies on (duck-typed)."""

    def learn_one(self, x: dict[str, Any], y: Any) -> Any: ...

    def predict_one(self, x: dict[str, Any]) -> Any: ...

    def clone(self) -> Any: ...


def supports_mini_batch(estimator: object) -> bool:
    """Whether ``estimator`` implements River's mini-batch API end to end.

    A ``compose.Pipeline`` always *has* ``learn_many``/``predict_many`` methods, but they
    only work when every step does, so pipelines are inspected step by step.

    >>> from river import linear_model, preprocessing, tree
    >>> supports_mini_batch(preprocessing.StandardScaler() | linear_model.LinearRegression())
    True
    >>> supports_mini_batch(tree.HoeffdingTreeRegressor())
    False
    """
    if isinstance(estimator, compose.Pipeline):
        *head, last = estimator.steps.values()
        return all(
            hasattr(step, "learn_many") and hasattr(step, "transform_many") for step in head
        ) and supports_mini_batch(last)
    return hasattr(estimator, "learn_many") and hasattr(estimator, "predict_many")


def predicts_many(estimator: object) -> bool:
    """Whether :func:`predict_frame` can predict a whole DataFrame for ``estimator``.

    >>> from river import linear_model, preprocessing, tree
    >>> predicts_many(preprocessing.TargetStandardScaler(linear_model.LinearRegression()))
    True
    >>> predicts_many(preprocessing.TargetStandardScaler(tree.HoeffdingTreeRegressor()))
    False
    """
    if supports_mini_batch(estimator):
        return True
    if isinstance(estimator, compose.TargetTransformRegressor):
        return predicts_many(estimator.regressor)
    return False


def predict_frame(estimator: Any, frame: pd.DataFrame) -> FloatArray:
    """``estimator``'s predictions for every row of ``frame`` (see :func:`predicts_many`)."""
    if not supports_mini_batch(estimator) and isinstance(
        estimator, compose.TargetTransformRegressor
    ):
        inner = predict_frame(estimator.regressor, frame).tolist()
        inverse = estimator.inverse_func
        return np.array([inverse(value) for value in inner], dtype=np.float64)
    return np.asarray(estimator.predict_many(frame), dtype=np.float64)


class RiverModel(Model):
    """A River regressor driven in micro-batches (see the module docstring).

    Non-finite River outputs (an untrained or diverged model may give NaN or None) are
    published as 0.0, "no change from the offset", because the contract promises finite
    predictions.

    >>> from river import linear_model, preprocessing
    >>> model = RiverModel(preprocessing.StandardScaler() | linear_model.LinearRegression())
    >>> batch = FeatureBatch(
    ...     x=np.array([[1.0], [-1.0]]),
    ...     window=np.zeros((2, 1)),
    ...     offset=np.zeros(2),
    ...     keys=["a", "b"],
    ...     feature_names=["f"],
    ... )
    >>> model.predict(batch).tolist()
    [0.0, 0.0]
    >>> model.learn(batch, np.array([1.0, -1.0]))
    >>> model.updates  # events learned
    2
    >>> bool(model.predict(batch)[0] > 0)
    True
    """

    def __init__(self, estimator: RiverRegressor, *, mini_batch: bool = False) -> None:
        if mini_batch and not supports_mini_batch(estimator):
            raise ValueError(
                f"mini_batch=True needs learn_many/predict_many, which "
                f"{type(estimator).__name__} does not support end to end"
            )
        self._estimator = estimator
        self._mini_batch = mini_batch
        self._many = predicts_many(estimator)
        self._updates = 0

    @property
    def estimator(self) -> RiverRegressor:
        """The wrapped River estimator (read-only use: inspection, reports)."""
        return self._estimator

    @property
    def updates(self) -> int:
        """Events learned since construction (or the loaded state): River learns one
        event at a time, so each is one learning step."""
        return self._updates

    def run(self, plan: Plan) -> FloatArray:
        """Predict and learn in event order, one event at a time (module docstring)."""
        n = len(plan.predict)
        out = np.zeros(n)
        names = list(plan.predict.feature_names)
        rows = plan.predict.x.tolist()
        learned = plan.learn.x.tolist()
        targets = plan.target.tolist()
        if not np.all(np.isfinite(plan.target)):
            raise ValueError("run() got non-finite targets")
        estimator, done = self._estimator, 0
        if self._mini_batch:  # mean-gradient steps: one learn_many per run of rows
            out = interleaved(
                plan,
                lambda a, b: self.predict(plan.predict.rows(a, b)),
                lambda a, b: self.learn(plan.learn.rows(a, b), plan.target[a:b]),
            )
        else:
            for j, before in enumerate(plan.before.tolist()):
                while done < before:
                    out[done] = _to_float(
                        estimator.predict_one(dict(zip(names, rows[done], strict=True)))
                    )
                    done += 1
                estimator.learn_one(dict(zip(names, learned[j], strict=True)), targets[j])
            self._updates += len(targets)
            if done < n:
                out[done:] = self.predict(plan.predict.rows(done, n))
        result: FloatArray = np.where(np.isfinite(out), out, 0.0)
        return result

    def predict(self, batch: FeatureBatch) -> FloatArray:
        """Learning-target predictions, finite, one per row; the model is unchanged."""
        n = len(batch)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        if self._many and n >= MANY_MIN_ROWS:
            raw = predict_frame(self._estimator, _frame(batch))
        else:
            raw = np.fromiter(
                (_to_float(self._estimator.predict_one(x)) for x in _dicts(batch)),
                dtype=np.float64,
                count=n,
            )
        out: FloatArray = np.where(np.isfinite(raw), raw, 0.0)
        return out

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        """Learn every row; raises ``ValueError`` on a non-finite target.

        A NaN target would poison SGD weights for good, so it is refused loudly rather
        than learned; the task only passes scored, finite targets.
        """
        n = len(batch)
        if target.shape != (n,):
            raise ValueError(f"target has shape {target.shape}, expected ({n},)")
        if n == 0:
            return
        if not np.all(np.isfinite(target)):
            raise ValueError("learn() got non-finite targets")
        if self._mini_batch:
            y = pd.Series(target, dtype=np.float64, copy=True)
            self._estimator.learn_many(_frame(batch), y)  # type: ignore[attr-defined]
        else:
            for x, y_one in zip(_dicts(batch), target.tolist(), strict=True):
                self._estimator.learn_one(x, y_one)
        self._updates += n

    def clone(self) -> RiverModel:
        """A fresh, untrained copy: River's ``clone()`` keeps params (and the seed)."""
        return RiverModel(self._estimator.clone(), mini_batch=self._mini_batch)

    def state_dict(self) -> dict[str, Any]:
        """``{"estimator": pickled estimator, "updates": int}``.

        River estimators are plain Python objects designed to be pickled; pickling the
        whole estimator is the only complete snapshot (trees, drift detectors, RNGs).
        """
        return {
            "estimator": pickle.dumps(self._estimator, protocol=pickle.HIGHEST_PROTOCOL),
            "updates": self._updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the estimator class must match.

        Unpickling runs code, so state must come from the daemon's own checkpoint store,
        never from an untrusted source.
        """
        estimator = pickle.loads(state["estimator"])  # noqa: S301 - trusted checkpoint, see above
        if type(estimator) is not type(self._estimator):
            raise ValueError(
                f"state holds a {type(estimator).__name__}, "
                f"this model wraps a {type(self._estimator).__name__}"
            )
        self._estimator = estimator
        self._updates = int(state["updates"])


def _frame(batch: FeatureBatch) -> pd.DataFrame:
    """``batch.x`` as a DataFrame (a copy, so River can never write into the batch)."""
    return pd.DataFrame(batch.x, columns=list(batch.feature_names), copy=True)


def _dicts(batch: FeatureBatch) -> list[dict[str, float]]:
    """``batch.x`` as River's per-event dicts."""
    names = list(batch.feature_names)
    return [dict(zip(names, row, strict=True)) for row in batch.x.tolist()]


def _to_float(value: Any) -> float:
    """River's output as a float; ``None`` (no prediction yet) becomes NaN."""
    return float("nan") if value is None else float(value)
