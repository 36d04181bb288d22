"""Decoder: every valid shape parses, every invalid kind gets its own reason."""

from __future__ import annotations

import math
import time
from datetime import datetime

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.config import SchemaSettings
from service.io.decode import Decoder
from service.records import Event, Invalid, RawRecord

SCHEMA = SchemaSettings(features=("temp", "load"), max_message_bytes=256)


def _decode(
    value: bytes | None, key: bytes | None = b"k", timestamp: int | None = 5
) -> Event | Invalid:
    return Decoder(SCHEMA).decode(RawRecord("t", 0, 0, key, value, (), timestamp))


def test_valid_event_with_all_fields() -> None:
    event = _decode(b'{"ts": 1700000000, "y": 2.5, "x": {"temp": 20, "extra": 1}}')
    assert isinstance(event, Event)
    assert (event.key, event.ts_ms, event.y) == ("k", 1_700_000_000_000, 2.5)
    assert event.x[0] == 20.0
    assert math.isnan(event.x[1])


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        (1_700_000_000, 1_700_000_000_000),
        (1_700_000_000.5, 1_700_000_000_500),
        (1_700_000_000_123, 1_700_000_000_123),
        (1_700_000_000_123_456, 1_700_000_000_123),  # microseconds
        (1_700_000_000_123_456_789, 1_700_000_000_123),  # nanoseconds (pandas' Timestamp.value)
        (1.7e18, 1_700_000_000_000),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
        ("2023-11-14T22:13:20", 1_700_000_000_000),
        ("2023", 1_672_531_200_000),  # reduced precision: the year's first instant
        ("2023-11", 1_698_796_800_000),  # the month's
        ("2023-318", 1_699_920_000_000),  # ordinal: 14 November
        ("2023318T22:13:20Z", 1_700_000_000_000),
        ("2024-366", 1_735_603_200_000),  # a leap year's last day
    ],
)
def test_event_time_forms(ts: object, expected_ms: int) -> None:
    event = _decode(orjson.dumps({"ts": ts, "y": 1}))
    assert isinstance(event, Event)
    assert event.ts_ms == expected_ms


@pytest.mark.parametrize(
    ("x", "expected", "ignored"),
    [
        (b'{"temp": 20, "weather": "rain", "flag": true}', [20.0, math.nan], 2),
        (b'{"temp": null, "load": 3, "note": null}', [math.nan, 3.0], 1),
        (b'{"other": NaN, "deep": {"a": [1]}}', [math.nan, math.nan], 2),
    ],
    ids=["categories-beside", "null-is-missing", "unused-nan-and-object"],
)
def test_only_the_features_models_use_are_checked(
    x: bytes, expected: list[float], ignored: int
) -> None:
    """A name nobody reads never costs its record; ``null`` is a missing value."""
    event = _decode(b'{"y": 1, "x": ' + x + b"}")
    assert isinstance(event, Event), event
    np.testing.assert_array_equal(event.x, expected)
    assert event.ignored == ignored


