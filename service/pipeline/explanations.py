"""Live explanations: the top feature attributions of a sample of predictions.

Off by default. With ``explanations.topic`` set, a seeded random ``sample`` share of
the primary model's predictions also gets a record on that topic (keyed like the
prediction) with the ``top`` input features that moved the prediction most::

    {"key": "AAPL", "ts": 1700000000000, "source": "ticks:2:81234", "model": "ensemble",
     "explained": "mlp", "y_hat": 189.3, "method": "occlusion",
     "attributions": [{"feature": "diff_1", "contribution": 0.42}, ...]}

Method: occlusion, one method for every model kind: a feature's contribution is how
much the prediction (in the target's units) changes when that feature is set to its
running mean (0 after the pipeline's standardisation), all others kept. For a linear
model it is exactly weight times input; for a network, a one-row approximation of the
report's integrated gradients, at the cost of one batched prediction of F + 1 rows per
explained prediction (so the sample share bounds the cost). An ensemble's prediction
is explained through its leader (``explained``), the member with the largest weight
for that key, whose output dominates the combination. Contributions are computed with
the model as it stands after the poll the prediction came from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from models.base import FeatureBatch, FloatArray, Model, PassThrough, Plan, run_plan
from service.config import Settings
from service.pipeline.tasks import PartitionTask
from service.records import Prediction


class Remembering(PassThrough):
    """A model that is another model and keeps the rows of its last plan."""

    def __init__(self, inner: Model) -> None:
        super().__init__(inner)
        self.last: FeatureBatch | None = None

    def run(self, plan: Plan) -> FloatArray:
        self.last = plan.predict
        return run_plan(self.inner, plan)


def contributions(model: Model, batch: FeatureBatch, row: int) -> FloatArray:
    """Per feature: the change of row ``row``'s prediction, in the target's units, when
    the feature is set to 0 (its running mean)."""
    one = batch.take(np.array([row], dtype=np.intp))
    width = one.x.shape[1]
    x = np.repeat(one.x, width + 1, axis=0)
    x[np.arange(1, width + 1), np.arange(width)] = 0.0
    many = FeatureBatch(
        x,
        np.repeat(one.window, width + 1, axis=0),
        np.repeat(one.offset, width + 1),
        [one.keys[0]] * (width + 1),
        one.feature_names,
        None if one.scale is None else np.repeat(one.scale, width + 1),
        None if one.seasonal is None else np.repeat(one.seasonal, width + 1),
    )
    out = np.asarray(model.predict(many), dtype=np.float64)
    result: FloatArray = (out[0] - out[1:]) * float(one.units[0])
    return result


class LiveExplainer:
    """Wraps each task's base models and turns sampled predictions into records."""

    def __init__(self, settings: Settings) -> None:
        config = settings.explanations
        self.topic = config.topic
        self.sample = config.sample
        self.top = config.top
        self.primary = settings.primary.name
        self._random = np.random.default_rng(settings.processing.seed)

    def wrap(self, task: PartitionTask) -> None:
        for slot in task._slots:
            if slot.model is not None:
                slot.model = Remembering(slot.model)

    def forget(self, task: PartitionTask) -> None:
        """Before a poll: rows of an earlier poll must never explain this one's."""
        for slot in task._slots:
            if isinstance(slot.model, Remembering):
                slot.model.last = None

    def records(
        self, task: PartitionTask, predictions: Sequence[Prediction]
    ) -> list[tuple[bytes, bytes]]:
        """(key, value) records for the sampled predictions of the primary model."""
        mine = [p for p in predictions if p.model == self.primary]
        models = {s.name: s.model for s in task._slots if isinstance(s.model, Remembering)}
        out = []
        for row, prediction in enumerate(mine):
            if self._random.random() >= self.sample:
                continue
            name = prediction.leader or prediction.model
            model = models.get(name)
            if model is None or model.last is None or len(model.last) != len(mine):
                continue  # a poll retried event by event: its rows are not at hand
            values = contributions(model.inner, model.last, row)
            names = model.last.feature_names
            order = np.argsort(-np.abs(values), kind="stable")[: self.top]
            value = {
                "key": prediction.key,
                "ts": prediction.ts,
                "source": prediction.source,
                "model": prediction.model,
                "explained": name,
                "y_hat": prediction.y_hat,
                "method": "occlusion",
                "attributions": [
                    {"feature": str(names[j]), "contribution": float(values[j])} for j in order
                ],
            }
            out.append((prediction.key.encode(), orjson.dumps(value)))
        return out
