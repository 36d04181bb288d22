"""Where records come from: the Source protocol, Kafka, and an in-memory list.

A source hands out batches of :class:`RawRecord`, tells its owner which partitions it
was assigned or lost (through :class:`RebalanceListener`, always from inside
``poll``, between batches), and commits the offsets it is told to commit. A file
replay and a test run through the very same processing code by using
:class:`ListSource`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTopicPartition

from service.config import KafkaSettings
from service.errors import BrokerError
from service.io.pacing import FetchPacer
from service.records import RawRecord
from service.runtime.watchdog import Watchdog, close_within

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
Watermarks = Mapping[TopicPartition, tuple[int, float]]
"""Per partition, its high watermark as the loop's consumer last heard it from the
broker (fetch answers carry it), and when (``time.monotonic()``) a poll last brought
records of it: a poll that brings none may be one whose fetches do not answer."""


class RebalanceListener(Protocol):
    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None: ...

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None: ...


class Source(Protocol):
    """A partitioned, committable stream of records."""

    committed: dict[TopicPartition, int]
    """The offsets this process committed so far (next offset per partition)."""

    watermarks: Watermarks
    """Set by the polls that bring records, in the loop's thread, and replaced rather
    than changed, so that the lag monitor's thread reads a whole one (empty: a source
    without a broker). What the loop's own fetches say costs nothing to read; the lag
    monitor fetches for itself only where it is stale (:mod:`service.runtime.lag`)."""

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Up to ``max_records`` records in offset order per partition; waits at most
        ``timeout_s`` and returns an empty list when nothing arrived."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record that every offset below ``offsets[tp]`` is fully processed."""
        ...

    @property
    def exhausted(self) -> bool:
        """True when a finite source has handed out everything (never for Kafka)."""
        ...

    def reachable(self) -> bool:
        """Whether the source's broker currently answers (for ``/readyz``)."""
        ...

    def close(self) -> None: ...


