"""Where checkpoints live: the state topic (a changelog, as Kafka Streams keeps one).

Layout. ``state.topic`` (default ``<kafka.group_id>.state``) has one partition per
input partition; the checkpoints of input partition *p* go to state partition *p*,
so a task restores by reading one partition, and any replica can restore any task
without shared disks. The topic is created with ``cleanup.policy=compact`` when
absent (with as many partitions as the input topic); one with fewer partitions than
the input topic is an error that says so.

Records. A checkpoint (:mod:`service.runtime.snapshot`) is cut into chunks of at most
``state.chunk_bytes``. Each chunk's key is ``<input topic>:<partition>:<slot>:<index>``
and its header ``forecastd.checkpoint`` is ``<seq>.<created ms>:<index>:<count>``;
header ``forecastd.checkpoint.offset`` holds the input offset the checkpoint covers,
so that the newest one's can be learned from the last record alone
(:meth:`StateTopic.newest_offset`, for ``state.local_dir``).
Consecutive checkpoints of a task alternate between slot 0 and 1, so compaction
(which keeps the newest record per key) can never mix a half-written checkpoint into
the chunks of the last complete one: the last complete checkpoint of the other slot
stays whole until the next one of its slot is complete.

Restore. Compaction is lazy (and some brokers never do it), so a partition may hold
many old checkpoints. The reader does not read it from the start: it learns the end
offset from a fetch (the high watermark), reads the last 64 records, and reads four
times further back each time it found no complete checkpoint there. Chunks of one
checkpoint are written together, so the newest complete one is found in the last
two checkpoints' worth of records: restoring costs about one checkpoint's bytes,
however long the topic's history.

A separate kafka-python consumer (no group) reads, whichever ``kafka.client`` the loop
uses, as the lag monitor does; writes go through the loop's own sink, so a checkpoint
is flushed after the predictions it covers (and, with ``kafka.exactly_once``, goes in
their transaction).

Exactly-once. The reader is ``read_committed`` then: the records of a transaction still
open are not read (a restore waits for it to end, at most
``kafka.transaction_timeout_s``), nor, on a broker that reports aborted transactions
in its fetch responses, those of an aborted one. Some brokers do not (Tansu 0.6, the
test broker, returns the aborted chunks to ``read_committed`` readers), so the caller
also passes ``accept``, which admits only the checkpoint that covers the group's
committed offset (:class:`service.runtime.checkpoint.ExactlyOnce`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition as KafkaTopicPartition

from service.config import Settings
from service.errors import BrokerError, ConfigError
from service.io.sinks import KafkaSink, Sink
from service.io.sources import TopicPartition, client_options
from service.runtime.snapshot import read_header

log = logging.getLogger(__name__)

HEADER = "forecastd.checkpoint"
OFFSET_HEADER = "forecastd.checkpoint.offset"
_FIRST_WINDOW = 64
_PROBE_WINDOW = 4


@dataclass(frozen=True, slots=True)
class Stored:
    """A complete checkpoint read back: its bytes and where it sits in the topic."""

    blob: bytes
    seq: int
    created_ms: int
    first_offset: int
    chunks: int


@dataclass(frozen=True, slots=True)
class CoversCommitted:
    """Accepts (:meth:`StateTopic.newest`) the checkpoint that covers exactly the
    group's ``committed`` offset: with ``kafka.exactly_once`` one transaction wrote
    both, so that is the newest committed checkpoint (None: the group committed
    nothing for the partition yet, and no checkpoint is accepted)."""

    committed: int | None

    def __call__(self, offset: int) -> bool:
        return offset == self.committed


@dataclass(slots=True)
class _Chunk:
    offset: int
    index: int
    count: int
    value: bytes
    covers: int | None = None  # the covered input offset (OFFSET_HEADER), where written


class StateTopic:
    """Writes checkpoints to, and finds the newest complete one in, the state topic."""

    def __init__(self, settings: Settings, sink: Sink | None = None) -> None:
        self._settings = settings
        self._sink = sink
        self.topic = settings.state_topic
        self._chunk = min(settings.state.chunk_bytes, settings.schema_.max_message_bytes)
        self._timeout = settings.state.restore_timeout_s
        self._seq: dict[TopicPartition, int] = {}
        self._consumer: Any = None
        self._checked = False

    # -- the topic ------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the state topic if absent; check its partitions cover the input's.

        Raises:
            ConfigError: the state topic has fewer partitions than the input topic.
            BrokerError: the broker did not answer.
        """
        if self._checked:
            return
        kafka = self._settings.kafka
        consumer = self._reader()
        inputs = consumer.partitions_for_topic(kafka.input_topic) or set()
        existing = consumer.partitions_for_topic(self.topic)
        if not existing:
            with _quiet_clients():
                admin = KafkaAdminClient(client_id="forecastd-state", **client_options(kafka))
            try:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics(
                        [
                            NewTopic(
                                self.topic,
                                max(1, len(inputs)),
                                -1,
                                topic_configs={"cleanup.policy": "compact"},
                            )
                        ]
                    )
            except KafkaError as exc:
                raise BrokerError(f"cannot create the state topic {self.topic}: {exc}") from exc
            finally:
                admin.close()
            log.info("created state topic %s with %d partitions", self.topic, len(inputs))
            existing = self._wait_for_partitions()
        if isinstance(self._sink, KafkaSink):
            self._sink.learn_topic(self.topic)
        if inputs and len(existing) < len(inputs):
            raise ConfigError(
                f"state topic {self.topic} has {len(existing)} partitions but input topic "
                f"{kafka.input_topic} has {len(inputs)}: add partitions to the state topic "
                "(one per input partition) or name a new one in state.topic"
            )
        self._checked = True

    def _wait_for_partitions(self) -> set[int]:
        deadline = time.monotonic() + self._timeout
        consumer = self._reader()
        while time.monotonic() < deadline:
            found = consumer.partitions_for_topic(self.topic)
            if found:
                return set(found)
            consumer.topics()  # refresh metadata
            time.sleep(0.1)
        raise BrokerError(f"state topic {self.topic} did not appear within {self._timeout:.0f}s")

    # -- writing --------------------------------------------------------------------------

    def write(self, tp: TopicPartition, blob: bytes, created_ms: int, covers: int) -> int:
        """Send one checkpoint of ``tp``'s task, covering input offset ``covers``,
        through the sink, in chunks (the caller makes them durable:
        :mod:`service.runtime.checkpoint`); returns the chunks sent."""
        if self._sink is None:
            raise RuntimeError("a read-only StateTopic cannot write")
        seq = self._seq.get(tp, 0) + 1
        self._seq[tp] = seq
        topic, partition = tp
        count = max(1, -(-len(blob) // self._chunk))
        for index in range(count):
            part = blob[index * self._chunk : (index + 1) * self._chunk]
            key = f"{topic}:{partition}:{seq % 2}:{index}".encode()
            header = f"{seq}.{created_ms}:{index}:{count}".encode()
            headers = ((HEADER, header), (OFFSET_HEADER, str(covers).encode()))
            self._sink.send(self.topic, key, part, headers, partition=partition)
        return count

    # -- reading --------------------------------------------------------------------------

    def newest(
        self, tp: TopicPartition, accept: Callable[[int], bool] | None = None
    ) -> Stored | None:
        """The newest complete checkpoint of ``tp``'s task, or None if there is none.
        ``accept``: given a checkpoint's covered input offset, whether it may be
        restored (None: any); older ones are tried until one is accepted.

        Raises:
            BrokerError: the partition could not be read within ``state.restore_timeout_s``.
            SnapshotFormatError: ``accept`` was given and a checkpoint's header does
                not read (another format version).
        """
        for chunks in self._backwards(tp, _FIRST_WINDOW):
            found = _newest_complete(chunks, accept)
            if found is not None:
                self._seq[tp] = max(self._seq.get(tp, 0), found.seq)
                return found
        return None

    def newest_offset(self, tp: TopicPartition) -> int | None:
        """The input offset covered by the newest checkpoint written for ``tp`` (complete
        or not), from the last few records of its state partition; None if it has
        none, or if the newest was written without an offset header (an older
        forecastd). Reads a few chunks, not a whole checkpoint.

        Raises:
            BrokerError: the partition could not be read within ``state.restore_timeout_s``.
        """
        for chunks in self._backwards(tp, _PROBE_WINDOW):
            last: _Chunk | None = None
            for _, chunk in chunks:
                if last is None or chunk.offset > last.offset:
                    last = chunk
            if last is not None:
                return last.covers
        return None

    def _backwards(
        self, tp: TopicPartition, window: int
    ) -> Iterator[Iterator[tuple[bytes, _Chunk]]]:
        """The chunks of ``tp``'s task in its state partition, from its end backwards in
        windows of ``window`` records, each four times the last, until its start: the
        newest checkpoint costs about its own bytes to find, however long the
        partition (all within one ``state.restore_timeout_s``)."""
        self.ensure()
        topic, partition = tp
        ktp = KafkaTopicPartition(self.topic, partition)
        deadline = time.monotonic() + self._timeout
        low, high = self._bounds(ktp, deadline)
        prefix = f"{topic}:{partition}:".encode()
        while high > low:
            start = max(low, high - window)
            yield self._read(ktp, start, high, prefix, deadline)
            if start == low:
                return
            window *= 4

    def partitions(self) -> list[int]:
        """The state topic's partitions (empty if it does not exist)."""
        return sorted(self._reader().partitions_for_topic(self.topic) or ())

    def _bounds(self, ktp: KafkaTopicPartition, deadline: float) -> tuple[int, int]:
        """(first offset, end offset) of ``ktp``; the end from a fetch's high watermark
        (some brokers answer ListOffsets for the end wrongly)."""
        consumer = self._reader()
        consumer.assign([ktp])
        consumer.seek_to_beginning(ktp)
        low = int(consumer.position(ktp))
        while consumer.highwater(ktp) is None:
            if time.monotonic() > deadline:
                raise BrokerError(f"state topic {self.topic}: no answer within {self._timeout}s")
            consumer.poll(timeout_ms=100, max_records=1)
        return low, int(consumer.highwater(ktp))

    def _read(
        self, ktp: KafkaTopicPartition, start: int, end: int, prefix: bytes, deadline: float
    ) -> Iterator[tuple[bytes, _Chunk]]:
        consumer = self._reader()
        consumer.seek(ktp, start)
        while consumer.position(ktp) < end:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"state topic {self.topic} partition {ktp.partition}: not read within "
                    f"{self._timeout:.0f}s (state.restore_timeout_s)"
                )
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    if record.offset >= end or not (record.key or b"").startswith(prefix):
                        continue
                    chunk = _parse(record)
                    if chunk is not None:
                        yield chunk

    def _reader(self) -> Any:
        if self._consumer is None:
            committed = self._settings.kafka.exactly_once
            with _quiet_clients():
                self._consumer = KafkaConsumer(
                    enable_auto_commit=False,
                    group_id=None,
                    isolation_level="read_committed" if committed else "read_uncommitted",
                    client_id="forecastd-state",
                    allow_auto_create_topics=False,  # see app.await_topic
                    fetch_max_wait_ms=50,
                    max_partition_fetch_bytes=max(1_048_576, 2 * self._chunk),
                    bootstrap_timeout_ms=int(self._settings.kafka.connect_timeout_s * 1000),
                    **client_options(self._settings.kafka),
                )
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close(autocommit=False)
            self._consumer = None


def group_offsets(settings: Settings) -> dict[int, int]:
    """The consumer group's committed offset per input partition, read without joining
    the group (for ``forecastd state``).

    Raises:
        BrokerError: the broker did not answer.
    """
    kafka = settings.kafka
    try:
        with _quiet_clients():
            admin = KafkaAdminClient(client_id="forecastd-state", **client_options(kafka))
        try:
            offsets = admin.list_group_offsets(kafka.group_id).get(kafka.group_id, {})
        finally:
            admin.close()
    except KafkaError as exc:
        raise BrokerError(f"cannot read the offsets of group {kafka.group_id}: {exc}") from exc
    return {
        tp.partition: int(meta.offset)
        for tp, meta in offsets.items()
        if tp.topic == kafka.input_topic and meta.offset >= 0
    }


@contextlib.contextmanager
def _quiet_clients() -> Iterator[None]:
    """kafka-python logs a new client's whole configuration at DEBUG, passwords
    included: keep its loggers at INFO or above while one is made (the CLI does the
    same for the daemon's own clients)."""
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(max(logging.INFO, kafka_log.getEffectiveLevel()))
    try:
        yield
    finally:
        kafka_log.setLevel(level)


def _parse(record: Any) -> tuple[bytes, _Chunk] | None:
    """(checkpoint id, chunk) of a state record; None for a record of no checkpoint."""
    headers = dict(record.headers or ())
    value = headers.get(HEADER)
    if value is None:
        return None
    try:
        ident, index, count = value.decode().rsplit(":", 2)
        chunk = _Chunk(record.offset, int(index), int(count), record.value)
    except (UnicodeDecodeError, ValueError):
        log.warning("state record at offset %d: unreadable %s header", record.offset, HEADER)
        return None
    covers = headers.get(OFFSET_HEADER)
    if covers is not None:
        try:
            chunk.covers = int(covers.decode())
        except (UnicodeDecodeError, ValueError):
            log.warning(
                "state record at offset %d: unreadable %s header", record.offset, OFFSET_HEADER
            )
    return ident.encode(), chunk


def _newest_complete(
    chunks: Iterator[tuple[bytes, _Chunk]], accept: Callable[[int], bool] | None = None
) -> Stored | None:
    """Of the checkpoints whose every chunk was read (and, given ``accept``, whose
    covered offset it accepts), the one written last."""
    groups: dict[bytes, dict[int, _Chunk]] = {}
    for ident, chunk in chunks:
        groups.setdefault(ident, {})[chunk.index] = chunk
    complete: list[tuple[int, bytes]] = []
    for ident, parts in groups.items():
        count = next(iter(parts.values())).count
        if len(parts) != count or set(parts) != set(range(count)):
            continue
        complete.append((max(chunk.offset for chunk in parts.values()), ident))
    for _, ident in sorted(complete, reverse=True):
        parts = groups[ident]
        blob = b"".join(parts[i].value for i in range(len(parts)))
        if accept is not None and not accept(read_header(blob).offset):
            continue
        seq, created = ident.decode().split(".", 1)
        return Stored(blob, int(seq), int(created), parts[0].offset, len(parts))
    return None
