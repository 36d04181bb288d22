"""The checkpoint order and the restore path, with an in-memory state store.

The broker-backed store is exercised by tests/integration/test_state.py; here the
order (offsets committed only with a checkpoint, up to what it covers) and the
restore decisions (seek, drop, resume; refuse another version; retrain on other
settings) are checked one by one.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.io.sinks import ListSink
from service.io.sources import TopicPartition
from service.pipeline.processor import Processor
from service.records import RawRecord
from service.runtime.checkpoint import Checkpointer, complete_batch
from service.runtime.metrics import Metrics
from service.runtime.snapshot import FORMAT_VERSION, SnapshotFormatError
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
    """Keeps the last checkpoint written per partition."""

    def __init__(self) -> None:
        self.blobs: dict[TopicPartition, bytes] = {}

    def write(self, tp: TopicPartition, blob: bytes, created_ms: int) -> int:
        self.blobs[tp] = blob
        return 1

    def newest(self, tp: TopicPartition) -> Stored | None:
        blob = self.blobs.get(tp)
        return None if blob is None else Stored(blob, 1, 0, 0, 1)

    def close(self) -> None:
        """Nothing to close."""


class Source:
    callbacks_may_block = False

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

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


def _daemon(
    store: Store, settings: Settings = SETTINGS
) -> tuple[Processor, Checkpointer, Source, ListSink, Metrics]:
    metrics = Metrics(CollectorRegistry(), settings)
    sink = ListSink()
    processor = Processor(settings, sink, metrics)
    state = Checkpointer(settings, processor, sink, store, metrics)  # type: ignore[arg-type]
    source = Source()
    state.source = source
    return processor, state, source, sink, metrics


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
