"""The flush's second attempt on a new producer (:class:`service.io.sinks.Renewal`),
with in-memory stand-ins for a producer's answers; the real brokers' side is
``tests/integration/test_broker_restart.py``."""

from __future__ import annotations

import pytest

from service.config import KafkaSettings
from service.errors import BrokerError
from service.io.sinks import Renewal, SentRecord
from service.records import Headers

RECORDS = [SentRecord("out", b"k%d" % i, b"v%d" % i, (), None) for i in range(3)]


class Producers:
    """Producers in turn: the n-th fails the records whose values are in ``fails[n]``."""

    def __init__(self, *fails: set[bytes]) -> None:
        self.fails = list(fails)
        self.current = 0
        self.queued: list[SentRecord] = list(RECORDS)
        self.sent_again: list[SentRecord] = []
        self.waits: list[float] = []

    def acknowledged(self, timeout_s: float) -> list[tuple[SentRecord, object]]:
        self.waits.append(timeout_s)
        queued, self.queued = self.queued, []
        failing = self.fails[self.current]
        return [(r, f"error {self.current}") for r in queued if r.value in failing]

    def renew(self) -> None:
        self.current += 1

    def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers, partition: int | None
    ) -> None:
        record = SentRecord(topic, key, value, headers, partition)
        self.queued.append(record)
        self.sent_again.append(record)


SETTINGS = KafkaSettings(flush_timeout_s=10)


def test_what_failed_is_sent_once_more_on_a_new_producer() -> None:
    producers = Producers({b"v0", b"v2"}, set())
    told: list[None] = []
    renewal = Renewal(SETTINGS, renewable=True, renewed=lambda: told.append(None))
    renewal.flush(producers.acknowledged, producers.renew, producers.send)
    assert producers.current == 1
    assert len(told) == 1
    assert producers.sent_again == [RECORDS[0], RECORDS[2]]
    assert producers.waits[0] == 10
    assert 0 <= producers.waits[1] <= 10


def test_a_second_failure_raises_and_nothing_is_renewed_twice() -> None:
    producers = Producers({b"v1"}, {b"v1"}, set())
    with pytest.raises(BrokerError, match="1 records were not acknowledged: error 1"):
        Renewal(SETTINGS, renewable=True).flush(
            producers.acknowledged, producers.renew, producers.send
        )
    assert producers.current == 1


def test_a_flush_that_failed_nothing_keeps_its_producer() -> None:
    producers = Producers(set())
    Renewal(SETTINGS, renewable=True).flush(producers.acknowledged, producers.renew, producers.send)
    assert producers.current == 0
    assert producers.sent_again == []


def test_a_transactional_sink_is_not_renewed() -> None:
    producers = Producers({b"v0"}, set())
    renewal = Renewal(SETTINGS, renewable=False)
    with pytest.raises(BrokerError, match="error 0"):
        renewal.flush(producers.acknowledged, producers.renew, producers.send)
    assert producers.current == 0
    assert renewal.delivery_s() == 10


def test_a_renewable_producer_delivers_within_half_the_flush_bound() -> None:
    assert Renewal(SETTINGS, renewable=True).delivery_s() == 5
