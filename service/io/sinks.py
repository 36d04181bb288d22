"""Where records go: the Sink protocol, a Kafka producer, and an in-memory list.

``send`` may buffer; ``flush`` returns only when the broker has acknowledged every
record sent since the last flush, and raises :class:`BrokerError` if any failed, or
if that takes longer than ``kafka.flush_timeout_s`` (or the shutdown grace period
after SIGTERM: see :mod:`service.runtime.watchdog`). The processing loop commits input offsets
only after ``flush`` returned (at-least-once).

A batch's records that the producer could not deliver are sent once more on a new
producer before ``flush`` gives up (:class:`Renewal`): an idempotent producer's
identity lives in the broker, and a broker that lost its state (a cluster rebuilt
behind the same address; the test broker on every restart) no longer knows it.
kafka-python's producer then fails every record at once, librdkafka's retries them
until its delivery timeout, and neither recovers by itself, while a new producer
delivers at once. So each producer's delivery timeout is half of
``kafka.flush_timeout_s``, leaving the other half for the second attempt; a record
the broker did take before the failure may be written twice (at-least-once). A
transactional sink is not renewed: a new transactional producer fences the old one's
open transaction, and the process restarts from its last committed checkpoint
instead.

A :class:`TransactionalSink` (``kafka.exactly_once``) puts every record sent between
two :meth:`~TransactionalSink.commit` calls, and the input offsets given to the
second, in one Kafka transaction: ``read_committed`` readers see all of them or none.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTopicPartition

from service.config import KafkaSettings
from service.errors import BrokerError
from service.io.partitioner import CachedHashPartitioner
from service.io.sources import TopicPartition, client_options
from service.records import Headers
from service.runtime.watchdog import Watchdog, close_within, in_thread

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


@runtime_checkable
class TransactionalSink(Sink, Protocol):
    """A sink whose records become visible to ``read_committed`` readers only when
    :meth:`commit` returns, together with the consumer group's input offsets. The first
    ``send`` after a commit opens the next transaction; ``close`` aborts an open one."""

    def commit(self, offsets: Mapping[TopicPartition, int], group: Any) -> None:
        """Commit the open transaction (opening one if none is: offsets alone), with
        ``offsets`` as the group's committed input offsets. ``group``: the input
        consumer's group metadata (``Source.group_metadata``), so that the broker
        refuses the offsets of a member that lost its partitions (KIP-447).

        Raises:
            BrokerError: the transaction did not commit; the broker aborts it (or its
                timeout does). Nothing of it is visible to ``read_committed`` readers.
        """
        ...


@dataclass(frozen=True, slots=True)
class SentRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    partition: int | None = None


def raise_unacknowledged(failed: Sequence[tuple[SentRecord, object]]) -> None:
    """The error every sink raises for records the broker did not acknowledge (each
    with its error), naming how many and the first error; nothing if none failed."""
    if failed:
        raise BrokerError(f"{len(failed)} records were not acknowledged: {failed[0][1]}")


class Renewal:
    """The flush of a non-transactional sink: what the producer failed goes once more
    on a new producer (module docstring), within the flush's own bound."""

    def __init__(
        self, settings: KafkaSettings, renewable: bool, renewed: Callable[[], None] | None = None
    ) -> None:
        self.renewable = renewable
        self.flush_timeout_s = settings.flush_timeout_s
        self._renewed = renewed  # told of each renewal (the metric)

    def delivery_s(self) -> float:
        """The producer's delivery timeout: half the flush's, for a second attempt."""
        return self.flush_timeout_s / 2 if self.renewable else self.flush_timeout_s

    def flush(
        self,
        acknowledged: Callable[[float], Sequence[tuple[SentRecord, object]]],
        renew: Callable[[], None],
        send: Callable[[str, bytes | None, bytes, Headers, int | None], None],
    ) -> None:
        """``acknowledged(timeout_s)`` waits for what was sent and returns the failed
        records with their errors; ``renew()`` replaces the producer; ``send`` is the
        sink's.

        Raises:
            BrokerError: records failed, twice if the sink is renewable.
        """
        deadline = time.monotonic() + self.flush_timeout_s
        failed = acknowledged(self.flush_timeout_s)
        if failed and self.renewable:
            log.warning(
                "%d records were not acknowledged (%s); sending them again on a new producer",
                len(failed),
                failed[0][1],
            )
            renew()
            if self._renewed is not None:
                self._renewed()
            for record, _ in failed:
                send(record.topic, record.key, record.value, record.headers, record.partition)
            failed = acknowledged(max(deadline - time.monotonic(), 0.0))
        raise_unacknowledged(failed)


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
        transactional_id: str | None = None,
        renewed: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._watchdog = watchdog or Watchdog(float("inf"), settings.shutdown_grace_s)
        self._renewal = Renewal(settings, transactional_id is None, renewed)
        delivery_s = self._renewal.delivery_s()
        transactional: dict[str, Any] = {}
        if transactional_id is not None:
            transaction_ms = int(settings.transaction_timeout_s * 1000)
            transactional = {
                "transactional_id": transactional_id,
                "transaction_timeout_ms": transaction_ms,
            }
            # a record still undelivered when its transaction times out is lost with it
            delivery_s = min(delivery_s, settings.transaction_timeout_s)
        # kafka-python (as Java) wants the delivery timeout above linger + request timeout
        request_ms = max(1, min(30_000, int(delivery_s * 1000) - settings.linger_ms - 1))
        delivery_ms = max(int(delivery_s * 1000), settings.linger_ms + request_ms + 1)
        options: dict[str, Any] = dict(
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.linger_ms,
            batch_size=settings.producer_batch_bytes,
            partitioner=CachedHashPartitioner(),
            retries=2**31 - 1,
            delivery_timeout_ms=delivery_ms,
            request_timeout_ms=request_ms,
            max_request_size=max_request_bytes,
            max_block_ms=int(settings.shutdown_grace_s * 1000),
            client_id="forecastd",
            api_version=api_version,
            **transactional,
            **client_options(settings),
        )
        self._new_producer: Callable[[], KafkaProducer] = lambda: KafkaProducer(**options)
        self._producer = self._new_producer()
        self._pending: list[tuple[SentRecord, Any]] = []  # each record and its future

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
        self._pending.append((SentRecord(topic, key, value, headers, partition), future))

    def learn_topic(self, topic: str) -> None:
        """Fetch ``topic``'s partitions now, while the broker answers: the producer's
        first send to a topic it does not know yet refreshes its metadata, and a send
        to another topic waits on that refresh (up to ``max_block_ms``)."""
        try:
            self._producer.partitions_for(topic)
        except KafkaError as exc:
            raise BrokerError(f"no metadata for {topic}: {exc}") from exc

    def flush(self) -> None:
        self._renewal.flush(self._acknowledged, self._renew, self.send)

    def _acknowledged(self, timeout_s: float) -> list[tuple[SentRecord, object]]:
        """Wait (bounded) until the broker has answered for every record sent since the
        last wait; the records it failed, with their errors."""
        pending, self._pending = self._pending, []

        def step(slice_s: float) -> bool:
            try:
                self._producer.flush(timeout=slice_s)
            except KafkaTimeoutError:
                return False
            except KafkaError as exc:
                raise BrokerError(f"producer flush failed: {exc}") from exc
            return True

        self._watchdog.bounded("producer flush", step, timeout_s)
        return _failed(pending)

    def _renew(self) -> None:
        """Replace the producer; the old one holds nothing more (its records failed)."""
        old = self._producer
        try:
            self._producer = self._new_producer()
        except KafkaError as exc:
            raise BrokerError(f"cannot create a new producer: {exc}") from exc

        def close() -> None:
            with contextlib.suppress(KafkaError):
                old.close(timeout=0)

        close_within(close, self._settings.close_timeout_s, "old producer close")

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


