"""Where records go: the Sink protocol, a Kafka producer, and an in-memory list.

``send`` may buffer; ``flush`` returns only when the broker has acknowledged every
record sent since the last flush, and raises :class:`BrokerError` if any failed, or
if that takes longer than ``kafka.flush_timeout_s`` (or the shutdown grace period
after SIGTERM: see :mod:`service.runtime.watchdog`). The processing loop commits input offsets
only after ``flush`` returned (at-least-once).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from service.config import KafkaSettings
from service.errors import BrokerError
from service.io.partitioner import CachedHashPartitioner
from service.io.sources import client_options
from service.records import Headers
from service.runtime.watchdog import Watchdog, close_within

log = logging.getLogger(__name__)


class Sink(Protocol):
    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers = (),
        partition: int | None = None,
    ) -> None:
        """Queue one record; ``partition`` None: the key's hash picks (checkpoints name
        theirs: one state partition per input partition, :mod:`service.runtime.state`)."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SentRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    partition: int | None = None


class ListSink:
    """Keeps every flushed record in :attr:`records`, for tests and backtests."""

    def __init__(self) -> None:
        self.records: list[SentRecord] = []
        self._buffer: list[SentRecord] = []

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers = (),
        partition: int | None = None,
    ) -> None:
        self._buffer.append(SentRecord(topic, key, value, headers, partition))

    def flush(self) -> None:
        self.records.extend(self._buffer)
        self._buffer.clear()

    def close(self) -> None:
        self.flush()

    def on(self, topic: str) -> list[SentRecord]:
        return [r for r in self.records if r.topic == topic]


class KafkaSink:
    """kafka-python producer: ``acks=all``, idempotent, retries, keyed records.

    ``max_request_bytes`` must exceed the largest record the processor sends (see
    :func:`service.pipeline.processor.producer_request_limit`); ``max_block_ms`` (how long
    ``send`` may wait for buffer space or metadata) is the shutdown grace period, so
    a stalled broker cannot hold ``send`` past a SIGTERM's deadline either.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        watchdog: Watchdog | None = None,
        max_request_bytes: int = 1_048_576 + 65_536,
        api_version: tuple[int, ...] | None = None,
    ) -> None:
        self._settings = settings
        self._watchdog = watchdog or Watchdog(float("inf"), settings.shutdown_grace_s)
        self._producer = KafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.linger_ms,
            batch_size=settings.producer_batch_bytes,
            partitioner=CachedHashPartitioner(),
            retries=2**31 - 1,
            delivery_timeout_ms=int(settings.flush_timeout_s * 1000),
            request_timeout_ms=min(30_000, int(settings.flush_timeout_s * 1000)),
            max_request_size=max_request_bytes,
            max_block_ms=int(settings.shutdown_grace_s * 1000),
            client_id="forecastd",
            api_version=api_version,
            **client_options(settings),
        )
        self._futures: list[Any] = []

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers = (),
        partition: int | None = None,
    ) -> None:
        try:
            future = self._producer.send(
                topic,
                key=key,
                value=value,
                headers=list(headers) if headers else None,
                partition=partition,
            )
        except KafkaError as exc:
            raise BrokerError(f"cannot send to {topic}: {exc}") from exc
        self._futures.append(future)

    def learn_topic(self, topic: str) -> None:
        """Fetch ``topic``'s partitions now, while the broker answers: the producer's
        first send to a topic it does not know yet refreshes its metadata, and a send
        to another topic waits on that refresh (up to ``max_block_ms``)."""
        try:
            self._producer.partitions_for(topic)
        except KafkaError as exc:
            raise BrokerError(f"no metadata for {topic}: {exc}") from exc

    def flush(self) -> None:
        futures, self._futures = self._futures, []

        def step(slice_s: float) -> bool:
            try:
                self._producer.flush(timeout=slice_s)
            except KafkaTimeoutError:
                return False
            except KafkaError as exc:
                raise BrokerError(f"producer flush failed: {exc}") from exc
            return True

        self._watchdog.bounded("producer flush", step, self._settings.flush_timeout_s)
        failed = [f.exception for f in futures if f.failed()]
        if failed:
            raise BrokerError(f"{len(failed)} records were not acknowledged: {failed[0]}")

    def close(self) -> None:
        timeout = self._settings.close_timeout_s

        def close() -> None:
            try:
                self._producer.close(timeout=timeout)
            except KafkaError as exc:
                # Records still unsent belong to a batch that was not committed: they
                # are produced again after the restart, so dropping them loses nothing.
                log.warning("producer close: %s; dropping unsent records", type(exc).__name__)
                with contextlib.suppress(KafkaError):
                    self._producer.close(timeout=0)

        close_within(close, timeout, "producer close")
