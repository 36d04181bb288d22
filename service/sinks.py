"""Where records go: the Sink protocol, a Kafka producer, and an in-memory list.

``send`` may buffer; ``flush`` returns only when the broker has acknowledged every
record sent since the last flush, and raises :class:`BrokerError` if any failed. The
processing loop commits input offsets only after ``flush`` returned (at-least-once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError

from service.config import KafkaSettings
from service.errors import BrokerError
from service.partitioner import CachedHashPartitioner
from service.records import Headers
from service.sources import client_options


class Sink(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = ()) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SentRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


class ListSink:
    """Keeps every flushed record in :attr:`records`, for tests and backtests."""

    def __init__(self) -> None:
        self.records: list[SentRecord] = []
        self._buffer: list[SentRecord] = []

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = ()) -> None:
        self._buffer.append(SentRecord(topic, key, value, headers))

    def flush(self) -> None:
        self.records.extend(self._buffer)
        self._buffer.clear()

    def close(self) -> None:
        self.flush()

    def on(self, topic: str) -> list[SentRecord]:
        return [r for r in self.records if r.topic == topic]


class KafkaSink:
    """kafka-python producer: ``acks=all``, idempotent, retries, keyed records."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._producer = KafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.linger_ms,
            batch_size=settings.producer_batch_bytes,
            partitioner=CachedHashPartitioner(),
            retries=2**31 - 1,
            delivery_timeout_ms=120_000,
            client_id="forecastd",
            **client_options(settings),
        )
        self._futures: list[Any] = []

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers = ()) -> None:
        try:
            future = self._producer.send(
                topic, key=key, value=value, headers=list(headers) if headers else None
            )
        except KafkaError as exc:
            raise BrokerError(f"cannot send to {topic}: {exc}") from exc
        self._futures.append(future)

    def flush(self) -> None:
        futures, self._futures = self._futures, []
        try:
            self._producer.flush()
        except KafkaError as exc:
            raise BrokerError(f"producer flush failed: {exc}") from exc
        failed = [f.exception for f in futures if f.failed()]
        if failed:
            raise BrokerError(f"{len(failed)} records were not acknowledged: {failed[0]}")

    def close(self) -> None:
        self._producer.close(timeout=10)
