"""Replay's encoding: whatever unit a file's time column is in, the decoder reads back
the same instants."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pandas as pd
import pytest
from kafka.partitioner.default import murmur2

from service.config import SchemaSettings
from service.errors import DatasetError
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


def test_bad_cells_cost_their_rows_only_each_with_the_decoders_reason() -> None:
    """A file is sent as it says, and the daemon judges each row as it judges any
    record: an empty key, target or time, a target or time that is text, and an
    unreadable feature dead-letter (or leave out) that row's cell, never the file."""
    frame = pd.DataFrame(
        {
            "key": ["a", None, "a", "a", "a", "a", "b"],
            "ts": ["2024-01-01", "2024-01-02", "not a date", None, "2024-01-05", "2024-01-06", "7"],
            "y": ["1", "2", "3", "4", "n/a", None, "2.5"],
            "f": ["0.5", "1", "2", "3", "4", "5", "high"],
        }
    )
    columns = replay.Columns(time="ts", features=("f",))
    pairs = replay.encode(frame, columns, SCHEMA)
    decoder = Decoder(SCHEMA)
    outcomes = [decoder.decode(RawRecord("t", 0, i, k, v)) for i, (k, v) in enumerate(pairs)]
    reasons = [getattr(o, "reason", "event") for o in outcomes]
    assert reasons == [
        "event",
        "missing_key",
        "bad_time",
        "bad_time",
        "bad_target",
        "bad_target",
        "bad_time",  # "7" is no ISO-8601 time, in a column of dates
    ]
    assert pairs[0][1] == b'{"key":"a","y":1.0,"ts":1704067200000,"x":{"f":0.5}}'
    assert pairs[6][1] == b'{"key":"b","y":2.5,"ts":"7","x":{"f":"high"}}'


def test_a_column_of_epoch_numbers_with_a_bad_cell_loses_that_row_only(tmp_path: Path) -> None:
    """pandas reads such a column as text; read as dates, every time was lost (each
    row sent its number as text, which the decoder refuses: the whole file
    dead-lettered as ``bad_time``)."""
    path = tmp_path / "epochs.csv"
    path.write_text("key,ts,y\na,1700000000,1\na,1700000060,2\na,soon,3\na,1700000120,4\n")
    assert _read_back(replay.read_frame(path)["ts"][[0, 1, 3]].reset_index(drop=True)) == [
        1_700_000_000_000,
        1_700_000_060_000,
        1_700_000_120_000,
    ]
    pairs = replay.encode(replay.read_frame(path), replay.Columns(), SCHEMA)
    decoder = Decoder(SCHEMA)
    outcomes = [decoder.decode(RawRecord("t", 0, i, k, v)) for i, (k, v) in enumerate(pairs)]
    assert [getattr(o, "reason", "event") for o in outcomes] == [
        "event",
        "event",
        "bad_time",
        "event",
    ]


def test_a_numeric_key_column_with_a_hole_keeps_its_keys_whole() -> None:
    frame = pd.DataFrame({"key": [7, None, 12], "ts": [1, 2, 3], "y": [1.0, 2.0, 3.0]})
    pairs = replay.encode(frame, replay.Columns(), SCHEMA)
    assert [key for key, _ in pairs] == [b"7", b"", b"12"]


def test_a_file_without_a_key_column_is_one_series_when_asked() -> None:
    frame = pd.DataFrame({"y": [1.0, 2.0]})
    with pytest.raises(DatasetError, match="--key-col '' reads the file as one series"):
        replay.encode(frame, replay.Columns(time=None), SCHEMA)
    pairs = replay.encode(frame, replay.Columns(key=None, time=None, series="load"), SCHEMA)
    assert pairs == [(b"load", b'{"key":"load","y":1.0}'), (b"load", b'{"key":"load","y":2.0}')]


def test_older_rows_counts_what_the_daemon_would_call_out_of_order() -> None:
    frame = pd.DataFrame(
        {
            "key": ["a", "b", "a", "a", "b", "a"],
            "ts": ["2020-01-03", "2020-01-01", "2020-01-02", "soon", "2020-01-01", "2020-01-02"],
            "y": range(6),
        }
    )
    # a: 3rd, then 2nd (older), an unreadable time (bad_time: neither side), 2nd (older);
    # b: the same time twice is not older
    assert replay.older_rows(frame, replay.Columns()) == 2
    assert replay.older_rows(frame, replay.Columns(key=None)) == 4  # one series
    assert replay.older_rows(frame, replay.Columns(time=None)) == 0


def test_in_time_order_is_stable_and_puts_unreadable_times_last() -> None:
    frame = pd.DataFrame(
        {"key": ["a", "b", "a", "c"], "ts": [3000, 1000, "x", 1000], "y": [1.0, 2.0, 3.0, 4.0]}
    )
    ordered = replay.in_time_order(frame, replay.Columns())
    assert ordered["y"].tolist() == [2.0, 4.0, 1.0, 3.0]
    assert replay.older_rows(ordered, replay.Columns()) == 0
    assert replay.in_time_order(frame, replay.Columns(time=None)) is frame


