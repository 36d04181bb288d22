"""The one place where the order of completing a batch, and of a checkpoint, is written.

For every batch, in this order (both delivery modes):

1. **Flush the sink.** Every prediction and dead letter produced from the batch is
   acknowledged by the broker (``acks=all``), or :class:`~service.errors.BrokerError`
   is raised and nothing below happens. (With ``kafka.exactly_once`` they are
   acknowledged inside the open transaction: not visible to ``read_committed``
   readers until its commit.)
2. **Account** for the acknowledged outputs (latency histogram, produced counters).
3. With ``state.enabled: false``: **commit the input offsets** of the batch. With
   learned state (the default), offsets are committed only by a checkpoint (below),
   when one is due: ``state.interval_s`` passed or ``state.every_events`` records were
   processed since the last.

A checkpoint (:class:`Checkpointer`), in this order:

1. **Snapshot** the tasks (with at-least-once, when due, one task per turn of the
   loop, a *round*, so that the loop never stops for all of them at once; on
   revocation the revoked ones; at shutdown and with exactly-once every one) whose
   input moved since its last checkpoint
   (:mod:`service.runtime.snapshot`), recording the offset it covers: the next input
   offset, every record below it learned, none at or above it.
2. **Send** the snapshots to the state topic (:mod:`service.runtime.state`).
3. **Commit**, as the delivery mode (a :class:`CommitOrder`) says:

   * **At-least-once** (default, :class:`AtLeastOnce`): flush (the checkpoint is
     durable, after the predictions it covers, flushed with their batch), then commit
     each task's covered offset through the consumer.
   * **Exactly-once** (``kafka.exactly_once``, :class:`ExactlyOnce`): add each task's
     covered offset to the producer's transaction and commit it. Every prediction and
     dead letter sent since the previous checkpoint, the checkpoints and the offsets
     become visible together, or not at all. The consumer commits nothing itself.

4. **Copy** each checkpoint to ``state.local_dir``, if set
   (:mod:`service.runtime.localstate`): only now, so the local file never holds a
   checkpoint the state topic lacks.

So the committed offsets never run ahead of a durable checkpoint, as in Kafka Streams.

**At-least-once restore.** On assignment a task is restored from its newest checkpoint
and the consumer seeks to the checkpoint's covered offset (not the committed one,
which may lag it if the process died between flush and commit): the records from
there are read again, were not learned by the restored state, so nothing is learned
twice, and their predictions carry the same ``source`` as any published before the
crash (at-least-once: consumers de-duplicate on ``source``). A task without a
checkpoint starts cold from the committed offset.

**Exactly-once restore.** The committed offset and the newest committed checkpoint
cover the same offset (one transaction wrote both), so the restore takes the newest
checkpoint that covers exactly the group's committed offset: read ``read_committed``,
that is the newest; on a broker that hands aborted records to ``read_committed``
readers (the test broker, Tansu 0.6, does) it skips any checkpoint of an aborted
transaction, since none of those covers the committed offset. A partition with no
such checkpoint starts cold from its committed offset (``outcome="none"``, with a
warning): the checkpoints there belong to no committed transaction, or to another
mode's history, and restoring one would publish twice or skip records. The re-read
records' predictions are published again, and the earlier ones were never committed:
a ``read_committed`` reader sees each ``source`` once.

**A transaction that fails** (the broker refused or timed out, the producer was
fenced by a newer process with its id, the group moved the partitions on) raises
:class:`TransactionAborted` and the process exits 1, to be restarted (Kubernetes, or
the worker supervisor). It does not recover in place: its tasks learned records whose
outputs were not committed, so every owned task is ahead of the durable state, and a
commit that timed out may still have committed; a fresh process, whose producer
first fences this one and settles its transaction (``init_transactions``), restores
every task from what was committed. That is a restore of each owned partition,
which is what the restart costs.

Checkpoints are also written for the partitions revoked in a rebalance (before they
are given up; with exactly-once, every task with outputs in the transaction is
checkpointed, since the commit makes them all visible) and for every task at
shutdown (SIGTERM).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from service.config import Settings
from service.errors import BrokerError
from service.io.sinks import Sink, TransactionalSink
from service.io.sources import Source, TopicPartition
from service.pipeline.processor import BatchResult, Processor
from service.records import RawRecord
from service.runtime.localstate import LocalState
from service.runtime.metrics import Metrics
from service.runtime.snapshot import Header, SnapshotFormatError, decode, encode, fingerprint
from service.runtime.state import CoversCommitted, StateTopic

log = logging.getLogger(__name__)


class TransactionAborted(BrokerError):
    """An exactly-once transaction did not commit: the process must restart (above)."""


class Committer(Protocol):
    """What checkpoints need of a source: commit offsets, move, pause and resume
    partitions, its group metadata and committed offsets (exactly-once), and whether
    its rebalance callbacks may wait on the broker."""

    callbacks_may_block: bool

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    def seek(self, positions: Mapping[TopicPartition, int]) -> None: ...

    def pause(self, partitions: Sequence[TopicPartition]) -> None: ...

    def resume(self, partitions: Sequence[TopicPartition]) -> None: ...

    def group_metadata(self) -> Any: ...

    def committed_offset(self, tp: TopicPartition) -> int | None: ...


class CommitOrder(Protocol):
    """Step 3 of a checkpoint, and what may be restored: the part of the order that
    differs between the delivery modes (see the module docstring)."""

    atomic: bool
    """Whether a commit makes every output sent since the previous one visible at once
    (a transaction). A checkpoint, even of revoked partitions only, must then include
    every task with outputs since then; and a revocation whose checkpoint failed must
    stop the process, since the open transaction holds outputs of partitions given
    up, which must never be committed now."""

    def commit(
        self, covered: Mapping[TopicPartition, int], source: Committer, offsets: bool
    ) -> None:
        """The checkpoints covering ``covered`` were sent: make them durable (with the
        outputs sent before them) and commit ``covered`` as the group's offsets.
        ``offsets`` false: the caller is inside a rebalance callback that must not wait
        on the consumer (the restore seeks to the checkpoint's offset anyway)."""
        ...

    def restorable(self, source: Committer, tp: TopicPartition) -> Callable[[int], bool] | None:
        """Which checkpoints of ``tp`` may be restored, by covered offset (None: the
        newest, whatever it covers)."""
        ...


class AtLeastOnce:
    """Flush, then commit the offsets through the consumer (the default)."""

    atomic = False

    def __init__(self, sink: Sink, metrics: Metrics) -> None:
        self._sink = sink
        self._metrics = metrics

    def commit(
        self, covered: Mapping[TopicPartition, int], source: Committer, offsets: bool
    ) -> None:
        self._sink.flush()
        if not offsets:
            return
        try:
            source.commit(covered)
            self._metrics.commits.inc()
        except BrokerError as exc:
            # The checkpoint is durable and a restore seeks to its offset: the
            # committed offset is only the fallback for partitions without one. A
            # commit refused mid-rebalance is retried with the next checkpoint.
            log.warning("offset commit after a checkpoint failed: %s", exc)

    def restorable(self, source: Committer, tp: TopicPartition) -> Callable[[int], bool] | None:
        return None


class ExactlyOnce:
    """Commit the producer's transaction with the offsets in it (``kafka.exactly_once``).

    The offsets go to the group coordinator through the producer
    (``send_offsets_to_transaction``), with the consumer's group metadata: the broker
    refuses them from a member of an older generation (KIP-447), so a process that
    lost its partitions (evicted, or a zombie after a restart under another id)
    cannot commit over their new owner. They do not wait on the consumer, so a
    revocation commits them from inside the rebalance callback too.
    """

    atomic = True

    def __init__(self, sink: TransactionalSink, metrics: Metrics) -> None:
        self._sink = sink
        self._metrics = metrics

    def commit(
        self, covered: Mapping[TopicPartition, int], source: Committer, offsets: bool
    ) -> None:
        try:
            self._sink.commit(covered, source.group_metadata())
        except Exception as exc:
            raise TransactionAborted(
                f"transaction not committed ({exc}); exiting so that a restart restores every "
                "partition from its last committed checkpoint"
            ) from exc
        self._metrics.commits.inc()

    def restorable(self, source: Committer, tp: TopicPartition) -> Callable[[int], bool] | None:
        return CoversCommitted(source.committed_offset(tp))


def commit_order(settings: Settings, sink: Sink, metrics: Metrics) -> CommitOrder:
    """The order ``kafka.exactly_once`` asks for (its sink must then be transactional:
    :func:`service.runtime.app._connect` builds it)."""
    if not settings.kafka.exactly_once:
        return AtLeastOnce(sink, metrics)
    if not isinstance(sink, TransactionalSink):
        raise TypeError("kafka.exactly_once needs a transactional sink")
    return ExactlyOnce(sink, metrics)


def complete_batch(
    result: BatchResult,
    sink: Sink,
    source: Source,
    processor: Processor,
    metrics: Metrics,
    state: Checkpointer | None = None,
    records: int = 0,
) -> None:
    """Make the batch durable in the order above (``records``: how many it held)."""
    if state is not None:
        state.unflushed = True  # until the flush returns: see Checkpointer.checkpoint
    sink.flush()
    processor.acknowledged(result)
    if state is not None:
        state.unflushed = False
        state.processed(records)
        if state.due():
            state.scheduled()
    elif result.offsets:
        source.commit(result.offsets)
        metrics.commits.inc()


class Checkpointer:
    """Writes the processor's tasks to the state topic, and restores assigned ones.

    Also the source's rebalance listener (it wraps the processor's), so that revoked
    tasks are checkpointed before they are dropped and assigned ones are restored
    before their first record is processed. An error while restoring (a checkpoint of
    another format version, a broker that does not answer) or a transaction that
    failed inside a rebalance callback is kept in :attr:`failure` and raised by the
    loop (:meth:`raise_failure`), since the clients swallow exceptions raised in their
    rebalance callbacks.
    """

    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        sink: Sink,
        store: StateTopic,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        order: CommitOrder | None = None,
    ) -> None:
        self._settings = settings
        self._processor = processor
        self._sink = sink
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._order = order or commit_order(settings, sink, metrics)
        local_dir = settings.state.local_dir
        self._local = LocalState(local_dir, metrics) if local_dir is not None else None
        self._fingerprint = fingerprint(settings)
        self.source: Committer | None = None  # set once the source exists
        self._covered: dict[TopicPartition, int] = {}  # offset of each task's last checkpoint
        self._written_at: dict[TopicPartition, float] = {}
        self._events = 0
        self._since = clock()
        self._round: deque[TopicPartition] = deque()  # tasks left in a round (scheduled)
        self.restoring = False
        self.unflushed = False  # a batch was processed whose flush has not returned
        self._pending: set[TopicPartition] = set()  # assigned, restore deferred to the loop
        self.failure: BaseException | None = None
        self._aborted = False  # a transaction failed: this process commits nothing more
        metrics.checkpoint_age.set_function(self._oldest_age)

    # -- schedule -------------------------------------------------------------------------

    def processed(self, records: int) -> None:
        self._events += records

    def due(self) -> bool:
        """A round of checkpoints is due, or one is under way."""
        state = self._settings.state
        return (
            bool(self._round)
            or self._events >= state.every_events
            or self._clock() - self._since >= state.interval_s
        )

    def scheduled(self) -> int:
        """The checkpoint :meth:`due` asked for; returns how many tasks it wrote.

        At-least-once: a *round*, one task per call (the loop calls once per turn),
        each committed on its own, so that the loop never stops for every task's
        snapshot at once: with many keys a task's snapshot takes a while, and
        the records arriving meanwhile wait. The round starts the next interval. A
        task with nothing new is passed over in the same call. With an atomic commit
        order (exactly-once) every task goes in one transaction, as
        :attr:`CommitOrder.atomic` requires.
        """
        if self._order.atomic:
            return self.checkpoint()
        if not self._round:
            self._round.extend(tp for tp in self._processor.tasks if tp not in self._pending)
            self._events = 0
            self._since = self._clock()
        while self._round:
            tp = self._round.popleft()
            if tp in self._processor.tasks and tp not in self._pending:
                written = self.checkpoint([tp])
                if written:
                    return written
        return 0

    # -- writing --------------------------------------------------------------------------

    def checkpoint(
        self, partitions: Sequence[TopicPartition] | None = None, commit: bool = True
    ) -> int:
        """Checkpoint ``partitions`` (default: every owned task; every one with
        exactly-once, see :attr:`CommitOrder.atomic`) whose input moved since
        their last checkpoint, then commit what they cover (``commit`` false: not
        through the consumer, see :meth:`CommitOrder.commit`); returns how many.

        Raises:
            BrokerError: the checkpoints could not be made durable.
            TransactionAborted: with exactly-once, the transaction did not commit.
        """
        processor, source = self._processor, self.source
        if source is None:
            raise RuntimeError("Checkpointer.source is not set")
        if self.unflushed:
            # The tasks learned a batch whose outputs the broker never acknowledged
            # (the flush raised): a checkpoint now would cover records without
            # predictions. This process stops; the next restores the previous one.
            log.warning("no checkpoint: the last batch's outputs were not acknowledged")
            return 0
        if self._aborted:
            log.warning("no checkpoint: a transaction failed, this process is stopping")
            return 0
        started = self._clock()
        positions = processor.positions
        every = partitions is None or self._order.atomic
        chosen = [tp for tp in processor.tasks if tp not in self._pending] if every else partitions
        covered: dict[TopicPartition, int] = {}
        blobs: dict[TopicPartition, bytes] = {}
        for tp in chosen or ():
            task = processor.tasks.get(tp)
            offset = positions.get(tp)
            if task is None or offset is None or self._covered.get(tp) == offset:
                continue
            blob = encode(
                task.state(),
                topic=tp[0],
                partition=tp[1],
                offset=offset,
                keys=task.active_series,
                pending=task.pending_predictions,
                features=processor.features or (),
                settings_fingerprint=self._fingerprint,
            )
            self._store.write(tp, blob, time.time_ns() // 1_000_000, offset)
            self._metrics.checkpoint_bytes.observe(len(blob))
            covered[tp] = offset
            blobs[tp] = blob
        if partitions is None:
            self._events = 0
            self._since = started
        if not covered:
            return 0
        try:
            self._order.commit(covered, source, commit)
        except TransactionAborted:
            self._aborted = True
            raise
        if self._local is not None:
            for tp, blob in blobs.items():
                self._local.save(tp, blob)
        self._covered.update(covered)
        now = self._clock()
        self._written_at.update(dict.fromkeys(covered, now))
        self._metrics.checkpoint_seconds.observe(now - started)
        return len(covered)

    def _oldest_age(self) -> float:
        owned = list(self._processor.tasks)
        if not owned:
            return 0.0
        now = self._clock()
        return max(now - self._written_at.get(tp, self._since) for tp in owned)

    # -- restoring ------------------------------------------------------------------------

    def restore(self, partitions: Sequence[TopicPartition]) -> None:
        """Restore each of ``partitions`` from its newest checkpoint (that the commit
        order accepts), and seek to the offset it covers."""
        if self.source is None:
            raise RuntimeError("Checkpointer.source is not set")
        seeks: dict[TopicPartition, int] = {}
        for tp in partitions:
            started = self._clock()
            found = self._find(tp, self._order.restorable(self.source, tp))
            if found is None:
                self._metrics.restores.labels("none").inc()
                continue
            header, state, size, where = found
            features = self._processor.features
            if header.fingerprint != self._fingerprint or (
                features is not None and tuple(header.features) != features
            ):
                self._metrics.restores.labels("retrained").inc()
                log.warning(
                    "partition %s:%d: the checkpoint at input offset %d was made with other "
                    "model, forecast or feature settings; its state does not fit these "
                    "models, so they start cold from that offset",
                    *tp,
                    header.offset,
                )
            else:
                self._processor.restore(tp, header.features, state)
                self._metrics.restores.labels("restored").inc()
                self._metrics.restore_sources.labels(where).inc()
                log.info(
                    "partition %s:%d: restored %d keys, %d pending predictions from a %d-byte "
                    "checkpoint at input offset %d (%s) in %.2fs",
                    *tp,
                    header.keys,
                    header.pending,
                    size,
                    header.offset,
                    "state.local_dir" if where == "local" else "state topic",
                    self._clock() - started,
                )
            seeks[tp] = header.offset
            self._covered[tp] = header.offset
            self._written_at[tp] = self._clock()
            self._processor.positions = {**self._processor.positions, tp: header.offset}
            self._metrics.restore_seconds.observe(self._clock() - started)
        if seeks:
            self.source.seek(seeks)

    def _find(
        self, tp: TopicPartition, accept: Callable[[int], bool] | None
    ) -> tuple[Header, dict[str, Any], int, str] | None:
        """(header, state, bytes, where: ``local`` or ``changelog``) of the checkpoint
        to restore ``tp`` from, or None (logged) if there is none.

        The local copy (``state.local_dir``) is used when it is readable, accepted, and
        covers at least the offset of the newest checkpoint in the state topic (its
        last records tell, without reading the checkpoint): a local file is only ever
        written after its checkpoint was durable in the topic, so it is then that
        checkpoint (or, with the topic's newest one half-written, a newer one than
        the topic's newest complete one). Otherwise, or when the topic has no
        checkpoint of ``tp`` at all (deleted to start cold on purpose), the topic
        decides.
        """
        local = self._local.load(tp) if self._local is not None else None
        if local is not None and self._local is not None:
            newest = self._store.newest_offset(tp)
            offset = local.header.offset
            if accept is not None and not accept(offset):
                log.info("partition %s:%d: local checkpoint at %d not committed", *tp, offset)
            elif newest is None or offset < newest:
                log.info(
                    "partition %s:%d: the local checkpoint at %d is older than the state "
                    "topic's (%s): reading the topic",
                    *tp,
                    offset,
                    "none there" if newest is None else newest,
                )
            else:
                try:
                    return local.header, local.decode(), len(local.blob), "local"
                except SnapshotFormatError as exc:
                    self._local.reject(local, str(exc))
        stored = self._store.newest(tp, accept)
        if stored is None:
            if isinstance(accept, CoversCommitted) and accept.committed is not None:
                log.warning(
                    "partition %s:%d: no checkpoint covers the group's committed offset %d "
                    "(kafka.exactly_once: those there belong to aborted transactions or to "
                    "at-least-once history): starting cold from that offset",
                    *tp,
                    accept.committed,
                )
            else:
                log.info("partition %s:%d: no checkpoint yet, starting cold", *tp)
            return None
        header, state = decode(stored.blob)
        return header, state, len(stored.blob), "changelog"

    def raise_failure(self) -> None:
        """Raise the error a rebalance callback kept, if any."""
        failure, self.failure = self.failure, None
        if failure is not None:
            raise failure

    def close(self) -> None:
        self._store.close()

    # -- the rebalance listener -----------------------------------------------------------

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        """Build the tasks; restore them here if the source's callbacks may block,
        else pause the partitions and leave the restore to :meth:`after_poll`."""
        self._processor.on_assigned(partitions)
        if not partitions or self.source is None:
            return
        if not self.source.callbacks_may_block:
            self._pending.update(partitions)
            self.restoring = True
            self.source.pause(partitions)
            return
        self.restoring = True
        try:
            self.restore(partitions)
        except Exception as exc:
            self.failure = exc
            log.error("restoring %s failed: %s", list(partitions), exc)
        finally:
            self.restoring = False

    def after_poll(self, records: list[RawRecord]) -> list[RawRecord]:
        """In the loop's thread after each poll: raise a kept failure, run deferred
        restores (seek, resume), and drop records of just-restored partitions (they
        are fetched again from the checkpoint's offset)."""
        self.raise_failure()
        if records:
            self.unflushed = True  # the tasks are about to learn them
        if not self._pending:
            return records
        pending = sorted(tp for tp in self._pending if tp in self._processor.owned)
        self._pending.clear()
        try:
            self.restore(pending)
        finally:
            self.restoring = False
        if self.source is not None:
            self.source.resume(pending)
        moved = set(pending)
        return [r for r in records if (r.topic, r.partition) not in moved]

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Checkpoint the revoked tasks before they are dropped. An error is logged,
        not raised: a rebalance must go on (the next owner then restores the previous
        checkpoint and re-reads from its offset). With exactly-once the error is also
        kept for the loop to raise as :class:`TransactionAborted`: this process must
        restart (module docstring, :attr:`CommitOrder.atomic`)."""
        blocking = self.source is not None and self.source.callbacks_may_block
        try:
            self.checkpoint([tp for tp in partitions if tp not in self._pending], blocking)
        except Exception as exc:  # e.g. lost partitions: another member owns them
            if self._order.atomic:  # see CommitOrder.atomic
                self._aborted = True
                self.failure = (
                    exc
                    if isinstance(exc, TransactionAborted)
                    else TransactionAborted(
                        f"no checkpoint of revoked partitions ({exc}); exiting so that a "
                        "restart restores every partition from its last committed checkpoint"
                    )
                )
                log.error("no checkpoint of revoked %s: %s", list(partitions), exc)
            else:
                log.warning("no checkpoint of revoked %s: %s", list(partitions), exc)
        for tp in partitions:
            self._covered.pop(tp, None)
            self._written_at.pop(tp, None)
            self._pending.discard(tp)
        self._processor.on_revoked(partitions)
