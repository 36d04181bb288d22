"""Which partitions the lag monitor fetches for itself: only those the loop's own
recent poll does not tell (the broker side: ``tests/integration/test_lag.py``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from kafka.structs import TopicPartition as KafkaTopicPartition

from service.io.sources import TopicPartition, Watermarks
from service.runtime.lag import LagMonitor
from service.runtime.watchdog import Watchdog

A, B = ("in", 0), ("in", 1)
FRESH_S = 5.0


class Broker:
    """The few kafka-python consumer calls the monitor makes, answered from a table of
    high watermarks; it notes what was fetched."""

    def __init__(self, highs: Mapping[TopicPartition, int]) -> None:
        self._highs = highs
        self.assigned: list[KafkaTopicPartition] = []
        self.fetched: set[TopicPartition] = set()
        self._answered: set[KafkaTopicPartition] = set()

    def topics(self) -> set[str]:
        return {"in"}

    def assign(self, partitions: list[KafkaTopicPartition]) -> None:
        self.assigned = partitions
        self._answered = set()

    def committed(self, tp: KafkaTopicPartition) -> int | None:
        return None

    def beginning_offsets(self, tps: list[KafkaTopicPartition]) -> dict[Any, int]:
        return dict.fromkeys(tps, 0)

    def seek(self, tp: KafkaTopicPartition, offset: int) -> None:
        """Where the fetch starts: the monitor computes the lag from it."""

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        self._answered = set(self.assigned)
        self.fetched |= {(tp.topic, tp.partition) for tp in self.assigned}
        return {}

    def highwater(self, tp: KafkaTopicPartition) -> int | None:
        return self._highs[(tp.topic, tp.partition)] if tp in self._answered else None


def measure(
    broker: Broker, positions: Mapping[TopicPartition, int], watermarks: Watermarks
) -> tuple[dict[TopicPartition, int], int]:
    """One update: the lags recorded and the records the watchdog was told wait."""
    recorded: dict[TopicPartition, int] = {}
    watchdog = Watchdog(float("inf"), 1.0)
    monitor = LagMonitor(
        broker,
        lambda: frozenset({A, B}),
        lambda: positions,
        recorded.update,
        watchdog,
        interval_s=1.0,
        topic="in",
        watermarks=lambda: watermarks,
        fresh_s=FRESH_S,
    )
    monitor.update()
    return recorded, watchdog.waiting


def test_the_loops_recent_polls_are_read_and_nothing_is_fetched() -> None:
    broker = Broker({A: 500, B: 700})  # the broker is further on: not asked
    now = time.monotonic()
    lags, waiting = measure(broker, {A: 90, B: 200}, {A: (100, now), B: (230, now - 1.0)})
    assert lags == {A: 10, B: 30}
    assert waiting == 40
    assert broker.fetched == set()


def test_a_partition_without_records_lately_is_fetched() -> None:
    """Idle, or its fetches no longer answer: the loop's figure may be old."""
    broker = Broker({A: 500, B: 700})
    now = time.monotonic()
    marks = {A: (100, now), B: (230, now - FRESH_S - 1.0)}
    lags, waiting = measure(broker, {A: 90, B: 200}, marks)
    assert lags == {A: 10, B: 500}
    assert waiting == 510
    assert broker.fetched == {B}


def test_a_partition_not_processed_yet_is_fetched_from_its_start() -> None:
    broker = Broker({A: 500, B: 700})
    now = time.monotonic()
    lags, _ = measure(broker, {A: 90}, {A: (95, now), B: (230, now)})
    assert lags == {A: 5, B: 700}  # B: no position, no commit: from the beginning
    assert broker.fetched == {B}


def test_without_watermarks_every_partition_is_fetched() -> None:
    broker = Broker({A: 500, B: 700})
    lags, _ = measure(broker, {A: 90, B: 200}, {})
    assert lags == {A: 410, B: 500}
    assert broker.fetched == {A, B}
