"""Turn raw records into events, or into a reason why not.

Every failure has a bounded ``reason`` (a Prometheus label value and the dead-letter
header) and a human ``detail``. Reasons, in the order they are checked:

``empty``           no value (tombstone or zero bytes)
``oversized``       value larger than ``schema.max_message_bytes``
``not_json``        not UTF-8 JSON
``not_object``      JSON, but not an object
``missing_key``     no record key and no key field
``bad_key``         key field of the wrong type, empty, too long, or key bytes not UTF-8
``missing_target``  no target field
``bad_target``      target is not a number (strings, booleans and null included; but
                    see ``schema.numeric_text``)
``non_finite``      NaN or ±Infinity in the target or a used feature
``bad_time``        time field present but not an epoch number or ISO-8601 in years 1 to 9999
``future_time``     event time more than ``forecast.max_future_skew_s`` ahead of the
                    record's broker timestamp (or of the wall clock when it has none)
``bad_features``    features field not an object, a used feature's value neither a
                    number nor null, or a name that is not valid Unicode (a lone
                    surrogate from a ``\\ud800`` escape)

``out_of_order`` is decided later, by the task, which knows each key's newest time;
so is ``outlier`` (``forecast.outliers``), which needs the key's recent values;
``internal_error`` by the processor, for a record whose processing raised.

Decoding never raises, whatever the bytes: every exception a parser or a conversion
can raise on hostile input (``RecursionError`` from 100,000 nested arrays,
``OverflowError`` from a 400-digit number, ``ValueError`` from an integer over
Python's digit limit, ``UnicodeError`` from lone surrogates) becomes one of the
reasons above, and anything else still becomes ``internal_error`` with the exception's
type as detail, so one record can never stop its partition.

Keys and feature names must be encodable as UTF-8: JSON's ``"\\ud800"`` escape decodes
to a lone surrogate that no UTF-8 encoder accepts, so such a key is ``bad_key`` (and a
feature name ``bad_features``) here, rather than an encoding crash when the
prediction or the dead-letter header is written.

Event time: numbers are epoch seconds when their magnitude is below 1e11 (until year
5138), milliseconds below 1e14, microseconds below 1e17, else nanoseconds (pandas'
``Timestamp.value`` goes through as it is); negative values are before 1970. Each
unit's range starts where the one before ends, about three years from 1970: a
millisecond count of 1967-72 reads as seconds, a microsecond count of those years as
milliseconds; milliseconds past year 5138 read as microseconds (``future_time``
anyway unless ``forecast.max_future_skew_s`` is null).

Features: only the names models use (``schema.features``, or the list ``auto`` fixed
from the first poll) are checked. Their values must be finite numbers, or ``null``,
which is how pandas and orjson write a missing value: it is imputed like an absent
name. Any other name is not an input to anything and is ignored, whatever its value
(a category, a flag, a note), so a record is never lost for a field nobody reads; the
count of such names goes to ``forecastd_ignored_features_total`` in ``auto`` mode.
With ``schema.features_field: ""`` a record is flat: its features are its own fields
besides the key, time and target (:func:`features_of`), as a table's row or a
sensor's reading is usually written.
NaN and Infinity in a used feature stay ``non_finite``: the contract's numbers are
finite, and a producer that sends them has a bug worth seeing.

ISO-8601 strings without a zone are taken as UTC. Times from year 1 to 9999 are
accepted. Besides what ``datetime.fromisoformat`` reads, ISO 8601's reduced-precision
dates (``2024``, ``2024-03``: the first instant of that year or month) and ordinal
dates (``2024-075``, ``2024075``, with or without a time after them) are read too:
yearly and monthly series are often stamped that way, and rejecting every record of
such a series as ``bad_time`` would leave it unforecast. ``202403`` stays rejected:
ISO 8601 leaves that form out, as it also reads as a truncated ``YYMMDD``.
"""

from __future__ import annotations

import bisect
import calendar
import json
import math
import re
import time
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson

from service.config import SchemaSettings
from service.io.fields import ABSENT, get, top_level
from service.records import Event, Invalid, RawRecord

REASONS = (
    "empty",
    "oversized",
    "not_json",
    "not_object",
    "missing_key",
    "bad_key",
    "missing_target",
    "bad_target",
    "non_finite",
    "bad_time",
    "bad_features",
    "future_time",
    "out_of_order",
    "outlier",
    "internal_error",
)
"""Every dead-letter reason: the bounded label values of ``forecastd_invalid_messages_total``."""

