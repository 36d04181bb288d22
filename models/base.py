"""The contract every forecastd model fulfils.

A model sees *micro-batches*: one :class:`FeatureBatch` holds one row per event that
needs a prediction (or that was just scored and is now learned from). Models never see
raw Kafka records, keys' histories or wall-clock time; the processing task builds the
batch with the one shared feature pipeline, so live and offline runs feed models the
very same numbers.

Learning target. Models predict and learn a *learning target*, not the level:
``target = y_true - batch.offset``. With ``forecast.target: change`` (the default),
``offset`` is the last observed value of the series, so the model learns the change
over the horizon, which is stationary for prices, loads and sensors that drift in
level. With ``forecast.target: level`` the offset is 0. The task adds the offset back
before publishing, so users always see predictions in the original scale. Baselines
that think in levels (persistence, EWMA) compute a level and subtract ``offset``.

Ordering. The task always calls ``predict`` on a batch before ``learn`` ever sees the
true values of those rows (prequential, test-then-train), exactly as River's
``progressive_val_score`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    """

    x: FloatArray
    window: FloatArray
    offset: FloatArray
    keys: Sequence[str]
    feature_names: Sequence[str]

    def __len__(self) -> int:
        return int(self.x.shape[0])

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
        )


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
    """

    @property
    def updates(self) -> int:
        """How many ``learn`` calls changed the model (its version number).

        Stays 0 for models that do not learn (the baselines).
        """
        ...

    def predict(self, batch: FeatureBatch) -> FloatArray: ...

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None: ...

    def clone(self) -> Model: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class ModelContext:
    """What a builder may need to know about the stream to size a model.

    Attributes:
        feature_names: the columns of ``FeatureBatch.x``, fixed for the daemon's life.
        window: ``W``, the number of events kept per key (``FeatureBatch.window`` width).
        horizon: ``forecast.horizon``.
        seed: the seed for every random choice the model makes.
    """

    feature_names: tuple[str, ...]
    window: int
    horizon: int
    seed: int = 0

    @property
    def n_features(self) -> int:
        return len(self.feature_names)
