"""The same Source and Sink, on confluent-kafka (librdkafka): ``kafka.client: confluent``.

An optional extra (``pip install 'forecastd[confluent]'``), with the semantics of the
kafka-python implementation: one consumer group, manual synchronous commits of the
offsets the processing loop hands over, rebalance callbacks from inside ``poll``, and
an idempotent producer with ``acks=all`` whose ``flush`` raises unless every record
was acknowledged. librdkafka moves records in C, so the transport costs a fraction of
kafka-python's per record.

``kafka.security`` keys are kafka-python's names (``security_protocol``,
``sasl_plain_username``, ...) and are translated; keys with a dot are librdkafka
properties and pass through unchanged.

Rebalancing is cooperative (``partition.assignment.strategy: cooperative-sticky``):
the callbacks get only the partitions that move, and confluent-kafka does the
incremental assign/unassign after them, so partitions that stay keep their tasks.
Synchronous commits and closes have no timeout in librdkafka: they run in a helper
thread that :mod:`service.runtime.watchdog` waits for, a slice at a time.

With ``kafka.exactly_once`` the consumer reads ``read_committed`` (librdkafka's
default too) and commits nothing itself; :class:`ConfluentTransactionalSink` commits
the offsets in the producer's transaction (:mod:`service.runtime.checkpoint`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_STORED, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as ConfluentTopicPartition

from service.config import KafkaSettings
from service.errors import BrokerError, ConfigError
from service.io.sinks import Renewal, SentRecord, raise_unacknowledged
from service.io.sources import RebalanceListener, TopicPartition, Watermarks
from service.records import Headers, RawRecord
from service.runtime.watchdog import Watchdog, close_within, in_thread

log = logging.getLogger(__name__)

_SECURITY_NAMES = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "ssl_ciphers": "ssl.cipher.suites",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
    "ssl_check_hostname": "ssl.endpoint.identification.algorithm",
}


def librdkafka_options(settings: KafkaSettings) -> dict[str, Any]:
    """``bootstrap.servers`` and the translated ``security`` settings."""
    options: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers}
    for key, value in settings.security.items():
        if "." in key:
            options[key] = value
        elif key == "ssl_check_hostname":
            options[_SECURITY_NAMES[key]] = "https" if value not in (False, "false") else "none"
        elif key in _SECURITY_NAMES:
            options[_SECURITY_NAMES[key]] = value
        else:
            known = ", ".join(sorted(_SECURITY_NAMES))
            raise ConfigError(
                f"kafka.security.{key}: not known for client confluent; use {known} "
                "or a librdkafka property name with dots"
            )
    return options


class ConfluentSource:
    """confluent-kafka consumer in a group, manual commits, rebalance callbacks."""

    def __init__(
        self,
        settings: KafkaSettings,
        listener: RebalanceListener,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._settings = settings
        self._watchdog = watchdog or Watchdog(float("inf"), settings.shutdown_grace_s)
        self._listener = listener
        self._reachable = True
        self._consumer = Consumer(
            {
                **librdkafka_options(settings),
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": settings.auto_offset_reset,
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": max(100, settings.session_timeout_ms // 6),
                "fetch.wait.max.ms": settings.fetch_max_wait_ms,
                "partition.assignment.strategy": "cooperative-sticky",
                # librdkafka's default, spelt out: kafka.exactly_once relies on it
                "isolation.level": "read_committed",
                # librdkafka's default too: never create the input topic (app.await_topic)
                "allow.auto.create.topics": False,
                "client.id": "forecastd",
                "error_cb": self._on_error,
            }
        )
        self._consumer.subscribe(
            [settings.input_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self.committed: dict[TopicPartition, int] = {}
        self.watermarks: Watermarks = {}
        self._assigning = False
        self._starts: dict[TopicPartition, int] = {}

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._reachable = False
        if error.fatal():
            raise BrokerError(f"fatal consumer error: {error}")

    def _on_assign(self, _consumer: Consumer, partitions: list[ConfluentTopicPartition]) -> None:
        self._reachable = True
        self._assigning = True
        try:
            self._listener.on_assigned(sorted((tp.topic, tp.partition) for tp in partitions))
        finally:
            self._assigning = False
        starts, self._starts = self._starts, {}
        if starts:
            # Assign here, with the restored offsets (librdkafka then skips its own
            # assign with the committed ones); the others from their committed offset.
            self._consumer.incremental_assign(
                [
                    ConfluentTopicPartition(
                        tp.topic, tp.partition, starts.get((tp.topic, tp.partition), OFFSET_STORED)
                    )
                    for tp in partitions
                ]
            )

    callbacks_may_block = True
    """librdkafka heartbeats from its own thread and confluent-kafka calls rebalance
    callbacks from ``consume`` in the loop's thread: a restore may run inside one."""

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        """Not needed: restores run inside the assignment callback."""

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        """Not needed: restores run inside the assignment callback."""

    def seek(self, positions: Mapping[TopicPartition, int]) -> None:
        """Read these partitions from these offsets next (a restored checkpoint's).
        From the assignment callback, the offsets go into the assignment itself: a
        partition cannot be sought before it is assigned."""
        if self._assigning:
            self._starts.update(positions)
            return
        for (topic, partition), offset in positions.items():
            self._consumer.seek(ConfluentTopicPartition(topic, partition, offset))

    def _on_revoke(self, _consumer: Consumer, partitions: list[ConfluentTopicPartition]) -> None:
        self._listener.on_revoked(sorted((tp.topic, tp.partition) for tp in partitions))

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        # consume() waits for num_messages or the timeout, whichever comes first: wait
        # for the first record only, then take what is already there.
        messages = self._consumer.consume(num_messages=max_records, timeout=0)
        if not messages:
            messages = self._consumer.consume(num_messages=1, timeout=timeout_s)
            if messages and max_records > 1:
                messages += self._consumer.consume(num_messages=max_records - 1, timeout=0)
        now = time.monotonic()
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise BrokerError(f"fatal consumer error: {error}")
                continue  # partition EOF and transient errors: librdkafka retries
            kind, timestamp = message.timestamp()
            records.append(
                RawRecord(
                    message.topic() or "",
                    message.partition() or 0,
                    message.offset() or 0,
                    message.key(),
                    message.value(),
                    _headers(message.headers()),
                    timestamp if kind != 0 and timestamp >= 0 else None,
                    now,
                )
            )
        if records:
            self._reachable = True
            heard = {(r.topic, r.partition) for r in records}
            self.watermarks = {**self.watermarks, **self._highwaters(heard, now)}
        return records

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        payload = [ConfluentTopicPartition(t, p, o) for (t, p), o in offsets.items()]

        def commit() -> None:
            try:
                self._consumer.commit(offsets=payload, asynchronous=False)
            except KafkaException as exc:
                raise BrokerError(f"offset commit failed: {exc}") from exc

        step = in_thread(commit, "forecastd-commit")
        self._watchdog.bounded("offset commit", step, self._settings.commit_timeout_s)
        self.committed.update(offsets)

    def group_metadata(self) -> Any:
        """This member's group metadata, for a transaction's offsets (KIP-447)."""
        return self._consumer.consumer_group_metadata()

    def committed_offset(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp`` on the broker (None: none yet).

        Called in this thread, with librdkafka's own timeout: from inside the
        assignment callback (where restores run), a helper thread's call would wait
        for the very ``consume`` that runs the callback."""
        try:
            [position] = self._consumer.committed(
                [ConfluentTopicPartition(*tp)], timeout=self._settings.commit_timeout_s
            )
        except KafkaException as exc:
            raise BrokerError(f"cannot read the committed offset of {tp}: {exc}") from exc
        return int(position.offset) if position.offset >= 0 else None

    def _highwaters(
        self, partitions: Iterable[TopicPartition], now: float
    ) -> dict[TopicPartition, tuple[int, float]]:
        highs = {}
        for topic, partition in partitions:
            # cached: those of the last fetch answer, no request (and right with Tansu,
            # whose ListOffsets answer is not)
            try:
                _, high = self._consumer.get_watermark_offsets(
                    ConfluentTopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high >= 0:
                highs[(topic, partition)] = (int(high), now)
        return highs

    @property
    def exhausted(self) -> bool:
        return False

    def reachable(self) -> bool:
        return self._reachable

    def close(self) -> None:
        close_within(self._consumer.close, self._settings.close_timeout_s, "consumer close")


def _headers(
    raw: Mapping[str, str | bytes | None] | Sequence[tuple[str, str | bytes | None]] | None,
) -> Headers:
    pairs = raw.items() if isinstance(raw, Mapping) else raw or ()
    return tuple((key, _as_bytes(value)) for key, value in pairs)


def _as_bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value


class ConfluentSink:
    """confluent-kafka producer: ``acks=all``, idempotent, keyed records."""

    def __init__(
        self,
        settings: KafkaSettings,
        watchdog: Watchdog | None = None,
        max_request_bytes: int = 1_048_576 + 65_536,
        transactional_id: str | None = None,
        renewed: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._watchdog = watchdog or Watchdog(float("inf"), settings.shutdown_grace_s)
        self._renewal = Renewal(settings, transactional_id is None, renewed)
        delivery_s = self._renewal.delivery_s()
        transactional: dict[str, Any] = {}
        if transactional_id is not None:
            transactional = {
                "transactional.id": transactional_id,
                "transaction.timeout.ms": int(settings.transaction_timeout_s * 1000),
            }
            # librdkafka requires message.timeout.ms <= transaction.timeout.ms
            delivery_s = min(delivery_s, settings.transaction_timeout_s)
        options = {
            **librdkafka_options(settings),
            **transactional,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": settings.linger_ms,
            "batch.size": settings.producer_batch_bytes,
            # Java's (and kafka-python's) murmur2 key hash, so a key lands in the same
            # output partition whichever client produced it (librdkafka's default,
            # consistent_random, hashes with CRC32).
            "partitioner": "murmur2_random",
            "message.max.bytes": max_request_bytes,
            "message.timeout.ms": int(delivery_s * 1000),
            "client.id": "forecastd",
        }
        self._new_producer: Callable[[], Producer] = lambda: Producer(options)
        self._producer = self._new_producer()
        self._failures: list[tuple[SentRecord, str]] = []

    def _delivered(self, record: SentRecord, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._failures.append((record, str(error)))

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers = (),
        partition: int | None = None,
    ) -> None:
        delivered = functools.partial(
            self._delivered, SentRecord(topic, key, value, headers, partition)
        )

        def produce(_slice_s: float) -> bool:
            try:
                if partition is None:
                    self._producer.produce(
                        topic, value, key, headers=list(headers), on_delivery=delivered
                    )
                else:
                    self._producer.produce(
                        topic, value, key, partition, headers=list(headers), on_delivery=delivered
                    )
            except BufferError:
                self._producer.poll(0.05)  # local queue full: serve deliveries, retry
                return False
            except KafkaException as exc:
                raise BrokerError(f"cannot send to {topic}: {exc}") from exc
            return True

        if not produce(0.0):
            self._watchdog.bounded("producer send", produce, self._settings.flush_timeout_s)

    def flush(self) -> None:
        """What failed goes once more on a new producer (:class:`service.io.sinks.Renewal`)."""
        self._renewal.flush(self._acknowledged, self._renew, self.send)

    def _acknowledged(self, timeout_s: float) -> list[tuple[SentRecord, str]]:
        """Wait (bounded) until the broker has answered for every queued record; the
        records it failed, with their errors."""

        def step(slice_s: float) -> bool:
            return int(self._producer.flush(slice_s)) == 0

        self._watchdog.bounded("producer flush", step, timeout_s)
        failures, self._failures = self._failures, []
        return failures

    def _renew(self) -> None:
        """Replace the producer; the old one holds nothing more (its records failed)."""
        old = self._producer
        try:
            self._producer = self._new_producer()
        except KafkaException as exc:
            raise BrokerError(f"cannot create a new producer: {exc}") from exc

        def close() -> None:
            old.close()  # stop its threads: no reconnects after us

        close_within(close, self._settings.close_timeout_s, "old producer close")

    def close(self) -> None:
        timeout = self._settings.close_timeout_s

        def close() -> None:
            self._producer.flush(timeout)
            self._producer.close()  # stop librdkafka's threads: no reconnects after us

        close_within(close, timeout, "producer close")


class ConfluentTransactionalSink(ConfluentSink):
    """confluent-kafka transactional producer (``kafka.exactly_once``); as
    :class:`service.io.sinks.KafkaTransactionalSink`. Each transactional call runs in a
    helper thread with librdkafka's own timeout set to the bound the watchdog keeps."""

    def __init__(
        self,
        settings: KafkaSettings,
        transactional_id: str,
        watchdog: Watchdog | None = None,
        max_request_bytes: int = 1_048_576 + 65_536,
    ) -> None:
        super().__init__(settings, watchdog, max_request_bytes, transactional_id)
        self._open = False
        timeout = settings.connect_timeout_s
        self._wait("init transactions", lambda: self._producer.init_transactions(timeout), timeout)

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
        positions = [ConfluentTopicPartition(t, p, o) for (t, p), o in offsets.items()]
        offsets_s, commit_s = self._settings.commit_timeout_s, self._settings.flush_timeout_s
        if positions:
            self._wait(
                "transaction offsets",
                lambda: self._producer.send_offsets_to_transaction(positions, group, offsets_s),
                offsets_s,
            )
        self._wait(
            "transaction commit", lambda: self._producer.commit_transaction(commit_s), commit_s
        )
        self._open = False
        failures, self._failures = self._failures, []
        raise_unacknowledged(failures)  # commit_transaction raises first; a second check

    def close(self) -> None:
        if self._open:
            # as KafkaTransactionalSink.close: abort now rather than at the timeout
            self._open = False
            timeout = self._settings.close_timeout_s
            close_within(lambda: self._abort(timeout), timeout, "transaction abort")
        super().close()

    def _begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise BrokerError(f"cannot begin a transaction: {exc}") from exc
        self._open = True

    def _abort(self, timeout_s: float) -> None:
        try:
            self._producer.abort_transaction(timeout_s)
        except KafkaException as exc:  # fenced or fatal: the broker aborts it anyway
            log.warning("transaction abort: %s", exc.args[0].name() if exc.args else exc)

    def _wait(self, what: str, call: Callable[[], None], timeout_s: float) -> None:
        try:
            self._watchdog.bounded(
                what, in_thread(call, f"forecastd-{what.replace(' ', '-')}"), timeout_s
            )
        except KafkaException as exc:
            raise BrokerError(f"{what} failed: {exc}") from exc