MAX_KEY_CHARS = 256
EPOCH_UNITS = (10**11, 10**14, 10**17)
"""Magnitudes below which a number is epoch seconds, milliseconds, microseconds; above
the last, nanoseconds."""
_TS_MS_MIN = -62_135_596_800_000  # 0001-01-01T00:00:00Z
_TS_MS_MAX = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_PARSE_ERRORS = (ValueError, RecursionError, UnicodeError, OverflowError, MemoryError)
"""What ``json.loads`` raises on hostile input besides JSONDecodeError (a ValueError):
deep nesting, integers over Python's 4,300-digit limit, bad UTF-8."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REDUCED_DATE = re.compile(r"([0-9]{4})(?:-([0-9]{2}))?")  # YYYY or YYYY-MM, whole string
_ORDINAL_DATE = re.compile(r"([0-9]{4})-?([0-9]{3})(?=T|$)")  # YYYY-DDD or YYYYDDD, then a time


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Decoder:
    """Validates records against :class:`SchemaSettings`; never raises on input."""

    def __init__(self, schema: SchemaSettings, max_future_skew_s: float | None = None) -> None:
        """``max_future_skew_s``: reject events further ahead than this as
        ``future_time`` (None: accept any time up to year 9999)."""
        self._schema = schema
        # ``auto`` is resolved to a list by the processor (from the first poll) before
        # it builds its decoder; a decoder given ``auto`` itself keeps no features.
        features: tuple[str, ...] = () if schema.features == "auto" else schema.features
        self._max_future_ms = None if max_future_skew_s is None else int(max_future_skew_s * 1000)
        self._features = features
        self._text = schema.numeric_text
        self._format = schema.time_format
        self._zone: tzinfo = UTC if schema.time_zone == "UTC" else ZoneInfo(schema.time_zone)
        # One shared, read-only all-NaN vector for events without features (most
        # streams): no array per event.
        self._no_features = np.full(len(features), np.nan)
        self._no_features.flags.writeable = False

    def decode(self, record: RawRecord) -> Event | Invalid:
        try:
            return self._decode(record)
        except _Reject as rejected:
            return Invalid(rejected.reason, rejected.detail, record)
        except Exception as exc:  # a bug, or input no check above foresaw: never fatal
            return Invalid("internal_error", type(exc).__name__, record)

    def _decode(self, record: RawRecord) -> Event:
        schema = self._schema
        value = record.value
        if not value:
            raise _Reject("empty", "record has no value")
        if len(value) > schema.max_message_bytes:
            raise _Reject(
                "oversized", f"{len(value)} bytes > max_message_bytes {schema.max_message_bytes}"
            )
        obj = parse_json(value)
        if not isinstance(obj, dict):
            raise _Reject("not_object", f"JSON {type(obj).__name__}, expected an object")
        key = self._key(record, obj)
        target = schema.target_field
        y = _finite_number(get(obj, target), target, "missing_target", "bad_target", self._text)
        ts_ms = self._time(record, obj)
        x, ignored = self._exogenous(obj)
        return Event(key=key, ts_ms=ts_ms, y=y, x=x, record=record, ignored=ignored)

    def _key(self, record: RawRecord, obj: dict[str, Any]) -> str:
        if record.key and self._schema.key_source == "record":
            try:
                key = record.key.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Reject("bad_key", "record key is not UTF-8") from exc
        else:
            field = self._schema.key_field
            raw = get(obj, field)
            if raw is ABSENT or raw is None:
                raise _Reject("missing_key", f"no record key and no '{field}' field")
            if isinstance(raw, bool) or not isinstance(raw, str | int):
                raise _Reject("bad_key", f"'{field}' is a {type(raw).__name__}, expected a string")
            key = raw if isinstance(raw, str) else _int_text(raw, "bad_key", field)
        if not key or len(key) > MAX_KEY_CHARS:
            raise _Reject("bad_key", f"key must have 1 to {MAX_KEY_CHARS} characters")
        if not _is_unicode(key):
            raise _Reject("bad_key", "key is not valid Unicode (lone surrogate)")
        return key

    def _time(self, record: RawRecord, obj: dict[str, Any]) -> int:
        field = self._schema.time_field
        raw = get(obj, field)
        if raw is ABSENT or raw is None:
            if record.timestamp_ms is None or record.timestamp_ms < 0:
                raise _Reject("bad_time", f"no '{field}' field and no record timestamp")
            return record.timestamp_ms
        if isinstance(raw, bool):
            raise _Reject("bad_time", f"'{field}' is a boolean")
        if isinstance(raw, int):
            ts_ms = _epoch_ms(raw)
        elif isinstance(raw, float):
            if not math.isfinite(raw):
                raise _Reject("bad_time", f"'{field}' is not finite")
            ts_ms = _epoch_ms(raw)
        elif isinstance(raw, str):
            ts_ms = self._text_time(raw, field)
        else:
            raise _Reject("bad_time", f"'{field}' is a {type(raw).__name__}")
        if not _TS_MS_MIN <= ts_ms <= _TS_MS_MAX:
            raise _Reject("bad_time", f"'{field}' is outside years 1 to 9999")
        if self._max_future_ms is not None:
            reference = record.timestamp_ms
            if reference is None:
                reference = time.time_ns() // 1_000_000
            if ts_ms > reference + self._max_future_ms:
                raise _Reject(
                    "future_time",
                    f"event time {ts_ms} is more than {self._max_future_ms} ms after {reference}",
                )
        return ts_ms

    def _text_time(self, raw: str, field: str) -> int:
        """A time in ``schema.time_format`` when one is set, else (or failing that) an
        ISO-8601 time; with ``schema.numeric_text``, else an epoch number written as
        text (``"1700000000"``). ISO comes before numbers: ``"2024"`` is a year. A
        time without a zone is in ``schema.time_zone``."""
        if self._format is not None:
            try:
                # naive unless the format has %z: _moment_ms gives it time_zone then
                moment = datetime.strptime(raw, self._format)  # noqa: DTZ007
                return _moment_ms(moment, field, self._zone)
            except ValueError:
                pass
        try:
            return _iso_to_ms(raw, field, self._zone)
        except _Reject as rejected:
            if not self._text or not NUMERIC_TEXT.fullmatch(raw):
                if self._format is None:
                    raise
                raise _Reject(
                    "bad_time",
                    f"'{field}' is neither {self._format!r} nor ISO-8601: {raw[:64]!a}",
                ) from rejected
        # a whole number of up to 19 digits stays exact (nanoseconds), others as floats
        whole = len(raw) <= 20 and raw.lstrip("-").isdigit()
        number: int | float = int(raw) if whole else float(raw)
        if not math.isfinite(number):
            raise _Reject("bad_time", f"'{field}' is not finite")
        return _epoch_ms(number)

    def _exogenous(self, obj: dict[str, Any]) -> tuple[np.ndarray, int]:
        """The values of the features models use, NaN where missing, and how many
        names the record has besides them (module docstring, "Features")."""
        raw = features_of(obj, self._schema)
        if raw is None:
            return self._no_features, 0
        if not isinstance(raw, dict):
            field = self._schema.features_field
            raise _Reject("bad_features", f"'{field}' must be an object of name -> number")
        if not all(map(_is_unicode, raw)):
            raise _Reject("bad_features", "a feature name is not valid Unicode")
        values, listed = [], 0
        for name in self._features:
            listed += name in raw
            if raw.get(name) is None:  # absent, or null (pandas' and orjson's missing)
                values.append(math.nan)  # imputed
            else:
                values.append(
                    _finite_number(raw[name], name, "bad_features", "bad_features", self._text)
                )
        x = np.array(values) if values else self._no_features
        return x, len(raw) - listed


_BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark

NUMERIC_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
"""A JSON number's grammar (RFC 8259), for text that ``schema.numeric_text`` reads as
a number: no spaces, ``+``, ``NaN``, ``inf`` or ``1_000`` (which ``float()`` would
take)."""


def is_number(value: Any, text: bool) -> bool:
    """Whether ``value`` is a number as a feature's value (a JSON number, or with
    ``text`` a string written as one); not a boolean."""
    if isinstance(value, str):
        return text and NUMERIC_TEXT.fullmatch(value) is not None
    return isinstance(value, int | float) and not isinstance(value, bool)


def features_of(obj: dict[str, Any], schema: SchemaSettings) -> Any:
    """A parsed record's features: the value of its ``features_field`` (None when
    absent; not necessarily an object); with ``features_field: ""``, its own fields
    besides the key, time and target fields."""
    field = schema.features_field
    if field:
        value = get(obj, field)
        return None if value is ABSENT else value
    taken = {top_level(f) for f in (schema.key_field, schema.time_field, schema.target_field)}
    return {name: value for name, value in obj.items() if name not in taken}


def parse_json(value: bytes) -> Any:
    """A record's value as the decoder parses it (``not_json`` when it cannot)."""
    if value.startswith(_BOM):  # one: RFC 8259 lets a parser ignore it; Windows tools add it
        value = value[len(_BOM) :]
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    # orjson rejects NaN/Infinity literals, integers beyond 64 bits, lone surrogates
    # and nesting deeper than 1024; the standard library accepts the first three,
    # which lets those records be reported precisely (non_finite, bad_time, bad_key)
    # rather than as not_json. Its recursive parser raises RecursionError on deep
    # nesting, and ValueError on integers over 4,300 digits: both are not_json here.
    try:
        return json.loads(value.decode("utf-8"))
    except _PARSE_ERRORS as exc:
        raise _Reject("not_json", f"not UTF-8 JSON ({type(exc).__name__})") from exc