def test_time_falls_back_to_the_record_timestamp_and_key_to_the_field() -> None:
    event = _decode(b'{"key": "AAPL", "y": 1}', key=None, timestamp=42)
    assert isinstance(event, Event)
    assert (event.key, event.ts_ms) == ("AAPL", 42)


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (None, b"k", "empty"),
        (b"", b"k", "empty"),
        (b'{"y": 1, "pad": "' + b"x" * 300 + b'"}', b"k", "oversized"),
        (b"{nope", b"k", "not_json"),
        (b"\xff\xfe", b"k", "not_json"),
        (b"[1]", b"k", "not_object"),
        (b'"text"', b"k", "not_object"),
        (b'{"y": 1}', None, "missing_key"),
        (b'{"key": null, "y": 1}', None, "missing_key"),
        (b'{"key": {"a": 1}, "y": 1}', None, "bad_key"),
        (b'{"key": true, "y": 1}', None, "bad_key"),
        (b'{"key": "", "y": 1}', None, "bad_key"),
        (b'{"y": 1}', b"\xff", "bad_key"),
        (b'{"ts": 1}', b"k", "missing_target"),
        (b'{"y": "1.5"}', b"k", "bad_target"),
        (b'{"y": true}', b"k", "bad_target"),
        (b'{"y": null}', b"k", "bad_target"),
        (b'{"y": NaN}', b"k", "non_finite"),
        (b'{"y": Infinity}', b"k", "non_finite"),
        (b'{"y": 1e999}', b"k", "non_finite"),
        (b'{"y": 1, "x": {"temp": -Infinity}}', b"k", "non_finite"),
        (b'{"y": 1, "ts": "soon"}', b"k", "bad_time"),
        (b'{"y": 1, "ts": true}', b"k", "bad_time"),
        (b'{"y": 1, "ts": [1]}', b"k", "bad_time"),
        (b'{"y": 1, "ts": -62135596800001}', b"k", "bad_time"),
        (b'{"y": 1, "ts": "0000-12-31T23:59:59Z"}', b"k", "bad_time"),
        (b'{"y": 1, "ts": "202311"}', b"k", "bad_time"),  # not ISO 8601: reads as YYMMDD too
        (b'{"y": 1, "ts": "2023-13"}', b"k", "bad_time"),
        (b'{"y": 1, "ts": "2023-366"}', b"k", "bad_time"),  # not a leap year
        (b'{"y": 1, "ts": "2023-000"}', b"k", "bad_time"),
        (b'{"y": 1, "ts": "0000"}', b"k", "bad_time"),
        (b'{"y": 1, "x": [1, 2]}', b"k", "bad_features"),
        (b'{"y": 1, "x": {"temp": "hot"}}', b"k", "bad_features"),
        (b'{"y": 1, "x": {"load": true}}', b"k", "bad_features"),
        (b'{"y": 1, "x": {"load": NaN}}', b"k", "non_finite"),
    ],
)
def test_each_invalid_kind_has_its_reason(
    value: bytes | None, key: bytes | None, reason: str
) -> None:
    decoded = _decode(value, key=key)
    assert isinstance(decoded, Invalid)
    assert decoded.reason == reason
    assert decoded.detail


def test_missing_time_and_no_record_timestamp_is_bad_time() -> None:
    decoded = _decode(b'{"y": 1}', timestamp=None)
    assert isinstance(decoded, Invalid)
    assert decoded.reason == "bad_time"


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b'{"y": 1, "ts": 1' + b"0" * 399 + b"}", b"k", "bad_time"),
        (b'{"y": 1, "ts": -1' + b"0" * 399 + b"}", b"k", "bad_time"),
        (b'{"y": 1, "ts": 1e300}', b"k", "bad_time"),
        (b'{"key": "\\ud800", "y": 1}', None, "bad_key"),
        (b'{"key": 1' + b"0" * 5000 + b', "y": 1}', None, "not_json"),
        (b'{"y": 1, "x": {"\\udfff": 1}}', b"k", "bad_features"),
        (b'{"y": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", b"k", "not_json"),
        (b"[" * 100_000 + b"]" * 100_000, b"k", "not_json"),
    ],
)
def test_hostile_records_get_a_reason_not_an_exception(
    value: bytes, key: bytes | None, reason: str
) -> None:
    """The poison records of issue 13: each once crashed the daemon at its offset."""
    schema = SchemaSettings(features=("temp",), max_message_bytes=1_000_000)
    decoded = Decoder(schema).decode(RawRecord("t", 0, 0, key, value, (), 5))
    assert isinstance(decoded, Invalid)
    assert (decoded.reason, decoded.detail.isascii()) == (reason, True)


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        (-5, -5000),
        (-1_000_000_000_000, -1_000_000_000_000),
        (-371_174_400_000_001, -371_174_400_001),  # 1958 in microseconds, floored
        (-371_174_400_000_000_000, -371_174_400_000),  # in nanoseconds
        ("1969-07-20T20:17:40Z", -14_182_940_000),
        ("0001-01-01T00:00:00Z", -62_135_596_800_000),
        ("9999-12-31T23:59:59.999Z", 253_402_300_799_999),
    ],
)
def test_times_before_1970_and_up_to_year_9999_are_accepted(ts: object, expected_ms: int) -> None:
    event = Decoder(SCHEMA).decode(RawRecord("t", 0, 0, b"k", orjson.dumps({"ts": ts, "y": 1})))
    assert isinstance(event, Event)
    assert event.ts_ms == expected_ms


