"""Batches of raw records in, predictions and dead letters out, through partition tasks.

The processor knows nothing about Kafka: it is a :class:`RebalanceListener` for any
source and writes to any :class:`Sink`. The daemon, the offline replay and the tests
all drive this same class.

No record can stop a partition: the decoder turns any input into an event or a
reason, and a batch whose processing raises anyway (a bug, a model that cannot take
some value) is run again one event at a time, so the events that raise alone are
dead-lettered as ``internal_error`` (detail: the exception's type, never its message,
which may quote the data) and the others are processed. The events before the failing
one may have been partly applied in the failed batch call; they are processed again
in the retry, a small perturbation of the models and never a loss of a record.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from models import registry
from models.base import Model, ModelContext
from service.config import SchemaSettings, Settings
from service.io.decode import Decoder, features_of, is_number
from service.io.sinks import Sink
from service.io.sources import TopicPartition
from service.pipeline.counts import TaskCounts
from service.pipeline.features import FeaturePipeline
from service.pipeline.intervals import CoverageStats
from service.pipeline.scoring import ScoreStats
from service.pipeline.tasks import PartitionTask, ScoredCallback, TaskOutput
from service.records import (
    DEAD_LETTER_OVERHEAD_BYTES,
    Event,
    Invalid,
    Prediction,
    RawRecord,
    dead_letter,
    dead_letter_value_limit,
)
from service.runtime.metrics import Metrics

if TYPE_CHECKING:
    from service.pipeline.explanations import LiveExplainer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Offsets to commit (next offset per partition) and what was sent for them."""

    offsets: dict[TopicPartition, int]
    predictions: list[Prediction]
    dead_letters: int


def build_prototypes(settings: Settings, pipeline: FeaturePipeline) -> dict[str, Model]:
    """One untrained model per configured entry (ensembles are combined by the task,
    not built); each task clones its own."""
    context = ModelContext(
        feature_names=pipeline.names,
        window=settings.forecast.window,
        horizon=settings.forecast.horizon,
        seed=settings.processing.seed,
        exogenous=pipeline.exogenous,
    )
    return {
        m.name: registry.build(m.kind, m.params, context)
        for m in settings.models
        if m.kind != "ensemble"
    }


def build_pipeline(settings: Settings, exogenous: tuple[str, ...] = ()) -> FeaturePipeline:
    """The feature pipeline of ``settings`` with these exogenous features."""
    forecast = settings.forecast
    return FeaturePipeline(
        forecast.lags, forecast.target, exogenous, forecast.window, forecast.horizon
    )


def discover_features(records: Sequence[RawRecord], schema: SchemaSettings) -> tuple[str, ...]:
    """``schema.features: auto``: the numeric fields of ``x`` (or of a flat record,
    :func:`~service.io.decode.features_of`) in ``records``, sorted by name, at most
    ``max_auto_features`` (the first names in sorted order)."""
    names: set[str] = set()
    for record in records:
        try:
            value = orjson.loads(record.value or b"")
        except Exception:  # noqa: S112 - the decoder dead-letters what does not parse
            continue
        if not isinstance(value, dict):
            continue
        features = features_of(value, schema)
        if not isinstance(features, dict):
            continue
        for name, number in features.items():
            if is_number(number, schema.numeric_text) and _utf8(name):
                names.add(name)
    return tuple(sorted(names)[: schema.max_auto_features])