class ListSource:
    """A finite in-memory source for tests and offline replays.

    All partitions present in the records are assigned on the first poll; commits
    are kept in :attr:`committed`.
    """

    def __init__(self, records: Iterable[RawRecord], listener: RebalanceListener) -> None:
        self._records = list(records)
        self._listener = listener
        self._position = 0
        self._assigned = False
        self.committed: dict[TopicPartition, int] = {}
        self.watermarks: Watermarks = {}

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        if not self._assigned:
            partitions = sorted({(r.topic, r.partition) for r in self._records})
            self._listener.on_assigned(partitions)
            self._assigned = True
        now = time.monotonic()
        batch = [
            _stamped(r, now) for r in self._records[self._position : self._position + max_records]
        ]
        self._position += len(batch)
        return batch

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.committed.update(offsets)

    @property
    def exhausted(self) -> bool:
        return self._assigned and self._position >= len(self._records)

    def reachable(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release."""


def _stamped(record: RawRecord, now: float) -> RawRecord:
    return RawRecord(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        record.headers,
        record.timestamp_ms,
        now,
    )


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """kafka-python options shared by consumer, producer and admin: servers plus
    ``security``, without librdkafka properties (names with dots, ``client:
    confluent`` only), which the lag monitor's kafka-python client cannot take: it
    authenticates with the kafka-python names, which both clients understand."""
    security = {k: v for k, v in settings.security.items() if "." not in k}
    return {"bootstrap_servers": settings.bootstrap_servers.split(","), **security}


class KafkaSource:
    """kafka-python consumer in a group, manual commits, rebalance callbacks.

    Cooperative rebalancing (KIP-429, ``CooperativeStickyAssignor``): a rebalance
    revokes only the partitions that move to another member, so the tasks of the
    partitions that stay keep their state (windows, models, scores). Under the eager
    protocol every rebalance revoked every partition and reset every model. A group
    must not mix the two protocols: upgrade a group that runs an older forecastd by
    stopping it first, or with two rolling restarts, as Kafka's documentation says.

    With ``kafka.exactly_once`` it reads ``read_committed`` (an upstream transaction's
    records only once committed) and commits nothing itself: the transactional sink
    commits the offsets (:mod:`service.runtime.checkpoint`).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        listener: RebalanceListener,
        watchdog: Watchdog | None = None,
        api_version: tuple[int, ...] | None = None,
    ) -> None:
        self._settings = settings
        self._watchdog = watchdog or Watchdog(float("inf"), settings.shutdown_grace_s)
        self._consumer = KafkaConsumer(
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset=settings.auto_offset_reset,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(100, settings.session_timeout_ms // 6),
            max_poll_records=settings.max_poll_records,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            partition_assignment_strategy=[CooperativeStickyAssignor],
            isolation_level="read_committed" if settings.exactly_once else "read_uncommitted",
            client_id="forecastd",
            allow_auto_create_topics=False,  # see app.await_topic
            api_version=api_version,
            **client_options(settings),
        )
        self._consumer.subscribe([settings.input_topic], listener=_Listener(listener))
        self._listener = listener
        self._joined = False
        self.committed: dict[TopicPartition, int] = {}
        self.watermarks: Watermarks = {}
        self._pacer = FetchPacer(settings.fetch_max_wait_ms)

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        fetched = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        self.fetch_wait_ms = self._pacer.observed(sum(len(m) for m in fetched.values()))
        if not self._joined and self._in_group():
            # Cooperative rebalancing calls on_partitions_assigned only with partitions
            # added: a member that joins with none (more replicas than partitions)
            # would never hear it joined. Tell the listener, with no partitions.
            self._joined = True
            self._listener.on_assigned([])
        now = time.monotonic()
        if fetched:
            self.watermarks = {**self.watermarks, **self._highwaters(fetched, now)}
        return [
            RawRecord(
                tp.topic,
                tp.partition,
                m.offset,
                m.key,
                m.value,
                _headers(m.headers) if m.headers else (),
                m.timestamp if m.timestamp is not None and m.timestamp >= 0 else None,
                now,
            )
            for tp, messages in fetched.items()
            for m in messages
        ]

    def _highwaters(
        self, partitions: Iterable[KafkaTopicPartition], now: float
    ) -> dict[TopicPartition, tuple[int, float]]:
        highs = {}
        for tp in partitions:
            high = self._consumer.highwater(tp)  # the subscription state's, no request
            if high is not None:
                highs[(tp.topic, tp.partition)] = (int(high), now)
        return highs

    @property
    def fetch_wait_ms(self) -> int:
        """How long the broker may hold this consumer's next fetch
        (:mod:`service.io.pacing`)."""
        return int(self._consumer._fetcher.config["fetch_max_wait_ms"])

    @fetch_wait_ms.setter
    def fetch_wait_ms(self, value: int) -> None:
        # kafka-python reads its fetcher's config for every fetch request it builds,
        # and has no public setter: the fetcher's own copy is the one to change.
        self._consumer._fetcher.config["fetch_max_wait_ms"] = value

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        payload = {
            KafkaTopicPartition(topic, partition): OffsetAndMetadata(offset, None, -1)
            for (topic, partition), offset in offsets.items()
        }

        def step(slice_s: float) -> bool:
            try:
                self._consumer.commit(payload, timeout_ms=max(1, int(slice_s * 1000)))
            except KafkaTimeoutError:
                return False
            except KafkaError as exc:
                raise BrokerError(f"offset commit failed: {exc}") from exc
            return True

        self._watchdog.bounded("offset commit", step, self._settings.commit_timeout_s)
        self.committed.update(offsets)

    callbacks_may_block = False
    """kafka-python 3 runs rebalance callbacks on its network thread, which also
    heartbeats: a callback must not wait on this consumer (no commit) and should be
    short, so restores run in the loop's thread (:mod:`service.runtime.checkpoint`)."""

    def seek(self, positions: Mapping[TopicPartition, int]) -> None:
        """Read these partitions from these offsets next (a restored checkpoint's)."""
        for (topic, partition), offset in positions.items():
            self._consumer.seek(KafkaTopicPartition(topic, partition), offset)

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        """Fetch nothing of these partitions until :meth:`resume` (while restoring)."""
        self._consumer.pause(*(KafkaTopicPartition(t, p) for t, p in partitions))

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self._consumer.resume(*(KafkaTopicPartition(t, p) for t, p in partitions))

    def group_metadata(self) -> Any:
        """This member's group metadata, for a transaction's offsets (KIP-447)."""
        return self._consumer.group_metadata()

    def committed_offset(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp`` on the broker (None: none yet)."""
        try:
            offset = self._consumer.committed(
                KafkaTopicPartition(*tp),
                timeout_ms=int(self._settings.commit_timeout_s * 1000),
            )
        except KafkaError as exc:
            raise BrokerError(f"cannot read the committed offset of {tp}: {exc}") from exc
        return None if offset is None or offset < 0 else int(offset)

    @property
    def exhausted(self) -> bool:
        return False

    def reachable(self) -> bool:
        """True while the group coordinator is known (the broker answers) and this
        consumer is a member of the group now (not evicted, not between generations)."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        known = coordinator is not None and not coordinator.coordinator_unknown()
        return known and self._in_group()

    def _in_group(self) -> bool:
        return int(self._consumer.group_metadata().generation_id) >= 0

    def close(self) -> None:
        timeout = self._settings.close_timeout_s
        close_within(
            lambda: self._consumer.close(autocommit=False, timeout_ms=int(timeout * 1000)),
            timeout,
            "consumer close",
        )


def _headers(pairs: Iterable[tuple[str, bytes | None]]) -> tuple[tuple[str, bytes], ...]:
    """kafka-python's header list as :data:`~service.records.Headers` (None -> b"")."""
    return tuple((key, value if value is not None else b"") for key, value in pairs)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Adapts kafka-python's ConsumerRebalanceListener to :class:`RebalanceListener`."""

    def __init__(self, inner: RebalanceListener) -> None:
        self._inner = inner

    def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        self._inner.on_revoked(sorted((tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        self._inner.on_assigned(sorted((tp.topic, tp.partition) for tp in assigned))

    def on_partitions_lost(self, lost: Iterable[Any]) -> None:
        """Evicted from the group: the partitions may be processed elsewhere already,
        so their state is dropped like a revocation's."""
        self._inner.on_revoked(sorted((tp.topic, tp.partition) for tp in lost))