def _finite_number(raw: Any, field: str, missing: str, wrong: str, text: bool = False) -> float:
    """``raw``, the value of ``field`` (:data:`~service.io.fields.ABSENT`: none), as a
    finite float; ``text``: a string written as a JSON number (``"43210.55"``) counts
    as that number (``schema.numeric_text``)."""
    if raw is ABSENT:
        raise _Reject(missing, f"no '{field}' field")
    if text and isinstance(raw, str) and NUMERIC_TEXT.fullmatch(raw):
        raw = float(raw)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _Reject(wrong, f"{_quoted(field)} is {type(raw).__name__}, expected a number")
    try:
        value = float(raw)
    except OverflowError as exc:
        raise _Reject("non_finite", f"'{field}' overflows a double") from exc
    if not math.isfinite(value):
        raise _Reject("non_finite", f"{_quoted(field)} is {value!r}")
    return value


def _quoted(name: str) -> str:
    """A field name from the input, safe for a detail: at most 64 characters, and
    ASCII (``ascii`` escapes lone surrogates and control characters)."""
    return ascii(name[:64])


def _is_unicode(text: str) -> bool:
    """Whether ``text`` has no lone surrogates, i.e. encodes as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int_text(value: int, reason: str, field: str) -> str:
    """``str(value)``, or a rejection when it exceeds Python's digit limit."""
    try:
        return str(value)
    except ValueError as exc:
        raise _Reject(reason, f"'{field}' is an integer too long to print") from exc


