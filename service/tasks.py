"""A partition task: everything forecastd knows that was learned from one partition.

Like a Kafka Streams task, each input partition owns its state: per-key windows, the
predictions waiting for their true value, the feature scaler, the models, their scores
and drift detectors. When a partition moves to another replica its task moves (or is
dropped) whole, so state of two partitions is never mixed.

One call of :meth:`PartitionTask.process` handles one micro-batch of a partition's
events, in offset order:

1. per event: out-of-order check, resolve the pending prediction this event is the
   true value of (horizon ``h >= 1``: the prediction made ``h`` events earlier for the
   same key), push the value into the key's window, and queue a new prediction;
2. one feature computation and one ``predict`` per model for all new rows;
3. score every resolved prediction (all models), feed drift detectors, then one
   ``learn`` per model on the resolved rows.

So every prediction is made before any model has learned the value it predicts
(test-then-train, in micro-batches, as River's mini-batch evaluation does). With
``h = 0`` the prediction of an event uses only earlier events' values and the event's
exogenous features, and is scored and learned in the same batch. With ``target:
change`` and ``h = 0`` the first event of a key has no previous value to change from:
it only seeds the window and gets no prediction.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.base import FeatureBatch, FloatArray, Model
from service.config import Settings
from service.drift import DriftMonitor
from service.features import FeaturePipeline, RunningScaler
from service.metrics import Metrics
from service.records import Event, Invalid, Prediction
from service.scoring import Scorer, ScoreStats
from service.windows import WindowStore

ScoredCallback = Callable[[str, FloatArray, FloatArray], None]
"""Called with (model name, true values, predictions) for every scored batch."""


@dataclass(slots=True)
class _Pending:
    """A prediction (of every model) waiting for its true value."""

    key: str
    ts_ms: int
    source: str
    consumed_at: float
    window: FloatArray
    x: FloatArray = field(default_factory=lambda: np.empty(0))
    offset: float = 0.0
    outputs: FloatArray = field(default_factory=lambda: np.empty(0))


@dataclass(slots=True)
class _ModelSlot:
    name: str
    model: Model
    scorer: Scorer
    drift: DriftMonitor
    published: bool


@dataclass(frozen=True, slots=True)
class TaskOutput:
    """What one batch produced: predictions to publish and records to dead-letter."""

    predictions: list[Prediction]
    invalid: list[Invalid]


class PartitionTask:
    """State and processing for one input partition."""

    def __init__(
        self,
        topic: str,
        partition: int,
        settings: Settings,
        prototypes: Mapping[str, Model],
        pipeline: FeaturePipeline,
        metrics: Metrics,
        on_scored: ScoredCallback | None = None,
    ) -> None:
        self.topic = topic
        self._on_scored = on_scored
        self.partition = partition
        forecast = settings.forecast
        self._horizon = forecast.horizon
        self._change = forecast.target == "change"
        self._reject_out_of_order = forecast.out_of_order == "dlq"
        self._scoring = settings.scoring
        self._pipeline = pipeline
        self._metrics = metrics
        self._windows = WindowStore(forecast.window, forecast.key_ttl_s, forecast.max_keys)
        self._scaler = RunningScaler(len(pipeline.names))
        self._pending: dict[str, deque[_Pending]] = {}
        self._slots = [
            _ModelSlot(
                name=m.name,
                model=prototypes[m.name].clone(),
                scorer=Scorer(settings.scoring.rolling_window),
                drift=DriftMonitor(settings.drift),
                published=m.primary or m.publish,
            )
            for m in settings.models
        ]
        self._primary_first = sorted(
            range(len(self._slots)), key=lambda i: not settings.models[i].primary
        )
        self.seeded_only = 0

    @property
    def active_series(self) -> int:
        return len(self._windows)

    def scores(self) -> dict[str, tuple[ScoreStats, ScoreStats]]:
        """Per model: (since-start stats, rolling stats) of this task."""
        return {s.name: (s.scorer.total, s.scorer.rolling()) for s in self._slots}

    def process(self, events: Sequence[Event]) -> TaskOutput:
        self._evict()
        invalid: list[Invalid] = []
        new: list[_Pending] = []
        exogenous: list[FloatArray] = []
        resolved: list[_Pending] = []
        truth: list[float] = []
        for event in events:
            slot = self._windows.slot(event.key)
            newest = self._windows.newest_ts(slot)
            if self._reject_out_of_order and newest is not None and event.ts_ms < newest:
                detail = f"event time {event.ts_ms} is older than the key's newest {newest}"
                invalid.append(Invalid("out_of_order", detail, event.record))
                continue
            if self._horizon == 0:
                if self._change and self._windows.count(slot) == 0:
                    self._windows.push(slot, event.ts_ms, event.y)
                    self.seeded_only += 1
                    continue
                entry = self._entry(event, self._windows.row(slot))
                self._windows.push(slot, event.ts_ms, event.y)
                resolved.append(entry)
                truth.append(event.y)
            else:
                queue = self._pending.setdefault(event.key, deque())
                if len(queue) >= self._horizon:
                    resolved.append(queue.popleft())
                    truth.append(event.y)
                self._windows.push(slot, event.ts_ms, event.y)
                entry = self._entry(event, self._windows.row(slot))
                queue.append(entry)
            new.append(entry)
            exogenous.append(event.x)
        predictions = self._predict(new, exogenous) if new else []
        if resolved:
            self._score_and_learn(resolved, np.asarray(truth))
        return TaskOutput(predictions, invalid)

    @staticmethod
    def _entry(event: Event, window: FloatArray) -> _Pending:
        record = event.record
        return _Pending(event.key, event.ts_ms, record.source, record.consumed_at, window)

    def _predict(self, new: list[_Pending], exogenous: list[FloatArray]) -> list[Prediction]:
        windows = np.stack([entry.window for entry in new])
        raw = self._pipeline.compute(windows, np.stack(exogenous))
        self._scaler.update(raw)
        x = self._scaler.transform(raw)
        offset = windows[:, -1].copy() if self._change else np.zeros(len(new))
        batch = FeatureBatch(x, windows, offset, [e.key for e in new], self._pipeline.names)
        outputs = np.empty((len(new), len(self._slots)))
        for column, slot in enumerate(self._slots):
            predicted = np.asarray(slot.model.predict(batch), dtype=np.float64)
            outputs[:, column] = np.nan_to_num(predicted, nan=0.0, posinf=0.0, neginf=0.0)
            self._metrics.predictions.labels(slot.name).inc(len(new))
        for row, entry in enumerate(new):
            entry.x = x[row]
            entry.offset = float(offset[row])
            entry.outputs = outputs[row]
        return self._publishable(new, offset, outputs)

    def _publishable(
        self, new: list[_Pending], offset: FloatArray, outputs: FloatArray
    ) -> list[Prediction]:
        predictions: list[Prediction] = []
        for column in self._primary_first:
            slot = self._slots[column]
            if not slot.published:
                continue
            y_hat = offset + outputs[:, column]
            lower, upper = self._interval(slot, y_hat)
            unbounded = [None] * len(new)
            lows = unbounded if lower is None else lower.tolist()
            highs = unbounded if upper is None else upper.tolist()
            version, horizon, name = slot.model.updates, self._horizon, slot.name
            predictions.extend(
                Prediction(
                    entry.key,
                    entry.ts_ms,
                    horizon,
                    value,
                    low,
                    high,
                    name,
                    version,
                    entry.source,
                    entry.consumed_at,
                )
                for entry, value, low, high in zip(new, y_hat.tolist(), lows, highs, strict=True)
            )
        return predictions

    def _interval(
        self, slot: _ModelSlot, y_hat: FloatArray
    ) -> tuple[FloatArray | None, FloatArray | None]:
        """Split-conformal interval from the model's recent signed errors, or None
        until ``interval_min_samples`` predictions were scored."""
        errors = slot.scorer.recent_errors()
        if len(errors) < self._scoring.interval_min_samples:
            return None, None
        alpha = 1.0 - self._scoring.interval_coverage
        low, high = np.quantile(errors, [alpha / 2, 1 - alpha / 2])
        return y_hat + low, y_hat + high

    def _score_and_learn(self, resolved: list[_Pending], y_true: FloatArray) -> None:
        offset = np.fromiter((e.offset for e in resolved), dtype=np.float64, count=len(resolved))
        outputs = np.stack([e.outputs for e in resolved])
        batch = FeatureBatch(
            np.stack([e.x for e in resolved]),
            np.stack([e.window for e in resolved]),
            offset,
            [e.key for e in resolved],
            self._pipeline.names,
        )
        target = y_true - offset
        metrics = self._metrics
        for column, slot in enumerate(self._slots):
            y_hat = offset + outputs[:, column]
            scale = slot.scorer.total.mae
            slot.scorer.update(y_true, y_hat)
            if self._on_scored is not None:
                self._on_scored(slot.name, y_true, y_hat)
            abs_err = np.abs(y_true - y_hat)
            metrics.scored.labels(slot.name).inc(len(resolved))
            metrics.abs_error.labels(slot.name).inc(float(abs_err.sum()))
            metrics.sq_error.labels(slot.name).inc(float(np.dot(abs_err, abs_err)))
            for detector, count in slot.drift.update(abs_err, scale).items():
                if count:
                    metrics.drift.labels(slot.name, detector).inc(count)
            before = slot.model.updates, _nonfinite(slot.model)
            slot.model.learn(batch, target)
            metrics.updates.labels(slot.name).inc(slot.model.updates - before[0])
            metrics.nonfinite.labels(slot.name).inc(_nonfinite(slot.model) - before[1])

    def _evict(self) -> None:
        evicted = self._windows.evict()
        for key in evicted:
            self._pending.pop(key, None)
        if evicted:
            self._metrics.evicted.inc(len(evicted))


def _nonfinite(model: Model) -> int:
    """Non-finite events a model reports (``nonfinite_events``, torch models); 0 for
    models that have no such guard."""
    return int(getattr(model, "nonfinite_events", 0))
