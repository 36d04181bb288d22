"""Backtests: history through the very pipeline the daemon runs, offline.

Records go from a :class:`~service.io.sources.ListSource` through the same
:class:`~service.pipeline.processor.Processor` (decode, tasks, features, models, scoring) into a
:class:`~service.io.sinks.ListSink`; no broker. Every prediction is scored prequentially,
exactly as live. ``warmup`` leaves the first scored predictions out of the report (a
fraction of the stream, or a count), so models are compared after they had data to
learn from.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.io.sinks import ListSink, SentRecord
from service.io.sources import ListSource
from service.pipeline.processor import Processor
from service.pipeline.scoring import FloatArray, ScoreStats
from service.records import RawRecord
from service.runtime.app import run_loop
from service.runtime.metrics import Metrics


@dataclass
class _Collector:
    """Every (true, predicted) pair each model was scored on, in scoring order."""

    truth: dict[str, list[FloatArray]] = field(default_factory=dict)
    predicted: dict[str, list[FloatArray]] = field(default_factory=dict)

    def __call__(self, model: str, y_true: FloatArray, y_hat: FloatArray) -> None:
        self.truth.setdefault(model, []).append(y_true.copy())
        self.predicted.setdefault(model, []).append(y_hat.copy())

    def scores(self, warmup: float) -> dict[str, ScoreStats]:
        result = {}
        for model, parts in self.truth.items():
            y_true = np.concatenate(parts)
            y_hat = np.concatenate(self.predicted[model])
            skip = int(warmup * len(y_true)) if warmup < 1 else int(warmup)
            result[model] = ScoreStats.of(y_true[skip:], y_hat[skip:])
        return result


@dataclass(frozen=True)
class BacktestResult:
    """Per model, the scores after warm-up; plus what the run produced.

    ``published`` holds the value of every prediction record the run published, in
    order (output JSON as in docs/messages.md, with ``source`` naming the input
    record): what a consumer of the output topic would read, for checks the scores do
    not cover (intervals)."""

    scores: dict[str, ScoreStats]
    predictions: int
    dead_letters: int
    events_per_s: float
    published: tuple[bytes, ...] = ()
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    def dead_lettered(self) -> str:
        """``N dead-lettered``, with the count of each reason: an empty table over a
        file of rows the daemon refused says why."""
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.dead_letter_reasons.items()))
        return f"{self.dead_letters} dead-lettered" + (f" ({reasons})" if reasons else "")


def reasons_of(letters: Sequence[SentRecord]) -> dict[str, int]:
    """How many dead letters give each reason (their ``forecastd.error.reason``
    header, docs/messages.md)."""
    reasons: Counter[str] = Counter()
    for letter in letters:
        found = [value for name, value in letter.headers if name == "forecastd.error.reason"]
        reasons[found[-1].decode("utf-8", "replace") if found else "unknown"] += 1
    return dict(reasons)


def run_backtest(
    records: Sequence[RawRecord], settings: Settings, warmup: float = 0.0
) -> BacktestResult:
    """Replay ``records`` through the pipeline configured by ``settings``."""
    collector = _Collector()
    metrics = Metrics(CollectorRegistry(), settings)
    sink = ListSink()
    processor = Processor(settings, sink, metrics, on_scored=collector)
    source = ListSource(records, processor)
    started = time.perf_counter()
    run_loop(settings, source, sink, processor, metrics, lambda: False)
    elapsed = time.perf_counter() - started
    published = tuple(r.value for r in sink.on(settings.kafka.output_topic))
    dead = sink.on(settings.kafka.dead_letter_topic)
    return BacktestResult(
        scores=collector.scores(warmup),
        predictions=len(published),
        dead_letters=len(dead),
        events_per_s=len(records) / elapsed if elapsed > 0 else float("inf"),
        published=published,
        dead_letter_reasons=reasons_of(dead),
    )
