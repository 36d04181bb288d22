"""Replay's encoding: whatever unit a file's time column is in, the decoder reads back
the same instants."""

from __future__ import annotations

import pandas as pd
import pytest

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