def ms_per_unit(magnitude: float) -> float:
    """Milliseconds in the epoch unit a number of this magnitude is read in (module
    docstring): 1000 for seconds, 1 for milliseconds, 0.001 and 1e-6 for micro- and
    nanoseconds.

    >>> ms_per_unit(1.7e9), ms_per_unit(1.7e12), ms_per_unit(1.7e18)
    (1000.0, 1.0, 1e-06)
    """
    return 1000.0 ** (1 - bisect.bisect_right(EPOCH_UNITS, magnitude))


def _epoch_ms(raw: int | float) -> int:
    """Epoch milliseconds from a number, in the unit its magnitude says. An ``int``
    stays exact (a 400-digit one must not reach ``float()``) and is floored when
    divided."""
    scale = ms_per_unit(abs(raw))
    if isinstance(raw, int):
        return raw * 1000 if scale > 1 else raw // round(1 / scale)  # 1, 10**3 or 10**6
    return int(raw * scale)


def iso_text(ts_ms: int) -> str:
    """Epoch milliseconds as the ISO-8601 text :func:`_iso_to_ms` reads back (UTC,
    ``Z``, milliseconds), exact for any year 1 to 9999."""
    moment = _EPOCH + timedelta(milliseconds=ts_ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso_to_ms(text: str, field: str, zone: tzinfo = UTC) -> int:
    try:
        moment = _from_iso(text)
    except ValueError as exc:
        raise _Reject("bad_time", f"'{field}' is not ISO-8601: {text[:64]!a}") from exc
    return _moment_ms(moment, field, zone)


def _moment_ms(moment: datetime, field: str, zone: tzinfo) -> int:
    """Epoch milliseconds of ``moment``, read in ``zone`` when it has no zone."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    # Exact for any year 1-9999, unlike timestamp() * 1000 through a float.
    try:
        delta = moment - _EPOCH
    except OverflowError as exc:  # year 1 or 9999 shifted past the end by its zone
        raise _Reject("bad_time", f"'{field}' is outside years 1 to 9999") from exc
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _from_iso(text: str) -> datetime:
    """``datetime.fromisoformat``, and the ISO 8601 dates it does not read (module
    docstring), tried only once it failed: the usual full timestamps pay nothing."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        reduced = _REDUCED_DATE.fullmatch(text)
        if reduced is not None:
            year, month = reduced.groups()
            return datetime(int(year), int(month or 1), 1, tzinfo=UTC)
        ordinal = _ORDINAL_DATE.match(text)
        if ordinal is None:
            raise
        year, day = int(ordinal[1]), int(ordinal[2])
        if not 1 <= day <= 365 + calendar.isleap(year) or year < 1:
            raise
        calendar_date = date(year, 1, 1) + timedelta(days=day - 1)
        return datetime.fromisoformat(calendar_date.isoformat() + text[ordinal.end() :])
