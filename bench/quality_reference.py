"""The reference for bench/quality.py: plain River regressors, one event at a time.

Not the daemon: a loop anyone can read, so that "the defaults are within x% of what a
reasonable River model gets" means something independent of our own pipeline. Each
event of each key, in arrival order:

1. its inputs are built from what is known at prediction time: the key's last
   :data:`LAGS` values (for ``horizon >= 1`` up to and including this event's own
   value; for ``horizon: 0`` only earlier events, never the value being predicted),
   plus the event's exogenous features if it has any;
2. every model predicts (``predict_one``) the key's value ``horizon`` events ahead;
3. then the prediction whose true value just arrived (made ``horizon`` events earlier,
   or this event's own for ``horizon: 0``) is resolved and every model learns it
   (``learn_one``): test, then train, as the daemon does, with no batching at all.

Each model runs twice, on two targets: the level itself (inputs: the raw lags), and
the change from the last known value (inputs: lags minus that value), predicting that
value plus the change. bench/quality.py picks the best (model, target) with hindsight.
One model per (regressor, target) serves every key, as one daemon task serves its
keys. Models: :func:`suite`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from river import forest, linear_model, neighbors, optim, preprocessing, tree

from service.pipeline.scoring import FloatArray

LAGS = 8
"""How many of the key's own last values a reference model sees."""

Target = Literal["level", "change"]
TARGETS: tuple[Target, ...] = ("level", "change")


class Regressor(Protocol):
    """What the loop needs of a model: River's online regressor interface."""

    def predict_one(self, x: dict[str, float]) -> Any: ...

    def learn_one(self, x: dict[str, float], y: float) -> Any: ...


def _scaled(regressor: Any) -> Any:
    """Standardised inputs and target, so that one learning rate fits every scale."""
    return preprocessing.TargetStandardScaler(regressor=preprocessing.StandardScaler() | regressor)


def suite() -> dict[str, Callable[[], Regressor]]:
    """The fixed reference models, fresh on each call; fixed seeds where they draw.

    Linear regression by SGD at two learning rates, a Hoeffding adaptive tree with
    linear leaves, passive-aggressive regression, an adaptive random forest of five
    trees (all on standardised inputs and target), and the mean of the 5 nearest of
    the last 100 events (standardised inputs). The forest is the slowest by far (about
    0.7 ms an event here): five trees keep the whole bench within a few minutes."""
    return {
        "sgd-0.01": lambda: _scaled(
            linear_model.LinearRegression(optimizer=optim.SGD(0.01), intercept_lr=0.01)
        ),
        "sgd-0.002": lambda: _scaled(
            linear_model.LinearRegression(optimizer=optim.SGD(0.002), intercept_lr=0.002)
        ),
        "hatr": lambda: _scaled(tree.HoeffdingAdaptiveTreeRegressor(seed=0)),
        "pa": lambda: _scaled(linear_model.PARegressor()),  # type: ignore[no-untyped-call]
        "arf": lambda: _scaled(forest.ARFRegressor(n_models=5, seed=0)),
        "knn": lambda: (
            preprocessing.StandardScaler()
            | neighbors.KNNRegressor(n_neighbors=5, engine=neighbors.LazySearch(window_size=100))
        ),
    }


@dataclass(frozen=True)
class Events:
    """A stream in arrival order: per event its key, target and exogenous features
    (``features[i, j]``, NaN when event i lacks feature j)."""

    keys: Sequence[str]
    y: FloatArray
    features: FloatArray
    feature_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.keys) == len(self.y) == len(self.features):
            raise ValueError("keys, y and features must have one row per event")


def inputs(
    known: Sequence[float], exogenous: Mapping[str, float], target: Target
) -> tuple[dict[str, float], float]:
    """The model inputs from a key's known values (oldest first) and the base the
    model's output is added to: for ``change``, the last known value (0 before any),
    which the lags are taken relative to; for ``level``, 0.

    Missing lags (a key's first events) repeat the oldest known value."""
    last = known[-1] if known else 0.0
    base = last if target == "change" else 0.0
    x: dict[str, float] = {}
    for lag in range(LAGS):
        value = known[-1 - lag] if lag < len(known) else (known[0] if known else 0.0)
        x[f"lag{lag}"] = value - base
    x.update(exogenous)
    return x, base


def prequential(
    events: Events,
    horizon: int,
    models: Mapping[str, Callable[[], Regressor]],
    targets: Sequence[Target] = TARGETS,
) -> dict[tuple[str, Target], FloatArray]:
    """Per (model, target), the prediction made at each event (NaN where the model
    gave none), each made before any model learned the value it predicts."""
    if horizon < 0:
        raise ValueError("horizon must be >= 0")
    runs = [(name, target, models[name]()) for name in models for target in targets]
    predicted = {(name, target): np.full(len(events.y), np.nan) for name, target, _ in runs}
    history: dict[str, deque[float]] = {}
    pending: dict[str, deque[dict[Target, tuple[dict[str, float], float]]]] = {}
    for index, key in enumerate(events.keys):
        y = float(events.y[index])
        known = history.setdefault(key, deque(maxlen=LAGS))
        waiting = pending.setdefault(key, deque())
        if horizon > 0:
            known.append(y)
        exogenous = {
            name: float(value)
            for name, value in zip(events.feature_names, events.features[index], strict=True)
            if not np.isnan(value)
        }
        built = {target: inputs(list(known), exogenous, target) for target in targets}
        for name, target, model in runs:
            x, base = built[target]
            guess = model.predict_one(x)
            if guess is not None and np.isfinite(guess):
                predicted[name, target][index] = base + float(guess)
        waiting.append(built)
        if len(waiting) > horizon:
            resolved = waiting.popleft()
            for _, target, model in runs:
                x, base = resolved[target]
                model.learn_one(x, y - base)
        if horizon == 0:
            known.append(y)
    return predicted