class KafkaTransactionalSink(KafkaSink):
    """kafka-python transactional producer (``kafka.exactly_once``): the same producer
    as :class:`KafkaSink`, with a transactional id, so that what :meth:`commit` commits
    is atomic and a restarted process with the same id fences this one.

    Constructing it registers the id with the broker (``init_transactions``): a
    transaction the previous holder of the id left open is aborted then, before this
    process reads anything. kafka-python's transactional calls wait without a timeout
    of their own, so each runs in a helper thread that :mod:`service.runtime.watchdog`
    bounds.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        transactional_id: str,
        watchdog: Watchdog | None = None,
        max_request_bytes: int = 1_048_576 + 65_536,
        api_version: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(settings, watchdog, max_request_bytes, api_version, transactional_id)
        self._open = False
        self._wait(
            "init transactions", self._producer.init_transactions, settings.connect_timeout_s
        )

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers = (),
        partition: int | None = None,
    ) -> None:
        if not self._open:
            self._begin()
        super().send(topic, key, value, headers, partition)

    def commit(self, offsets: Mapping[TopicPartition, int], group: Any) -> None:
        if not self._open:
            self._begin()
        payload = {
            KafkaTopicPartition(topic, partition): OffsetAndMetadata(offset, None, -1)
            for (topic, partition), offset in offsets.items()
        }
        pending, self._pending = self._pending, []
        settings = self._settings
        if payload:
            self._wait(
                "transaction offsets",
                lambda: self._producer.send_offsets_to_transaction(payload, group),
                settings.commit_timeout_s,
            )
        self._wait(
            "transaction commit", self._producer.commit_transaction, settings.flush_timeout_s
        )
        self._open = False
        raise_unacknowledged(_failed(pending))  # commit_transaction raises first; a second check

    def close(self) -> None:
        if self._open:
            # Unsent or uncommitted records belong to no checkpoint: abort them now,
            # so that read_committed readers need not wait for the transaction timeout.
            self._open = False
            close_within(self._abort, self._settings.close_timeout_s, "transaction abort")
        super().close()

    def _begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaError as exc:
            raise BrokerError(f"cannot begin a transaction: {exc}") from exc
        self._open = True

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction()
        except KafkaError as exc:  # fenced or fatal: the broker aborts it anyway
            log.warning("transaction abort: %s", type(exc).__name__)

    def _wait(self, what: str, call: Callable[[], None], timeout_s: float) -> None:
        try:
            self._watchdog.bounded(
                what, in_thread(call, f"forecastd-{what.replace(' ', '-')}"), timeout_s
            )
        except KafkaError as exc:
            raise BrokerError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def _failed(pending: Sequence[tuple[SentRecord, Any]]) -> list[tuple[SentRecord, object]]:
    """Of kafka-python's (record, future) pairs, the failed records with their errors."""
    return [(record, future.exception) for record, future in pending if future.failed()]
