"""One replay through the daemon's pipeline, keeping everything a report needs.

The run is :func:`service.tools.backtest.run_backtest`'s: the same :class:`Processor`,
:class:`~service.pipeline.tasks.PartitionTask`, models and scoring, driven by
:func:`service.runtime.app.run_loop` over a :class:`~service.io.sources.ListSource`. Three things
are added around it, none of which changes a number the daemon would publish:

* every model is published (``publish: true``), so each model's predictions come out
  exactly as the daemon would publish the primary's (publishing only adds intervals
  and coverage; no model reads them);
* each prediction is joined to its truth: the ``horizon``-th next accepted event of
  its key (``horizon: 0``: its own event), accepted meaning not dead-lettered. The
  join is checked, row for row, against the pairs the tasks themselves scored
  (``consistent`` in :class:`WorkbenchRun`), and the tasks' truths are kept (they
  differ from the joined ones only where ``forecast.outliers: clip`` moved a value);
* every base model is wrapped in a :class:`Probe`, a pass-through that remembers the
  rows the model learned from, so the report can re-predict data the model has seen
  (learning curves) and explain the trained model with real inputs.

Learning-curve checkpoints and drift marks fall at poll boundaries: the
replay is read in polls of ``kafka.max_poll_records``, as ``forecastd backtest`` and a
daemon draining a backlog read it. Poll size is left as configured because with
``drift.action: shrink`` the ensemble's figures depend on where polls end (a drift
acts at the end of the poll it was found in); for finer curves on a short replay set
a smaller ``kafka.max_poll_records`` (``FORECASTD_KAFKA__MAX_POLL_RECORDS=50``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd
from prometheus_client import CollectorRegistry

from models.base import FeatureBatch, FloatArray, Model, PassThrough, Plan, run_plan
from models.ensemble import Hedge
from service.config import Settings
from service.io.decode import Decoder
from service.io.sinks import ListSink
from service.io.sources import ListSource, RebalanceListener, TopicPartition
from service.pipeline.processor import Processor
from service.pipeline.scoring import ScoreStats
from service.pipeline.tasks import PartitionTask
from service.records import Event, RawRecord
from service.runtime.app import run_loop
from service.runtime.metrics import Metrics
from service.tools.backtest import BacktestResult, _Collector, reasons_of

SAMPLE_ROWS = 512
"""Recently learned rows a probe keeps (for re-predicting and explanations)."""
CURVE_POINTS = 24
"""Checkpoints per learning curve."""


@dataclass
class CurvePoint:
    """At ``position`` (records replayed), the model's mean absolute error, in the
    target's units, on the rows it learned since the previous checkpoint."""

    position: int
    learned: int
    train_mae: float


class Probe(PassThrough):
    """A model that is another model (:class:`~models.base.PassThrough`). On the side
    it keeps the rows it learned from since its last checkpoint and, at each
    checkpoint, its error on them after learning them; and the newest rows it learned,
    for explanations."""

    def __init__(self, inner: Model, position: Callable[[], int], every: int) -> None:
        super().__init__(inner)
        self._position = position
        self._every = max(1, every)
        self._next = self._every
        self.learned = 0
        self.sample: FeatureBatch | None = None
        self.sample_target: FloatArray = np.empty(0)
        self.curve: list[CurvePoint] = []
        self._since: list[tuple[FeatureBatch, FloatArray]] = []

    def learn(self, batch: FeatureBatch, target: FloatArray) -> None:
        self.inner.learn(batch, target)
        self._remember(batch, target)

    def run(self, plan: Plan) -> FloatArray:
        out = run_plan(self.inner, plan)
        self._remember(plan.learn, plan.target)
        return out

    def _remember(self, batch: FeatureBatch, target: FloatArray) -> None:
        """Keep the rows learned since the last checkpoint; at a checkpoint, re-predict
        them (the very rows whose prequential error the report compares with) and keep
        the newest :data:`SAMPLE_ROWS` for explanations."""
        if len(batch) == 0:
            return
        self._since.append((batch.take(np.arange(len(batch), dtype=np.intp)), target.copy()))
        self.learned += len(batch)
        if self.learned < self._next:
            return
        self._next = self.learned + self._every
        rows = self._since[0][0]
        for more, _ in self._since[1:]:
            rows = _concat(rows, more)
        truth = np.concatenate([t for _, t in self._since])
        self._since = []
        error = np.abs(self.inner.predict(rows) - truth) * rows.units
        self.curve.append(CurvePoint(self._position(), self.learned, float(np.mean(error))))
        joined = rows if self.sample is None else _concat(self.sample, rows)
        tail = np.arange(max(0, len(joined) - SAMPLE_ROWS), len(joined), dtype=np.intp)
        self.sample = joined.take(tail)
        self.sample_target = np.concatenate([self.sample_target, truth])[tail]