def _with_skew(ts_ms: int, broker_ms: int | None) -> Event | Invalid:
    decoder = Decoder(SCHEMA, max_future_skew_s=3600)
    value = orjson.dumps({"ts": ts_ms, "y": 1})
    return decoder.decode(RawRecord("t", 0, 0, b"k", value, (), broker_ms))


def test_future_time_is_measured_from_the_broker_timestamp() -> None:
    broker_ms = 1_700_000_000_000
    assert isinstance(_with_skew(broker_ms + 3_600_000, broker_ms), Event)
    future = _with_skew(broker_ms + 3_600_001, broker_ms)
    assert isinstance(future, Invalid)
    assert future.reason == "future_time"


def test_future_time_without_a_broker_timestamp_is_measured_from_now() -> None:
    now_ms = time.time_ns() // 1_000_000
    assert isinstance(_with_skew(now_ms + 60_000, None), Event)
    future = _with_skew(now_ms + 2 * 3_600_000, None)
    assert isinstance(future, Invalid)
    assert future.reason == "future_time"


def test_oversized_is_checked_before_parsing() -> None:
    decoded = Decoder(SchemaSettings(max_message_bytes=64)).decode(
        RawRecord("t", 0, 0, b"k", b'{"y": 1, "pad": "' + b"x" * 100 + b'"}')
    )
    assert isinstance(decoded, Invalid)
    assert decoded.reason == "oversized"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    decoded = _decode(value)
    assert isinstance(decoded, Event | Invalid)
    if isinstance(decoded, Event):
        assert math.isfinite(decoded.y)
        assert np.all(np.isfinite(decoded.x) | np.isnan(decoded.x))


def test_a_flat_record_has_its_features_beside_the_key_time_and_target() -> None:
    """``features_field: ""``: every field but the key, time and target is a feature
    name; the unused ones are ignored and counted, whatever their values."""
    schema = SchemaSettings(
        features_field="", features=("temp", "load"), key_field="sensor", target_field="power"
    )
    value = {"sensor": "a", "ts": 1_700_000_000, "power": 3.5, "temp": 21.5, "unit": "kW"}
    event = Decoder(schema).decode(RawRecord("t", 0, 0, None, orjson.dumps(value)))
    assert isinstance(event, Event)
    assert (event.key, event.ts_ms, event.y) == ("a", 1_700_000_000_000, 3.5)
    assert event.x.tolist()[0] == 21.5
    assert math.isnan(event.x.tolist()[1])
    assert event.ignored == 1  # unit
    bad = {**value, "load": "high"}
    invalid = Decoder(schema).decode(RawRecord("t", 0, 0, None, orjson.dumps(bad)))
    assert isinstance(invalid, Invalid)
    assert invalid.reason == "bad_features"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            {"y": "43210.55", "ts": "1704067200", "x": {"temp": "-1.5e1"}},
            (43210.55, 1_704_067_200_000, -15.0),
        ),
        ({"y": "7", "ts": "2024"}, (7.0, 1_704_067_200_000, None)),  # ISO first: a year
        ({"y": "7", "ts": "1704067200123456789"}, (7.0, 1_704_067_200_123, None)),  # exact
        ({"y": " 1"}, "bad_target"),  # a JSON number's grammar only: no spaces,
        ({"y": "+1"}, "bad_target"),  # no plus,
        ({"y": "NaN"}, "bad_target"),  # no NaN,
        ({"y": "1_000"}, "bad_target"),  # no underscores, all of which float() takes
        ({"y": "1e400"}, "non_finite"),
        ({"y": "1", "ts": "1e400"}, "bad_time"),
        ({"y": 1, "x": {"temp": "warm"}}, "bad_features"),
    ],
)
def test_numeric_text_reads_numbers_written_as_strings(
    value: dict[str, object], expected: tuple[float, int, float | None] | str
) -> None:
    """``schema.numeric_text``: as exchange feeds send prices. Off (the default), each
    of these strings is refused as the contract says."""
    raw = RawRecord("t", 0, 0, b"k", orjson.dumps(value), timestamp_ms=1_764_000_000_000)
    got = Decoder(SchemaSettings(features=("temp",), numeric_text=True)).decode(raw)
    if isinstance(expected, str):
        assert isinstance(got, Invalid)
        assert got.reason == expected
    else:
        assert isinstance(got, Event)
        y, ts_ms, temp = expected
        assert (got.y, got.ts_ms) == (y, ts_ms)
        assert got.x[0] == temp if temp is not None else math.isnan(got.x[0])
    strict = Decoder(SchemaSettings(features=("temp",))).decode(raw)
    assert isinstance(strict, Invalid)
    assert strict.reason in {"bad_target", "bad_features"}