@pytest.mark.parametrize(
    ("text", "columns"),
    [
        ("key;ts;y\na;1;2,5\n", ["key", "ts", "y"]),  # semicolons, decimal commas as text
        ("key\tts\ty\na\t1\t2\n", ["key", "ts", "y"]),
        ("key,ts,y\na;b,1,2\n", ["key", "ts", "y"]),  # a comma header decides
        ("y\n1\n2\n", ["y"]),
    ],
)
def test_a_file_is_read_with_the_delimiter_its_header_uses(
    text: str, columns: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "data.csv"
    path.write_text(text)
    assert replay.read_frame(path).columns.tolist() == columns


def test_a_compressed_file_is_read_as_comma_separated(tmp_path: Path) -> None:
    path = tmp_path / "data.csv.gz"
    path.write_bytes(gzip.compress(b"key,ts,y\na,1,2\n"))
    assert replay.read_frame(path).columns.tolist() == ["key", "ts", "y"]


def test_a_saved_index_is_no_feature_unless_listed(tmp_path: Path) -> None:
    path = tmp_path / "saved.csv"
    pd.DataFrame({"key": ["a", "a"], "ts": [1, 2], "y": [1.0, 2.0], "temp": [5, 6]}).to_csv(path)
    frame = replay.read_frame(path)
    assert "Unnamed: 0" in frame
    pairs = replay.encode(frame, replay.Columns(), SCHEMA)
    assert orjson.loads(pairs[1][1])["x"] == {"temp": 6.0}
    listed = replay.encode(frame, replay.Columns(features=("Unnamed: 0", "temp")), SCHEMA)
    assert orjson.loads(listed[1][1])["x"] == {"Unnamed: 0": 1.0, "temp": 6.0}


def test_a_flat_schema_sends_the_features_beside_the_target() -> None:
    frame = pd.DataFrame({"key": ["a"], "ts": [2_000_000_000], "y": [1.0], "temp": [5.0]})
    flat = SchemaSettings(features_field="")
    pairs = replay.encode(frame, replay.Columns(), flat)
    assert orjson.loads(pairs[0][1]) == {"key": "a", "y": 1.0, "ts": 2_000_000_000_000, "temp": 5.0}
    clash = frame.assign(ts2=frame["ts"]).rename(columns={"ts": "when", "ts2": "ts"})
    with pytest.raises(DatasetError, match="have the names of the key, time or target"):
        replay.encode(clash, replay.Columns(time="when"), flat)


def test_a_nested_schema_gets_nested_records_that_decode() -> None:
    frame = pd.DataFrame({"key": ["a"], "ts": [2_000_000_000], "y": [1.5], "temp": [5.0]})
    nested = SchemaSettings(
        key_field="/meta/id",
        time_field="/meta/at",
        target_field="/reading/value",
        features_field="/reading/x",
        features=("temp",),
    )
    pairs = replay.encode(frame, replay.Columns(), nested)
    assert orjson.loads(pairs[0][1]) == {
        "meta": {"id": "a", "at": 2_000_000_000_000},
        "reading": {"value": 1.5, "x": {"temp": 5.0}},
    }
    event = Decoder(nested).decode(RawRecord("t", 0, 0, None, pairs[0][1]))
    assert isinstance(event, Event)
    assert (event.key, event.y, event.x.tolist()) == ("a", 1.5, [5.0])


def test_dates_written_as_digits_go_as_text_in_their_format() -> None:
    """``20240102`` under ``time_format: "%Y%m%d"``: read as epoch seconds it is
    1970-08-23; sent as text, the daemon reads 2 January. A cell not in the format
    (an epoch) is converted as before; a hole stays empty (``bad_time``)."""
    frame = pd.DataFrame({"key": "a", "ts": [20240102, 20240105, None, 1704153600], "y": 1.0})
    pairs = replay.encode(frame, replay.Columns(), SchemaSettings(time_format="%Y%m%d"))
    assert [orjson.loads(v)["ts"] for _, v in pairs] == [
        "20240102",
        "20240105",
        "",
        1_704_153_600_000,
    ]
    decoder = Decoder(SchemaSettings(time_format="%Y%m%d"))
    events = [decoder.decode(RawRecord("t", 0, i, b"a", v)) for i, (_, v) in enumerate(pairs)]
    assert [getattr(e, "ts_ms", None) for e in events] == [
        1_704_153_600_000,
        1_704_412_800_000,
        None,
        1_704_153_600_000,
    ]
    assert replay.older_rows(frame, replay.Columns(), "%Y%m%d") == 1  # the epoch: 2 January