def _concat(a: FeatureBatch, b: FeatureBatch) -> FeatureBatch:
    def both(x: FloatArray | None, y: FloatArray | None, n: int, m: int) -> FloatArray | None:
        if x is None and y is None:
            return None
        left = np.full(n, np.nan) if x is None else x
        right = np.full(m, np.nan) if y is None else y
        return np.concatenate([left, right])

    n, m = len(a), len(b)
    scale = both(a.scale, b.scale, n, m)
    if a.scale is None and b.scale is None:
        scale = None
    elif scale is not None:
        scale = np.where(np.isnan(scale), 1.0, scale)
    return FeatureBatch(
        x=np.concatenate([a.x, b.x]),
        window=np.concatenate([a.window, b.window]),
        offset=np.concatenate([a.offset, b.offset]),
        keys=[*a.keys, *b.keys],
        feature_names=a.feature_names,
        scale=scale,
        seasonal=both(a.seasonal, b.seasonal, n, m),
    )


class _ProbedProcessor(Processor):
    """The daemon's processor, with each task's base models wrapped in probes."""

    def __init__(
        self,
        settings: Settings,
        sink: ListSink,
        metrics: Metrics,
        position: Callable[[], int],
        every: int,
        on_scored: _Collector,
    ) -> None:
        self._position = position
        self._every = every
        self.probes: dict[str, Probe] = {}
        super().__init__(settings, sink, metrics, on_scored=on_scored)

    def _new_task(self, tp: TopicPartition) -> PartitionTask:
        task = super()._new_task(tp)
        for slot in task._slots:  # the task's models, one per configured model
            if slot.model is not None:
                probe = Probe(slot.model, self._position, self._every)
                slot.model = probe
                self.probes.setdefault(slot.name, probe)
        return task

    def hedges(self) -> dict[str, Hedge]:
        """Each ensemble's combiner (of the first task: a backtest has one partition)."""
        out: dict[str, Hedge] = {}
        for task in self.tasks.values():
            for slot in task._slots:
                if slot.hedge is not None:
                    out.setdefault(slot.name, slot.hedge)
        return out


class _CountingSource(ListSource):
    """A list source that counts the records it handed out; before each poll (when the
    previous batch is fully processed) it calls ``before_poll``, after it ``on_poll``
    with the batch's size (a progress bar)."""

    def __init__(
        self,
        records: Sequence[RawRecord],
        listener: RebalanceListener,
        on_poll: Callable[[int], None] | None,
        before_poll: Callable[[int], None],
    ) -> None:
        super().__init__(records, listener)
        self.position = 0
        self._on_poll = on_poll
        self._before_poll = before_poll

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        self._before_poll(self.position)
        batch = super().poll(max_records, timeout_s)
        self.position += len(batch)
        if self._on_poll is not None:
            self._on_poll(len(batch))
        return batch

    @property
    def exhausted(self) -> bool:
        done = super().exhausted
        if done:
            self._before_poll(self.position)
        return done


@dataclass
class WorkbenchRun:
    """What one replay produced.

    ``frame``: one row per scored prediction and model: ``model``, ``key``, ``ts``
    (the predicting event's time, ms), ``target_ts``, ``y_true``, ``y_hat``,
    ``lower``/``upper`` (NaN before intervals start), ``y_last`` (the key's last value
    when the prediction was made: the naive forecast), ``position`` (the resolving
    record's place in the replay, the order scores were made in), ``model_version``
    and ``leader``. ``scores``: per model, what the tasks scored themselves."""

    settings: Settings
    frame: pd.DataFrame
    scores: dict[str, ScoreStats]
    probes: dict[str, Probe]
    hedges: dict[str, Hedge]
    members: dict[str, tuple[str, ...]]
    drifts: dict[str, list[int]]
    records: int
    dead_letters: int
    events_per_s: float
    collector: _Collector = field(default_factory=_Collector)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    consistent: dict[str, bool] = field(default_factory=dict)

    def as_backtest(self, warmup: float) -> BacktestResult:
        """The result ``run_backtest`` gives for the same replay (its table)."""
        return BacktestResult(
            scores=self.collector.scores(warmup),
            predictions=len(self.frame),
            dead_letters=self.dead_letters,
            events_per_s=self.events_per_s,
            dead_letter_reasons=self.dead_letter_reasons,
        )


def publish_all(settings: Settings) -> Settings:
    """``settings`` with every model published (nothing a model computes changes)."""
    models = tuple(m.model_copy(update={"publish": True}) for m in settings.models)
    return settings.model_copy(update={"models": models})


