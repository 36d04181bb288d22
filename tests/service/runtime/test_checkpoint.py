"""The checkpoint order and the restore path, with an in-memory state store.

The broker-backed store is exercised by tests/integration/test_state.py; here the
order (offsets committed only with a checkpoint, up to what it covers) and the
restore decisions (seek, drop, resume; refuse another version; retrain on other
settings) are checked one by one.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.errors import BrokerError
from service.io.sinks import ListSink
from service.io.sources import TopicPartition
from service.pipeline.processor import Processor
from service.records import RawRecord
from service.runtime.checkpoint import Checkpointer, TransactionAborted, complete_batch
from service.runtime.metrics import Metrics
from service.runtime.snapshot import FORMAT_VERSION, SnapshotFormatError, read_header
from service.runtime.state import Stored

SETTINGS = Settings.model_validate(
    {
        "forecast": {"window": 8, "lags": 4},
        "models": [{"name": "lin", "kind": "river.linear", "primary": True}],
        "state": {"interval_s": 60, "every_events": 100},
    }
)
TP = ("ticks", 0)


class Store:
    """Keeps every checkpoint written per partition; ``blobs``: the newest of each."""

    def __init__(self) -> None:
        self.blobs: dict[TopicPartition, bytes] = {}
        self.history: dict[TopicPartition, list[bytes]] = {}
        self.reads = 0
        self.refuse: Exception | None = None

    def write(self, tp: TopicPartition, blob: bytes, created_ms: int, covers: int) -> int:
        if self.refuse is not None:
            raise self.refuse
        assert read_header(blob).offset == covers
        self.blobs[tp] = blob
        self.history.setdefault(tp, []).append(blob)
        return 1

    def newest(
        self, tp: TopicPartition, accept: Callable[[int], bool] | None = None
    ) -> Stored | None:
        self.reads += 1
        candidates = [self.blobs[tp]] if tp in self.blobs else []
        candidates += reversed(self.history.get(tp, []))
        for blob in candidates:
            if accept is None or accept(read_header(blob).offset):
                return Stored(blob, 1, 0, 0, 1)
        return None

    def newest_offset(self, tp: TopicPartition) -> int | None:
        blob = self.blobs.get(tp)
        return None if blob is None else read_header(blob).offset

    def close(self) -> None:
        """Nothing to close."""


class Source:
    callbacks_may_block = False

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.committed: dict[TopicPartition, int] = {}

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        self.committed.update(offsets)

    def group_metadata(self) -> str:
        return "group"

    def committed_offset(self, tp: TopicPartition) -> int | None:
        return self.committed.get(tp)

    def seek(self, positions: Mapping[TopicPartition, int]) -> None:
        self.seeks.update(positions)

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self.paused.update(partitions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self.paused.difference_update(partitions)


def _records(start: int, count: int) -> list[RawRecord]:
    return [
        RawRecord(
            *TP,
            offset,
            b"k",
            orjson.dumps({"key": "k", "ts": 1_700_000_000_000 + offset * 1000, "y": offset % 7}),
            (),
            None,
        )
        for offset in range(start, start + count)
    ]


SinkT = TypeVar("SinkT", bound=ListSink)


def _wired(
    store: Store, settings: Settings, sink: SinkT
) -> tuple[Processor, Checkpointer, Source, SinkT, Metrics]:
    metrics = Metrics(CollectorRegistry(), settings)
    processor = Processor(settings, sink, metrics)
    state = Checkpointer(settings, processor, sink, store, metrics)  # type: ignore[arg-type]
    source = Source()
    state.source = source
    return processor, state, source, sink, metrics


def _daemon(
    store: Store, settings: Settings = SETTINGS
) -> tuple[Processor, Checkpointer, Source, ListSink, Metrics]:
    return _wired(store, settings, ListSink())


def _batch(
    processor: Processor, state: Checkpointer, source: Any, records: list[RawRecord]
) -> None:
    result = processor.process(records)
    sink, metrics = processor._sink, processor._metrics
    complete_batch(result, sink, source, processor, metrics, state, len(records))


def test_offsets_are_committed_only_with_a_checkpoint_up_to_what_it_covers() -> None:
    store = Store()
    processor, state, source, _, _ = _daemon(store)
    state.on_assigned([TP])
    assert state.after_poll([]) == []
    _batch(processor, state, source, _records(0, 60))
    assert source.commits == []  # 60 < every_events, and the interval has not passed
    assert TP not in store.blobs
    _batch(processor, state, source, _records(60, 60))
    assert source.commits == [{TP: 120}]
    assert TP in store.blobs


def test_a_due_checkpoint_writes_one_task_per_turn_each_committed_on_its_own() -> None:
    """At-least-once: a round, so that the loop never stops for every task at once;
    a task with nothing new is passed over; the round starts the next interval."""
    store = Store()
    processor, state, source, _, _ = _daemon(store)
    tps = [TP, (TP[0], 1), (TP[0], 2)]
    state.on_assigned(tps)
    state.after_poll([])
    moved = _records(0, 60) + [r._replace(partition=1) for r in _records(0, 60)]
    _batch(processor, state, source, moved)  # 120 >= every_events: due, first of the round
    assert source.commits == [{TP: 60}]
    assert state.due()  # the round goes on, whatever the schedule says
    assert state.scheduled() == 1
    assert source.commits == [{TP: 60}, {tps[1]: 60}]
    assert sorted(store.blobs) == tps[:2]  # partition 2 had nothing new
    assert state.scheduled() == 0
    assert not state.due()  # the round is over and the interval starts from it


def test_an_assigned_partition_is_restored_sought_and_resumed_before_its_records() -> None:
    store = Store()
    processor, state, source, _, _ = _daemon(store)
    state.on_assigned([TP])
    state.after_poll([])
    _batch(processor, state, source, _records(0, 120))
    learned = processor.tasks[TP].state()["models"][0]["model"].updates

    again, state2, source2, _, metrics = _daemon(store)
    state2.on_assigned([TP])
    assert source2.paused == {TP}
    restoring = [state2.restoring]
    kept = state2.after_poll(_records(120, 5) + [r._replace(partition=1) for r in _records(0, 1)])
    assert [r.partition for r in kept] == [1]  # the restored partition's are fetched again
    assert source2.seeks == {TP: 120}
    assert source2.paused == set()
    restoring.append(state2.restoring)
    assert restoring == [True, False]  # /readyz is 503 in between
    assert again.tasks[TP].state()["models"][0]["model"].updates == learned
    assert metrics.restores.labels("restored")._value.get() == 1


def test_a_checkpoint_of_another_version_stops_the_loop_with_a_clear_error() -> None:
    store = Store()
    processor, state, source, _, _ = _daemon(store)
    state.on_assigned([TP])
    state.after_poll([])
    _batch(processor, state, source, _records(0, 120))
    blob = bytearray(store.blobs[TP])
    struct.pack_into(">H", blob, 4, FORMAT_VERSION + 1)
    store.blobs[TP] = bytes(blob)

    _, state2, source2, _, _ = _daemon(store)
    state2.on_assigned([TP])
    with pytest.raises(SnapshotFormatError, match="format version"):
        state2.after_poll(_records(120, 5))
    assert source2.seeks == {}


def test_a_checkpoint_of_other_models_is_not_loaded_but_its_offset_holds() -> None:
    store = Store()
    processor, state, source, _, _ = _daemon(store)
    state.on_assigned([TP])
    state.after_poll([])
    _batch(processor, state, source, _records(0, 120))

    other = SETTINGS.model_copy(
        update={"models": (SETTINGS.models[0].model_copy(update={"params": {"lr": 0.5}}),)}
    )
    again, state2, source2, _, metrics = _daemon(store, other)
    state2.on_assigned([TP])
    state2.after_poll([])
    assert source2.seeks == {TP: 120}  # those records were predicted already
    assert metrics.restores.labels("retrained")._value.get() == 1
    again.process(_records(120, 10))
    assert again.tasks[TP].state()["models"][0]["model"].updates < 10  # cold


# -- exactly-once ------------------------------------------------------------------------

TP1 = ("ticks", 1)
EXACTLY_ONCE = SETTINGS.model_copy(
    update={"kafka": SETTINGS.kafka.model_copy(update={"exactly_once": True})}
)


class TransactionalSink(ListSink):
    """Records become visible (``records``) only when a transaction commits."""

    def __init__(self) -> None:
        super().__init__()
        self.commits: list[tuple[dict[TopicPartition, int], Any]] = []
        self.refuse: Exception | None = None

    def flush(self) -> None:
        """Acknowledged inside the transaction: still invisible."""

    def commit(self, offsets: Mapping[TopicPartition, int], group: Any) -> None:
        if self.refuse is not None:
            self._buffer.clear()
            raise self.refuse
        self.commits.append((dict(offsets), group))
        super().flush()


def _exactly_once(
    store: Store, settings: Settings = EXACTLY_ONCE
) -> tuple[Processor, Checkpointer, Source, TransactionalSink, Metrics]:
    return _wired(store, settings, TransactionalSink())


def test_exactly_once_makes_outputs_visible_with_their_checkpoint_and_offsets() -> None:
    store = Store()
    processor, state, source, sink, _ = _exactly_once(store)
    state.on_assigned([TP])
    state.after_poll([])
    _batch(processor, state, source, _records(0, 60))
    assert sink.records == []  # acknowledged, not committed: invisible
    _batch(processor, state, source, _records(60, 60))
    assert sink.commits == [({TP: 120}, "group")]  # with the consumer's group metadata
    assert len(sink.on(SETTINGS.kafka.output_topic)) == 120
    assert read_header(store.blobs[TP]).offset == 120
    assert source.commits == []  # the consumer commits nothing itself


def test_exactly_once_revocation_commits_every_task_with_outputs() -> None:
    """The transaction holds every partition's outputs: revoking one checkpoints all,
    also from a callback that must not wait on the consumer (kafka-python's)."""
    store = Store()
    processor, state, source, sink, _ = _exactly_once(store)
    state.on_assigned([TP, TP1])
    state.after_poll([])
    both = _records(0, 30) + [r._replace(partition=1) for r in _records(0, 20)]
    _batch(processor, state, source, both)
    state.on_revoked([TP1])
    assert sink.commits == [({TP: 30, TP1: 20}, "group")]
    assert set(store.blobs) == {TP, TP1}
    assert list(processor.tasks) == [TP]


def test_a_transaction_that_fails_in_a_rebalance_stops_the_loop() -> None:
    store = Store()
    processor, state, source, sink, _ = _exactly_once(store)
    state.on_assigned([TP])
    state.after_poll([])
    _batch(processor, state, source, _records(0, 30))
    sink.refuse = BrokerError("producer fenced")
    state.on_revoked([TP])  # a rebalance callback: the clients swallow what it raises
    with pytest.raises(TransactionAborted, match="restores every partition"):
        state.after_poll([])
    assert sink.records == []


def test_any_failed_revocation_checkpoint_stops_the_loop_and_nothing_commits_after() -> None:
    """The open transaction holds the revoked partitions' outputs: if their checkpoint
    fails, that transaction must never commit (their new owner re-reads them)."""
    store = Store()
    processor, state, source, sink, _ = _exactly_once(store)
    state.on_assigned([TP, TP1])
    state.after_poll([])
    _batch(processor, state, source, _records(0, 30))
    store.refuse = BrokerError("cannot send to the state topic")
    state.on_revoked([TP1])
    with pytest.raises(TransactionAborted, match="cannot send to the state topic"):
        state.after_poll([])
    store.refuse = None
    _batch(processor, state, source, _records(30, 100))  # due, yet
    assert state.checkpoint() == 0
    assert sink.commits == []


def test_exactly_once_restores_only_the_checkpoint_that_covers_the_committed_offset() -> None:
    """A newer checkpoint whose transaction was aborted (its offsets never committed)
    is passed over for the committed one; with no committed offset, none is restored."""
    store = Store()
    processor, state, source, sink, _ = _exactly_once(store)
    state.on_assigned([TP])
    state.after_poll([])
    _batch(processor, state, source, _records(0, 120))
    committed = sink.commits[-1][0]
    sink.refuse = BrokerError("aborted")
    with pytest.raises(TransactionAborted):
        _batch(processor, state, source, _records(120, 120))
    assert read_header(store.blobs[TP]).offset == 240  # in the log, uncommitted

    _, state2, source2, _, metrics = _exactly_once(store)
    source2.committed = committed
    state2.on_assigned([TP])
    state2.after_poll([])
    assert source2.seeks == {TP: 120}
    assert metrics.restores.labels("restored")._value.get() == 1

    _, state3, source3, _, metrics3 = _exactly_once(store)  # the group committed nothing
    state3.on_assigned([TP])
    state3.after_poll([])
    assert source3.seeks == {}
    assert metrics3.restores.labels("none")._value.get() == 1


# -- state.local_dir ---------------------------------------------------------------------


def _local(tmp_path: Path, settings: Settings = SETTINGS) -> Settings:
    return settings.model_copy(
        update={"state": settings.state.model_copy(update={"local_dir": str(tmp_path)})}
    )


def test_a_restart_restores_from_the_local_copy_without_reading_the_topic(
    tmp_path: Path,
) -> None:
    store = Store()
    settings = _local(tmp_path)
    processor, state, source, _, _ = _daemon(store, settings)
    state.on_assigned([TP])
    state.after_poll([])
    _batch(processor, state, source, _records(0, 120))
    learned = processor.tasks[TP].state()["models"][0]["model"].updates
    assert (tmp_path / "ticks-0.ckpt").read_bytes() == store.blobs[TP]
    assert [p.name for p in tmp_path.iterdir()] == ["ticks-0.ckpt"]  # no temporary left
    store.reads = 0

    again, state2, source2, _, metrics = _daemon(store, settings)
    state2.on_assigned([TP])
    state2.after_poll([])
    assert store.reads == 0  # the topic's checkpoint was not read
    assert metrics.restore_sources.labels("local")._value.get() == 1
    assert metrics.restore_sources.labels("changelog")._value.get() == 0
    assert source2.seeks == {TP: 120}
    assert again.tasks[TP].state()["models"][0]["model"].updates == learned


def test_an_older_local_copy_gives_way_to_the_topics_newer_checkpoint(tmp_path: Path) -> None:
    store = Store()
    processor, state, source, _, _ = _daemon(store, _local(tmp_path))
    state.on_assigned([TP])
    state.after_poll([])
    _batch(processor, state, source, _records(0, 120))
    # another replica owned the partition meanwhile, on another volume
    other, state2, source2, _, _ = _daemon(store)
    state2.on_assigned([TP])
    state2.after_poll([])
    _batch(other, state2, source2, _records(120, 120))

    _, state3, source3, _, metrics = _daemon(store, _local(tmp_path))
    state3.on_assigned([TP])
    state3.after_poll([])
    assert source3.seeks == {TP: 240}
    assert metrics.restore_sources.labels("changelog")._value.get() == 1
    assert metrics.local_state_errors.labels("read")._value.get() == 0  # older is no error


@pytest.mark.parametrize(
    "damage", ["truncated", "other version", "not a checkpoint", "other partition"]
)
def test_an_unusable_local_file_is_reported_and_the_topic_used(tmp_path: Path, damage: str) -> None:
    store = Store()
    settings = _local(tmp_path)
    processor, state, source, _, _ = _daemon(store, settings)
    state.on_assigned([TP])
    state.after_poll([])
    _batch(processor, state, source, _records(0, 120))
    path = tmp_path / "ticks-0.ckpt"
    blob = bytearray(path.read_bytes())
    if damage == "truncated":
        del blob[-100:]
    elif damage == "other version":
        struct.pack_into(">H", blob, 4, FORMAT_VERSION + 1)
    elif damage == "not a checkpoint":
        blob[:4] = b"JUNK"
    else:
        path.rename(tmp_path / "ticks-1.ckpt")
        path = tmp_path / "ticks-1.ckpt"
        store.blobs[TP1] = store.blobs[TP]  # the topic has one for ticks:1 too
    path.write_bytes(bytes(blob))
    where = TP1 if damage == "other partition" else TP

    _, state2, source2, _, metrics = _daemon(store, settings)
    state2.on_assigned([where])
    state2.after_poll([])  # no exception: the topic's checkpoint is used
    assert metrics.local_state_errors.labels("read")._value.get() == 1
    assert metrics.restore_sources.labels("changelog")._value.get() == 1
    assert source2.seeks == {where: 120}


def test_without_a_checkpoint_in_the_topic_the_local_copy_is_not_used(tmp_path: Path) -> None:
    """Deleting the state topic is how an operator starts cold on purpose."""
    store = Store()
    settings = _local(tmp_path)
    processor, state, source, _, _ = _daemon(store, settings)
    state.on_assigned([TP])
    state.after_poll([])
    _batch(processor, state, source, _records(0, 120))

    _, state2, source2, _, metrics = _daemon(Store(), settings)
    state2.on_assigned([TP])
    state2.after_poll([])
    assert source2.seeks == {}
    assert metrics.restores.labels("none")._value.get() == 1


def test_a_local_copy_that_cannot_be_written_is_counted_and_processing_goes_on(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    store = Store()
    processor, state, source, _, metrics = _daemon(store, _local(blocked))
    state.on_assigned([TP])
    state.after_poll([])
    _batch(processor, state, source, _records(0, 120))
    assert metrics.local_state_errors.labels("write")._value.get() == 1
    assert source.commits == [{TP: 120}]  # the topic's checkpoint and the commit stand
