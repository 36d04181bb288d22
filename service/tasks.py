"""A partition task: everything forecastd knows that was learned from one partition.

Like a Kafka Streams task, each input partition owns its state: per-key windows, the
predictions waiting for their true value, the feature scaler, the models, their scores
and drift detectors. When a partition moves to another replica its task moves (or is
dropped) whole, so state of two partitions is never mixed.

One call of :meth:`PartitionTask.process` handles one micro-batch of a partition's
events, in offset order:

1. per event, in Python only what must be sequential: the out-of-order check, which
   pending prediction this event is the true value of (horizon ``h >= 1``: the one
   made ``h`` events earlier for the same key), and queueing its own;
2. every value pushed into its key's window, every event's window gathered, one
   feature computation and one ``predict`` per model for all new rows (NumPy, per
   batch: a batch's rows live in one set of arrays, and a pending prediction is a
   reference to its row);
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


@dataclass(eq=False, slots=True)
class _Rows:
    """The rows one batch predicted (every model), kept while any waits for its truth.

    Pending predictions are references ``(rows, index)`` into these arrays rather than
    an object per event: a batch's rows are gathered with one fancy index each.
    """

    keys: list[str] = field(default_factory=list)
    window: FloatArray = field(default_factory=lambda: np.empty((0, 0)))  # (n, W)
    x: FloatArray = field(default_factory=lambda: np.empty((0, 0)))  # (n, F)
    offset: FloatArray = field(default_factory=lambda: np.empty(0))  # (n,)
    outputs: FloatArray = field(default_factory=lambda: np.empty((0, 0)))  # (n, models)

    def __len__(self) -> int:
        return len(self.keys)

    def fill(
        self,
        keys: list[str],
        window: FloatArray,
        x: FloatArray,
        offset: FloatArray,
        outputs: FloatArray,
    ) -> None:
        """Set the rows once predicted (references to them are taken before)."""
        self.keys, self.window, self.x, self.offset, self.outputs = keys, window, x, offset, outputs


_Ref = tuple[_Rows, int]
_COMPACT_EVERY = 64  # batches between checks of what waiting rows keep alive
_COMPACT_SLACK = 4096  # rows kept beyond twice the waiting ones before compacting


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
        self._pending: dict[str, deque[_Ref]] = {}
        self._batches = 0
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
        pushed: list[Event] = []  # every accepted event: its value enters the window
        slots: list[int] = []
        seen: list[int] = []  # per event: its key's values pushed in this batch before it
        predicted: list[int] = []  # indices into ``pushed`` of events that get a prediction
        refs: list[_Ref] = []  # predictions resolved by this batch, in event order
        truth: list[float] = []
        rows = _Rows()  # this batch's predictions, filled by _predict
        batch_counts: dict[int, int] = {}
        newest: dict[int, int] = {}
        windows, horizon = self._windows, self._horizon
        for event in events:
            slot = windows.slot(event.key)
            if self._reject_out_of_order:
                latest = newest[slot] if slot in newest else windows.newest_ts(slot)
                if latest is not None and event.ts_ms < latest:
                    detail = f"event time {event.ts_ms} is older than the key's newest {latest}"
                    invalid.append(Invalid("out_of_order", detail, event.record))
                    continue
                newest[slot] = event.ts_ms if latest is None else max(latest, event.ts_ms)
            position = batch_counts.get(slot, 0)
            batch_counts[slot] = position + 1
            pushed.append(event)
            slots.append(slot)
            seen.append(position)
            if horizon == 0:
                if self._change and windows.count(slot) + position == 0:
                    self.seeded_only += 1  # nothing to change from: it only seeds
                    continue
                refs.append((rows, len(predicted)))
                truth.append(event.y)
            else:
                queue = self._pending.setdefault(event.key, deque())
                if len(queue) >= horizon:
                    refs.append(queue.popleft())
                    truth.append(event.y)
                queue.append((rows, len(predicted)))
            predicted.append(len(pushed) - 1)
        if not pushed:
            return TaskOutput([], invalid)
        index = np.asarray(predicted, dtype=np.intp)
        all_windows = windows.push_many(
            np.asarray(slots, dtype=np.intp),
            np.fromiter((e.ts_ms for e in pushed), dtype=np.int64, count=len(pushed)),
            np.fromiter((e.y for e in pushed), dtype=np.float64, count=len(pushed)),
            np.asarray(seen, dtype=np.intp) + (1 if horizon else 0),
        )
        new = [pushed[i] for i in predicted]
        predictions = self._predict(new, rows, all_windows[index]) if new else []
        if refs:
            self._score_and_learn(refs, np.asarray(truth))
        self._batches += 1
        if self._batches % _COMPACT_EVERY == 0:
            self._compact_pending()
        return TaskOutput(predictions, invalid)

    def _predict(self, new: list[Event], rows: _Rows, windows: FloatArray) -> list[Prediction]:
        """Features and every model's prediction for the new rows, kept in ``rows``."""
        exogenous = np.stack([event.x for event in new])
        raw = self._pipeline.compute(windows, exogenous)
        self._scaler.update(raw)
        x = self._scaler.transform(raw)
        offset = windows[:, -1].copy() if self._change else np.zeros(len(new))
        keys = [event.key for event in new]
        batch = FeatureBatch(x, windows, offset, keys, self._pipeline.names)
        outputs = np.empty((len(new), len(self._slots)))
        for column, slot in enumerate(self._slots):
            predicted = np.asarray(slot.model.predict(batch), dtype=np.float64)
            outputs[:, column] = np.nan_to_num(predicted, nan=0.0, posinf=0.0, neginf=0.0)
            self._metrics.predictions.labels(slot.name).inc(len(new))
        rows.fill(keys, windows, x, offset, outputs)
        return self._publishable(new, offset, outputs)

    def _publishable(
        self, new: list[Event], offset: FloatArray, outputs: FloatArray
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
                    event.key,
                    event.ts_ms,
                    horizon,
                    value,
                    low,
                    high,
                    name,
                    version,
                    event.record.source,
                    event.record.consumed_at,
                )
                for event, value, low, high in zip(new, y_hat.tolist(), lows, highs, strict=True)
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

    def _score_and_learn(self, refs: list[_Ref], y_true: FloatArray) -> None:
        batch, outputs = _gather(refs, self._pipeline.names)
        offset = batch.offset
        target = y_true - offset
        metrics = self._metrics
        for column, slot in enumerate(self._slots):
            y_hat = offset + outputs[:, column]
            scale = slot.scorer.total.mae
            slot.scorer.update(y_true, y_hat)
            if self._on_scored is not None:
                self._on_scored(slot.name, y_true, y_hat)
            abs_err = np.abs(y_true - y_hat)
            metrics.scored.labels(slot.name).inc(len(refs))
            metrics.abs_error.labels(slot.name).inc(float(abs_err.sum()))
            metrics.sq_error.labels(slot.name).inc(float(np.dot(abs_err, abs_err)))
            for detector, count in slot.drift.update(abs_err, scale).items():
                if count:
                    metrics.drift.labels(slot.name, detector).inc(count)
            before = slot.model.updates, _nonfinite(slot.model)
            slot.model.learn(batch, target)
            metrics.updates.labels(slot.name).inc(slot.model.updates - before[0])
            metrics.nonfinite.labels(slot.name).inc(_nonfinite(slot.model) - before[1])

    def _compact_pending(self) -> None:
        """Copy the waiting rows out of the batches they came from, when those batches
        hold mostly resolved rows.

        A batch's arrays live while any of its rows waits; a key that goes quiet would
        otherwise keep its whole batch alive (on a stream with keys of very different
        rates, most batches). This bounds what is kept to about twice what waits.
        """
        refs = [ref for queue in self._pending.values() for ref in queue]
        kept = sum(len(rows) for rows in {id(r): r for r, _ in refs}.values())
        if kept <= 2 * len(refs) + _COMPACT_SLACK:
            return
        batch, outputs = _gather(refs, self._pipeline.names)
        rows = _Rows(list(batch.keys), batch.window, batch.x, batch.offset, outputs)
        index = 0
        for queue in self._pending.values():
            for position in range(len(queue)):
                queue[position] = (rows, index)
                index += 1

    def _evict(self) -> None:
        evicted = self._windows.evict()
        for key in evicted:
            self._pending.pop(key, None)
        if evicted:
            self._metrics.evicted.inc(len(evicted))


def _gather(refs: list[_Ref], names: Sequence[str]) -> tuple[FeatureBatch, FloatArray]:
    """The referenced rows as one batch, and their model outputs, in ``refs`` order.

    References point into a few batches' arrays (those still waiting): each of those
    is concatenated once and indexed once.
    """
    sources = list(dict.fromkeys(rows for rows, _ in refs))
    starts, start = {}, 0
    for rows in sources:
        starts[id(rows)] = start
        start += len(rows)
    index = np.fromiter((starts[id(rows)] + row for rows, row in refs), np.intp, len(refs))

    def column(part: Callable[[_Rows], FloatArray]) -> FloatArray:
        whole = (
            part(sources[0]) if len(sources) == 1 else np.concatenate([part(r) for r in sources])
        )
        picked: FloatArray = whole[index]
        return picked

    keys = [rows.keys[row] for rows, row in refs]
    batch = FeatureBatch(
        column(lambda r: r.x), column(lambda r: r.window), column(lambda r: r.offset), keys, names
    )
    return batch, column(lambda r: r.outputs)


def _nonfinite(model: Model) -> int:
    """Non-finite events a model reports (``nonfinite_events``, torch models); 0 for
    models that have no such guard."""
    return int(getattr(model, "nonfinite_events", 0))