def replay(
    records: Sequence[RawRecord],
    settings: Settings,
    on_poll: Callable[[int], None] | None = None,
) -> WorkbenchRun:
    """Replay ``records`` through the daemon's pipeline (module docstring)."""
    settings = publish_all(settings)
    metrics = Metrics(CollectorRegistry(), settings)
    sink = ListSink()
    collector = _Collector()
    holder: list[_CountingSource] = []

    def position() -> int:
        return holder[0].position if holder else 0

    every = max(64, len(records) // CURVE_POINTS)
    # the collector: the tasks' own scores, as run_backtest keeps them
    processor = _ProbedProcessor(settings, sink, metrics, position, every, collector)
    watch = _DriftWatch(metrics)
    source = _CountingSource(records, processor, on_poll, watch)
    holder.append(source)
    started = time.perf_counter()
    run_loop(settings, source, sink, processor, metrics, lambda: False)
    elapsed = time.perf_counter() - started
    scores = collector.scores(0.0)
    dead = sink.on(settings.kafka.dead_letter_topic)
    frame = join_truth(records, sink, settings, processor.features or ())
    run = WorkbenchRun(
        settings=settings,
        frame=frame,
        scores=scores,
        probes=processor.probes,
        hedges=processor.hedges(),
        members={m.name: settings.members(m) for m in settings.models if m.kind == "ensemble"},
        drifts=watch.found,
        records=len(records),
        dead_letters=len(dead),
        events_per_s=len(records) / elapsed if elapsed > 0 else float("inf"),
        collector=collector,
        dead_letter_reasons=reasons_of(dead),
    )
    for model in scores:
        run.consistent[model] = _align(frame, model, collector)
    return run


def _align(frame: pd.DataFrame, model: str, collector: _Collector) -> bool:
    """Whether the joined predictions of ``model`` are, row for row, the ones the tasks
    scored (same count, same predicted values in scoring order); if so, the truths the
    tasks scored replace the joined ones, which differ only where ``forecast.outliers:
    clip`` moved a value. ``frame`` is sorted by model, then scoring order."""
    rows = np.flatnonzero((frame["model"] == model).to_numpy())
    scored_hat = np.concatenate(collector.predicted.get(model, [np.empty(0)]))
    if len(rows) != len(scored_hat):
        return False
    joined_hat = frame["y_hat"].to_numpy()[rows]
    if not np.array_equal(joined_hat, scored_hat):
        return False
    truth = frame["y_true"].to_numpy(copy=True)
    truth[rows] = np.concatenate(collector.truth[model])
    frame["y_true"] = truth
    return True


class _DriftWatch:
    """Notes, before each poll, which models' drift counters (the daemon's own
    ``forecastd_drift_detected_total``) moved in the previous batch: the replay
    positions where drifts were confirmed, per model."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._counts: dict[tuple[str, str], float] = {}
        self.found: dict[str, list[int]] = {}

    def __call__(self, position: int) -> None:
        for family in self._metrics.drift.collect():
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                model = sample.labels.get("model", "")
                key = (model, sample.labels.get("detector", ""))
                if sample.value > self._counts.get(key, 0.0):
                    found = self.found.setdefault(model, [])
                    if not found or found[-1] != position:
                        found.append(position)
                self._counts[key] = sample.value


def join_truth(
    records: Sequence[RawRecord], sink: ListSink, settings: Settings, features: tuple[str, ...]
) -> pd.DataFrame:
    """Every published prediction with the value it was scored against."""
    decoder = Decoder(
        settings.schema_.model_copy(update={"features": features}),
        settings.forecast.max_future_skew_s,
    )
    dead = {
        (
            dict(letter.headers).get("forecastd.source.partition"),
            dict(letter.headers).get("forecastd.source.offset"),
        )
        for letter in sink.on(settings.kafka.dead_letter_topic)
    }
    by_key: dict[str, list[tuple[str, float, int, int]]] = {}
    place: dict[str, tuple[str, int]] = {}
    for position, record in enumerate(records):
        if (str(record.partition).encode(), str(record.offset).encode()) in dead:
            continue
        event = decoder.decode(record)
        if not isinstance(event, Event):
            continue
        series = by_key.setdefault(event.key, [])
        place[record.source] = (event.key, len(series))
        series.append((record.source, event.y, event.ts_ms, position + 1))
    horizon = settings.forecast.horizon
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "model", "key", "ts", "target_ts", "y_true", "y_hat", "lower", "upper",
            "y_last", "position", "model_version", "leader",
        )
    }  # fmt: skip
    for value in sink.on(settings.kafka.output_topic):
        prediction = orjson.loads(value.value)
        where = place.get(prediction["source"])
        if where is None:
            continue
        key, index = where
        series = by_key[key]
        if index + horizon >= len(series):
            continue  # not resolved when the replay ended
        _, y_true, target_ts, position = series[index + horizon]
        last = index if horizon else index - 1
        columns["model"].append(prediction["model"])
        columns["key"].append(key)
        columns["ts"].append(prediction["ts"])
        columns["target_ts"].append(target_ts)
        columns["y_true"].append(y_true)
        columns["y_hat"].append(prediction["y_hat"])
        columns["lower"].append(_nan(prediction["lower"]))
        columns["upper"].append(_nan(prediction["upper"]))
        columns["y_last"].append(series[last][1] if last >= 0 else float("nan"))
        columns["position"].append(position)
        columns["model_version"].append(prediction["model_version"])
        columns["leader"].append(prediction["leader"])
    frame = pd.DataFrame(columns)
    for name in ("y_true", "y_hat", "lower", "upper", "y_last"):
        frame[name] = frame[name].astype(np.float64)
    for name in ("ts", "target_ts", "position", "model_version"):
        frame[name] = frame[name].astype(np.int64)
    return frame.sort_values(["model", "position"], kind="stable").reset_index(drop=True)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
