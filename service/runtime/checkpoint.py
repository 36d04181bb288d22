"""The one place where the order of completing a batch, and of a checkpoint, is written.

For every batch, in this order:

1. **Flush the sink.** Every prediction and dead letter produced from the batch is
   acknowledged by the broker (``acks=all``), or :class:`~service.errors.BrokerError`
   is raised and nothing below happens.
2. **Account** for the acknowledged outputs (latency histogram, produced counters).
3. With ``state.enabled: false``: **commit the input offsets** of the batch. With
   learned state (the default), offsets are committed only by a checkpoint (below),
   when one is due: ``state.interval_s`` passed or ``state.every_events`` records were
   processed since the last.

A checkpoint (:class:`Checkpointer`), in this order:

1. **Snapshot** every owned task whose input moved since its last checkpoint
   (:mod:`service.runtime.snapshot`), recording the offset it covers: the next input offset,
   every record below it learned, none at or above it.
2. **Send** the snapshots to the state topic (:mod:`service.runtime.state`) and **flush**: the
   checkpoint is durable, after the predictions it covers (flushed in step 1 above).
3. **Commit** each task's covered offset. (A transactional mode, putting steps 2 and 3
   and the outputs since the previous checkpoint in one transaction, is not built
   yet: README "Learned state".)

So the committed offsets never run ahead of a durable checkpoint, as in Kafka Streams.
On assignment a task is restored from its newest checkpoint and the consumer seeks to
the checkpoint's covered offset (not the committed one, which may lag it if the process
died between steps 2 and 3): the records from there are read again, were not learned
by the restored state, so nothing is learned twice, and their predictions carry the
same ``source`` as any published before the crash (at-least-once: consumers
de-duplicate on ``source``). A task without a checkpoint starts cold from the committed offset.

Checkpoints are also written for the partitions revoked in a rebalance (before they
are given up) and for every task at shutdown (SIGTERM).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from service.config import Settings
from service.errors import BrokerError
from service.io.sinks import Sink
from service.io.sources import Source, TopicPartition
from service.pipeline.processor import BatchResult, Processor
from service.records import RawRecord
from service.runtime.metrics import Metrics
from service.runtime.snapshot import decode, encode, fingerprint
from service.runtime.state import StateTopic

log = logging.getLogger(__name__)


class Committer(Protocol):
    """What checkpoints need of a source: commit offsets, move, pause and resume
    partitions, and whether its rebalance callbacks may wait on the broker."""

    callbacks_may_block: bool

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    def seek(self, positions: Mapping[TopicPartition, int]) -> None: ...

    def pause(self, partitions: Sequence[TopicPartition]) -> None: ...

    def resume(self, partitions: Sequence[TopicPartition]) -> None: ...


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
            state.checkpoint()
    elif result.offsets:
        source.commit(result.offsets)
        metrics.commits.inc()


class Checkpointer:
    """Writes the processor's tasks to the state topic, and restores assigned ones.

    Also the source's rebalance listener (it wraps the processor's), so that revoked
    tasks are checkpointed before they are dropped and assigned ones are restored
    before their first record is processed. An error while restoring (a checkpoint of
    another format version, a broker that does not answer) is kept in
    :attr:`failure` and raised by the loop (:meth:`raise_failure`), since the clients
    swallow exceptions raised in their rebalance callbacks.
    """

    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        sink: Sink,
        store: StateTopic,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._processor = processor
        self._sink = sink
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._fingerprint = fingerprint(settings)
        self.source: Committer | None = None  # set once the source exists
        self._covered: dict[TopicPartition, int] = {}  # offset of each task's last checkpoint
        self._written_at: dict[TopicPartition, float] = {}
        self._events = 0
        self._since = clock()
        self.restoring = False
        self.unflushed = False  # a batch was processed whose flush has not returned
        self._pending: set[TopicPartition] = set()  # assigned, restore deferred to the loop
        self.failure: BaseException | None = None
        metrics.checkpoint_age.set_function(self._oldest_age)

    # -- schedule -------------------------------------------------------------------------

    def processed(self, records: int) -> None:
        self._events += records

    def due(self) -> bool:
        state = self._settings.state
        return self._events >= state.every_events or self._clock() - self._since >= state.interval_s

    # -- writing --------------------------------------------------------------------------

    def checkpoint(
        self, partitions: Sequence[TopicPartition] | None = None, commit: bool = True
    ) -> int:
        """Checkpoint ``partitions`` (default: every owned task) whose input moved since
        their last checkpoint, then commit what they cover (unless ``commit`` is
        false: a restore seeks to the checkpoint's offset anyway); returns how many."""
        processor, source = self._processor, self.source
        if source is None:
            raise RuntimeError("Checkpointer.source is not set")
        if self.unflushed:
            # The tasks learned a batch whose outputs the broker never acknowledged
            # (the flush raised): a checkpoint now would cover records without
            # predictions. This process stops; the next restores the previous one.
            log.warning("no checkpoint: the last batch's outputs were not acknowledged")
            return 0
        started = self._clock()
        positions = processor.positions
        chosen = list(processor.tasks) if partitions is None else list(partitions)
        covered: dict[TopicPartition, int] = {}
        for tp in chosen:
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
            self._store.write(tp, blob, time.time_ns() // 1_000_000)
            self._metrics.checkpoint_bytes.observe(len(blob))
            covered[tp] = offset
        if partitions is None:
            self._events = 0
            self._since = started
        if not covered:
            return 0
        self._sink.flush()
        if commit:
            try:
                source.commit(covered)
                self._metrics.commits.inc()
            except BrokerError as exc:
                # The checkpoint is durable and a restore seeks to its offset: the
                # committed offset is only the fallback for partitions without one. A
                # commit refused mid-rebalance is retried with the next checkpoint.
                log.warning("offset commit after a checkpoint failed: %s", exc)
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
        """Restore each of ``partitions`` from its newest checkpoint, and seek to the
        offset it covers."""
        if self.source is None:
            raise RuntimeError("Checkpointer.source is not set")
        seeks: dict[TopicPartition, int] = {}
        for tp in partitions:
            started = self._clock()
            stored = self._store.newest(tp)
            if stored is None:
                self._metrics.restores.labels("none").inc()
                log.info("partition %s:%d: no checkpoint yet, starting cold", *tp)
                continue
            header, state = decode(stored.blob)
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
                log.info(
                    "partition %s:%d: restored %d keys, %d pending predictions from a %d-byte "
                    "checkpoint at input offset %d in %.2fs",
                    *tp,
                    header.keys,
                    header.pending,
                    len(stored.blob),
                    header.offset,
                    self._clock() - started,
                )
            seeks[tp] = header.offset
            self._covered[tp] = header.offset
            self._written_at[tp] = self._clock()
            self._processor.positions = {**self._processor.positions, tp: header.offset}
            self._metrics.restore_seconds.observe(self._clock() - started)
        if seeks:
            self.source.seek(seeks)

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
        """Checkpoint the revoked tasks before they are dropped. Any error is logged,
        not raised: a rebalance must go on (the next owner then restores the previous
        checkpoint and re-reads from its offset)."""
        blocking = self.source is not None and self.source.callbacks_may_block
        try:
            self.checkpoint([tp for tp in partitions if tp not in self._pending], blocking)
        except Exception as exc:  # e.g. lost partitions: another member owns them
            log.warning("no checkpoint of revoked %s: %s", list(partitions), exc)
        for tp in partitions:
            self._covered.pop(tp, None)
            self._written_at.pop(tp, None)
            self._pending.discard(tp)
        self._processor.on_revoked(partitions)