class Processor:
    """Owns the partition tasks of this process and runs batches through them."""

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        metrics: Metrics,
        on_scored: ScoredCallback | None = None,
    ) -> None:
        self._settings = settings
        self._on_scored = on_scored
        self._sink = sink
        self._metrics = metrics
        self._features: tuple[str, ...] | None = None
        self._waiting: set[TopicPartition] = set()  # assigned before features were known
        self._decoder: Decoder | None = None
        self._pipeline = build_pipeline(settings)
        self._prototypes: dict[str, Model] = {}
        self._max_dead_letter_value = dead_letter_value_limit(settings.schema_.max_message_bytes)
        self.tasks: dict[TopicPartition, PartitionTask] = {}
        if settings.schema_.features != "auto":
            self._fix_features(settings.schema_.features)
        self.assignments = 0
        # Read by the lag thread: each is replaced, never mutated, so a reader always
        # sees a consistent snapshot without a lock.
        self.owned: frozenset[TopicPartition] = frozenset()
        self.positions: Mapping[TopicPartition, int] = {}
        self._explainer = _explainer(settings)
        metrics.watch_scores(self.pooled_scores)
        metrics.watch_coverage(self.pooled_coverage)

    @property
    def features(self) -> tuple[str, ...] | None:
        """The exogenous features models use (None until ``auto`` discovered them)."""
        return self._features

    def _fix_features(self, names: tuple[str, ...]) -> None:
        """Fix the exogenous features, then build the decoder and the models."""
        self._features = names
        schema = self._settings.schema_.model_copy(update={"features": names})
        self._decoder = Decoder(schema, self._settings.forecast.max_future_skew_s)
        self._pipeline = build_pipeline(self._settings, names)
        self._prototypes = build_prototypes(self._settings, self._pipeline)
        for tp in sorted(self._waiting):
            self.tasks[tp] = self._new_task(tp)
        self._waiting.clear()

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            if tp in self.tasks:
                continue
            if self._decoder is None:  # features not discovered yet: no models to build
                self._waiting.add(tp)
            else:
                self.tasks[tp] = self._new_task(tp)
        self.assignments += 1
        self.owned = frozenset(self.tasks) | frozenset(self._waiting)
        self._metrics.assigned.set(len(self.owned))
        log.info("assigned %s; now own %d partitions", list(partitions), len(self.tasks))

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self._waiting.discard(tp)
            if self.tasks.pop(tp, None) is not None:
                with contextlib.suppress(KeyError):  # no lag reported yet
                    self._metrics.lag.remove(tp[0], str(tp[1]))
        self.owned = frozenset(self.tasks)
        self.positions = {tp: o for tp, o in self.positions.items() if tp in self.tasks}
        self._metrics.assigned.set(len(self.owned))
        self._metrics.active_series.set(self.active_series)
        log.info("revoked %s; now own %d partitions", list(partitions), len(self.tasks))

    def restore(self, tp: TopicPartition, features: Sequence[str], state: dict[str, Any]) -> None:
        """Put a checkpoint's learned state (:mod:`service.runtime.state`) into ``tp``'s task,
        building the task first. With ``schema.features: auto`` and nothing discovered
        yet, the checkpoint's feature names are taken, so the models fit the state."""
        if self._decoder is None:
            self._fix_features(tuple(features))
        task = self.tasks.get(tp)
        if task is None:
            task = self.tasks[tp] = self._new_task(tp)
            self._waiting.discard(tp)
        task.load_state(state)
        self.owned = frozenset(self.tasks) | frozenset(self._waiting)
        self._metrics.assigned.set(len(self.tasks))

    @property
    def active_series(self) -> int:
        return sum(task.active_series for task in self.tasks.values())

    def pooled_coverage(self) -> dict[str, tuple[CoverageStats, CoverageStats]]:
        pooled: dict[str, tuple[CoverageStats, CoverageStats]] = {}
        for task in list(self.tasks.values()):
            for name, (total, rolling) in task.coverage().items():
                old_total, old_rolling = pooled.get(name, (CoverageStats(), CoverageStats()))
                pooled[name] = (old_total.merge(total), old_rolling.merge(rolling))
        return pooled

    def pooled_scores(self) -> dict[str, tuple[ScoreStats, ScoreStats]]:
        pooled: dict[str, tuple[ScoreStats, ScoreStats]] = {
            m.name: (ScoreStats(), ScoreStats()) for m in self._settings.models
        }
        for task in list(self.tasks.values()):
            for name, (total, rolling) in task.scores().items():
                pooled_total, pooled_rolling = pooled[name]
                pooled[name] = (pooled_total.merge(total), pooled_rolling.merge(rolling))
        return pooled

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        """Decode, process per partition task, and send every output to the sink."""
        self._metrics.consumed.inc(len(records))
        self._metrics.batches.inc()
        if self._decoder is None:
            names = discover_features(records, self._settings.schema_)
            log.info("schema.features: auto: using %s", list(names) or "no exogenous features")
            self._fix_features(names)
        decoder = self._decoder
        if decoder is None:  # unreachable: _fix_features just built it
            raise RuntimeError("no decoder after feature discovery")
        offsets: dict[TopicPartition, int] = {}
        predictions: list[Prediction] = []
        dead = 0
        counts = TaskCounts()  # recorded once per poll, not once per task: cheaper
        try:
            for tp, group in _by_partition(records).items():
                sent, invalid = self._process_partition(tp, group, decoder, counts)
                predictions.extend(sent)
                dead += invalid
                offsets[tp] = group[-1].offset + 1
        finally:  # what the tasks did happened, whatever sending does after
            counts.record(self._metrics)
        self._cap_keys()
        self.positions = {**self.positions, **offsets}
        self._metrics.active_series.set(self.active_series)
        return BatchResult(offsets, predictions, dead)

    def _process_partition(
        self, tp: TopicPartition, group: list[RawRecord], decoder: Decoder, counts: TaskCounts
    ) -> tuple[list[Prediction], int]:
        """One partition's records of a poll: decoded, through its task (whose counts
        are added to ``counts``), every output sent. Returns the predictions sent and
        how many records were dead-lettered."""
        events: list[Event] = []
        invalid: list[Invalid] = []
        for record in group:
            decoded = decoder.decode(record)
            if isinstance(decoded, Invalid):
                invalid.append(decoded)
            else:
                events.append(decoded)
        if self._features is not None and events:
            self._count_ignored(events)
        task = self.tasks.get(tp)
        if task is None:  # records of a partition we were never told about
            task = self.tasks[tp] = self._new_task(tp)
            self.owned = frozenset(self.tasks)
        if self._explainer is not None:
            self._explainer.forget(task)
        output = self._guarded(task, events)
        counts.add(output.counts)
        invalid.extend(output.invalid)
        sent = self._send_predictions(output.predictions, events, invalid)
        if self._explainer is not None and self._explainer.topic is not None:
            for key, value in self._explainer.records(task, sent):
                self._sink.send(self._explainer.topic, key, value)
        self._send_dead_letters(invalid)
        return sent, len(invalid)

    def _guarded(self, task: PartitionTask, events: list[Event]) -> TaskOutput:
        """``task.process(events)``; if that raises, the events one at a time, and
        each event that raises alone is dead-lettered as ``internal_error``.

        The replay keeps a bug from costing the whole batch; it does not undo what the
        failed attempt did: a poll that raised after its values entered their keys'
        histories has them pushed once more by the replay. No input is known to raise
        (``tests/service/pipeline/test_processor_fuzz.py`` holds the built-in defaults
        to that, and fails on any ERROR this logs)."""
        try:
            return task.process(events)
        except Exception as exc:
            log.error(
                "partition %s:%d: a batch of %d events raised %s; retrying one by one",
                task.topic,
                task.partition,
                len(events),
                type(exc).__name__,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
        predictions: list[Prediction] = []
        invalid: list[Invalid] = []
        counts = task.take_counts()  # what the failed batch did before it raised
        for event in events:
            try:
                output = task.process([event])
            except Exception as exc:
                invalid.append(Invalid("internal_error", type(exc).__name__, event.record))
                continue
            predictions.extend(output.predictions)
            invalid.extend(output.invalid)
            counts.add(output.counts)
        counts.add(task.take_counts())
        return TaskOutput(predictions, invalid, counts)

    def _cap_keys(self) -> None:
        """``forecast.max_keys`` for the whole process: the least recently seen keys of
        all tasks go first, so a flood of new keys on one partition cannot push the
        process past its memory (README "Memory per key"). The excess keys are picked
        by merging the tasks' recency orders, then each task forgets its share at
        once: the cost is the excess, not the live keys."""
        excess = self.active_series - self._settings.forecast.max_keys
        if excess <= 0:
            return
        orders = [_tagged(tp, task.by_recency()) for tp, task in self.tasks.items()]
        doomed: dict[TopicPartition, list[str]] = {}
        for _, tp, key in itertools.islice(heapq.merge(*orders), excess):
            doomed.setdefault(tp, []).append(key)
        for tp, keys in doomed.items():
            self.tasks[tp].forget(*keys).record(self._metrics)

    def _count_ignored(self, events: list[Event]) -> None:
        """Count feature names outside the fixed list (``auto`` mode only: an explicit
        list ignores extra names by design)."""
        if self._settings.schema_.features != "auto":
            return
        ignored = sum(event.ignored for event in events)
        if ignored:
            self._metrics.ignored_features.inc(ignored)

    def acknowledged(self, result: BatchResult) -> None:
        """Account for a batch whose outputs the sink has confirmed."""
        now = time.monotonic()
        latency = self._metrics.latency
        produced: dict[str, int] = {}
        for prediction in result.predictions:
            latency.observe(now - prediction.consumed_at)
            produced[prediction.model] = produced.get(prediction.model, 0) + 1
        for model, count in produced.items():
            self._metrics.child(self._metrics.produced, model).inc(count)

    def record_lag(self, lags: Mapping[TopicPartition, int]) -> None:
        for (topic, partition), lag in lags.items():
            if (topic, partition) in self.owned:
                self._metrics.lag.labels(topic, str(partition)).set(lag)

    def _new_task(self, tp: TopicPartition) -> PartitionTask:
        task = PartitionTask(
            tp[0],
            tp[1],
            self._settings,
            self._prototypes,
            self._pipeline,
            self._on_scored,
        )
        if self._explainer is not None:
            self._explainer.wrap(task)
        return task

    def _send_predictions(
        self, predictions: list[Prediction], events: list[Event], invalid: list[Invalid]
    ) -> list[Prediction]:
        """Encode and send each prediction; returns those sent. A prediction that
        cannot be encoded dead-letters its input record (``internal_error``, once)."""
        topic = self._settings.kafka.output_topic
        produced_at = time.time_ns() // 1_000_000
        sent: list[Prediction] = []
        failed: set[str] = set()
        for prediction in predictions:
            try:
                key, value = prediction.key.encode(), prediction.to_json(produced_at)
            except Exception as exc:
                record = next(
                    (e.record for e in events if e.record.source == prediction.source), None
                )
                if record is not None and prediction.source not in failed:
                    failed.add(prediction.source)
                    invalid.append(Invalid("internal_error", type(exc).__name__, record))
                continue
            self._sink.send(topic, key, value)
            sent.append(prediction)
        return sent

    def _send_dead_letters(self, invalid: list[Invalid]) -> None:
        topic = self._settings.kafka.dead_letter_topic
        for item in invalid:
            self._metrics.invalid.labels(item.reason).inc()
            letter = dead_letter(item, self._max_dead_letter_value)
            self._sink.send(topic, letter.key, letter.value, letter.headers)


def _explainer(settings: Settings) -> LiveExplainer | None:
    """The live explainer when ``explanations.topic`` is set (imported only then)."""
    if settings.explanations.topic is None:
        return None
    from service.pipeline.explanations import LiveExplainer

    return LiveExplainer(settings)


def producer_request_limit(settings: Settings) -> int:
    """The producer's ``max_request_size``: ``schema.max_message_bytes`` plus room
    (a dead letter is cut to fit in ``max_message_bytes`` with its key and headers;
    the room is a margin for framing, never needed by a prediction)."""
    return settings.schema_.max_message_bytes + DEAD_LETTER_OVERHEAD_BYTES


def _tagged(
    tp: TopicPartition, order: Iterator[tuple[float, str]]
) -> Iterator[tuple[float, TopicPartition, str]]:
    for seen, key in order:
        yield seen, tp, key


def _utf8(name: str) -> bool:
    """Whether ``name`` encodes as UTF-8 (a lone surrogate does not)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _by_partition(records: Sequence[RawRecord]) -> dict[TopicPartition, list[RawRecord]]:
    groups: dict[TopicPartition, list[RawRecord]] = {}
    for record in records:
        groups.setdefault((record.topic, record.partition), []).append(record)
    return groups