_NUMBERISH = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"-?[0-9]{1,400}(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,5})?", fullmatch=True),
)


@given(_NUMBERISH, _NUMBERISH, _NUMBERISH, st.booleans())
def test_numeric_text_never_raises_whatever_the_strings(
    y: str, ts: str, temp: str, flat: bool
) -> None:
    """Text where numbers go, under ``schema.numeric_text`` (and a flat record): an
    event with finite numbers, or a reason; never ``internal_error``."""
    schema = SchemaSettings(
        features=("temp",), numeric_text=True, features_field="" if flat else "x"
    )
    value = {"y": y, "ts": ts, **({"temp": temp} if flat else {"x": {"temp": temp}})}
    raw = RawRecord("t", 0, 0, b"k", orjson.dumps(value), timestamp_ms=1_764_000_000_000)
    decoded = Decoder(schema).decode(raw)
    if isinstance(decoded, Invalid):
        assert decoded.reason != "internal_error", decoded.detail
    else:
        assert math.isfinite(decoded.y)
        assert np.all(np.isfinite(decoded.x) | np.isnan(decoded.x))


def test_fields_nested_in_an_envelope_are_read_by_json_pointers() -> None:
    """A change-data-capture record: what forecastd reads sits under
    ``payload.after``; a plain name with a dot stays a plain name."""
    schema = SchemaSettings(
        key_field="/payload/after/id",
        time_field="/payload/after/at",
        target_field="/payload/after/price",
        features_field="/payload/after/x",
        features=("volume",),
    )
    after = {"id": "a", "at": 1_700_000_000, "price": 1.5, "x": {"volume": 10}}
    value = {"op": "u", "payload": {"before": None, "after": after}}
    event = Decoder(schema).decode(RawRecord("t", 0, 0, None, orjson.dumps(value)))
    assert isinstance(event, Event)
    assert (event.key, event.ts_ms, event.y, event.x.tolist()) == (
        "a",
        1_700_000_000_000,
        1.5,
        [10.0],
    )
    deleted = {"op": "d", "payload": {"before": after, "after": None}}
    missing = Decoder(schema).decode(RawRecord("t", 0, 0, b"a", orjson.dumps(deleted)))
    assert isinstance(missing, Invalid)
    assert missing.reason == "missing_target"
    dotted = SchemaSettings(target_field="temp.c")
    plain = Decoder(dotted).decode(RawRecord("t", 0, 0, b"k", b'{"temp.c": 2.5, "ts": 1}'))
    assert isinstance(plain, Event)
    assert plain.y == 2.5


