"""Replay's encoding: whatever unit a file's time column is in, the decoder reads back
the same instants."""

from __future__ import annotations

import pandas as pd
import pytest
from kafka.partitioner.default import murmur2

from service.config import SchemaSettings
from service.io.decode import Decoder
from service.records import Event, RawRecord
from service.tools import replay

SCHEMA = SchemaSettings()


def _read_back(times: pd.Series) -> list[int]:
    frame = pd.DataFrame({"key": "k", "ts": times, "y": 1.0})
    pairs = replay.encode(frame, replay.Columns(time="ts"), SCHEMA)
    decoder = Decoder(SCHEMA)
    events = [decoder.decode(RawRecord("t", 0, i, k, v)) for i, (k, v) in enumerate(pairs)]
    assert all(isinstance(e, Event) for e in events), events
    return [e.ts_ms for e in events if isinstance(e, Event)]


@pytest.mark.parametrize("per_ms", [1e-3, 1, 1_000, 1_000_000], ids=["s", "ms", "us", "ns"])
def test_a_numeric_time_column_in_any_epoch_unit_reads_back(per_ms: float) -> None:
    near = [-371_174_400_000, 1_700_000_000_000]  # ns fits int64 only for 1678-2262
    times = pd.Series([int(ms * per_ms) for ms in near], dtype="int64")
    assert _read_back(times) == near


def test_instants_whose_milliseconds_read_as_seconds_go_as_iso_strings() -> None:
    instants = [-86_400_000, 0, 86_400_000, 1_700_000_000_123]  # 1969-70, then now
    assert _read_back(pd.Series(instants, dtype="int64")) == instants


def test_a_datetime_column_reads_back() -> None:
    texts = ["1958-03-29T00:00:00", "2023-11-14T22:13:20.123"]
    stamps = pd.Series(pd.to_datetime(texts, utc=True, format="ISO8601"))
    assert _read_back(stamps) == [-371_174_400_000, 1_700_000_000_123]


def test_offline_records_go_to_the_partition_a_keyed_produce_would() -> None:
    """Keys with a common prefix spread over a power-of-two partition count (a hash of
    the key's first bytes put every ``key-N`` in one partition of 16), each in the
    partition kafka-python's default partitioner picks, with offsets from 0 in each."""
    keys = [f"key-{i}".encode() for i in range(20)]
    pairs = [(key, b"{}") for key in keys * 3]
    records = replay.as_records(pairs, "t", partitions=16)
    expected: dict[bytes | None, int] = {key: (murmur2(key) & 0x7FFFFFFF) % 16 for key in keys}
    assert all(r.partition == expected[r.key] for r in records)
    assert len(set(expected.values())) >= 8
    for partition in set(expected.values()):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets)))
    assert {r.partition for r in replay.as_records(pairs, "t")} == {0}