def test_key_source_field_takes_the_series_from_the_value_whatever_the_record_key() -> None:
    """A topic keyed by site (or in binary, as Java's LongSerializer writes) whose
    series are its sensors: each sensor its own series, not the site's."""
    schema = SchemaSettings(key_field="sensor", key_source="field")
    keys = [b"site-1", b"site-1", b"\x00\x00\x00\x00\x00\x00\x00\xff"]
    values = [{"sensor": s, "ts": 1, "y": 1.0} for s in ("t1", "t2", "t3")]
    decoded = [
        Decoder(schema).decode(RawRecord("t", 0, 0, k, orjson.dumps(v)))
        for k, v in zip(keys, values, strict=True)
    ]
    assert [getattr(d, "key", None) for d in decoded] == ["t1", "t2", "t3"]
    default = Decoder(SchemaSettings(key_field="sensor"))
    by_record = [
        default.decode(RawRecord("t", 0, 0, k, orjson.dumps(v)))
        for k, v in zip(keys, values, strict=True)
    ]
    assert [getattr(d, "key", getattr(d, "reason", None)) for d in by_record] == [
        "site-1",
        "site-1",
        "bad_key",
    ]
    unkeyed = Decoder(schema).decode(RawRecord("t", 0, 0, b"site-1", b'{"ts": 1, "y": 1.0}'))
    assert isinstance(unkeyed, Invalid)
    assert unkeyed.reason == "missing_key"


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("02/01/2024 13:00", 1_704_196_800_000),  # 2 January, 13:00 in Paris: 12:00 UTC
        ("02/07/2024 13:00", 1_719_918_000_000),  # in summer time: 11:00 UTC
        ("2024-01-02T13:00:00", 1_704_196_800_000),  # ISO without a zone: Paris too
        ("2024-01-02T13:00:00Z", 1_704_200_400_000),  # a zone given is the zone
        ("13/01/2024", "bad_time"),  # not the format, and not ISO-8601
    ],
)
def test_a_time_format_and_zone_read_local_times(ts: str, expected: int | str) -> None:
    schema = SchemaSettings(time_format="%d/%m/%Y %H:%M", time_zone="Europe/Paris")
    decoded = Decoder(schema).decode(RawRecord("t", 0, 0, b"k", orjson.dumps({"y": 1, "ts": ts})))
    if isinstance(expected, str):
        assert isinstance(decoded, Invalid)
        assert decoded.reason == expected
        assert "neither '%d/%m/%Y %H:%M' nor ISO-8601" in decoded.detail
    else:
        assert isinstance(decoded, Event)
        assert decoded.ts_ms == expected


_ZONED = {
    (zone, form): Decoder(SchemaSettings(time_zone=zone, time_format=form, numeric_text=True))
    for zone in ("UTC", "Europe/Paris", "Pacific/Kiritimati", "Pacific/Pago_Pago")
    for form in (None, "%d/%m/%Y %H:%M", "%Y-%m-%dT%H:%M:%S%z")
}
_ANY_TIME = st.datetimes()  # naive, years 1 to 9999


@given(
    st.sampled_from(sorted(_ZONED, key=str)),
    st.one_of(
        st.text(max_size=30),
        _ANY_TIME.map(lambda moment: moment.strftime("%d/%m/%Y %H:%M")),
        _ANY_TIME.map(datetime.isoformat),
    ),
)
def test_local_times_of_any_year_in_any_zone_never_raise(
    decoder: tuple[str, str | None], ts: str
) -> None:
    """Years 1 and 9999 shifted past the calendar's ends by a zone of -11 or +14
    hours: ``bad_time``, never ``internal_error``."""
    raw = RawRecord("t", 0, 0, b"k", orjson.dumps({"y": 1, "ts": ts}), timestamp_ms=1)
    decoded = _ZONED[decoder].decode(raw)
    if isinstance(decoded, Invalid):
        assert decoded.reason != "internal_error", decoded.detail


def test_a_leading_byte_order_mark_is_ignored_once() -> None:
    """RFC 8259 lets a parser ignore one; Windows tools write it."""
    bom = b"\xef\xbb\xbf"
    event = _decode(bom + b'{"key": "a", "ts": 1, "y": 2.5}')
    assert isinstance(event, Event)
    assert event.y == 2.5
    for value in (bom * 2 + b'{"y": 1}', bom * 80):  # not JSON after one mark
        invalid = _decode(value)
        assert isinstance(invalid, Invalid)
        assert invalid.reason == "not_json"
