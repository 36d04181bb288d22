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
``bad_target``      target is not a number (strings, booleans and null included)
``non_finite``      NaN or ±Infinity in the target or a feature
``bad_time``        time field present but not epoch s/ms or ISO-8601
``bad_features``    features field not an object of name -> number

``out_of_order`` is decided later, by the task, which knows each key's newest time;
so is ``outlier`` (``forecast.outliers``), which needs the key's recent values.

Event time: numbers are epoch seconds when below 1e11 (until year 5138), else epoch
milliseconds; ISO-8601 strings without a zone are taken as UTC.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from service.config import SchemaSettings
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
    "out_of_order",
    "outlier",
)
"""Every dead-letter reason: the bounded label values of ``forecastd_invalid_messages_total``."""

MAX_KEY_CHARS = 256
_SECONDS_LIMIT = 1e11
_TS_MS_LIMIT = 253_402_300_800_000  # 9999-12-31


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Decoder:
    """Validates records against :class:`SchemaSettings`; never raises on input."""

    def __init__(self, schema: SchemaSettings) -> None:
        self._schema = schema
        if schema.features == "auto":
            raise ValueError("the processor resolves schema.features: auto before decoding")
        self._features = schema.features
        # One shared, read-only all-NaN vector for events without features (most
        # streams): no array per event.
        self._no_features = np.full(len(schema.features), np.nan)
        self._no_features.flags.writeable = False

    def decode(self, record: RawRecord) -> Event | Invalid:
        try:
            return self._decode(record)
        except _Reject as rejected:
            return Invalid(rejected.reason, rejected.detail, record)

    def _decode(self, record: RawRecord) -> Event:
        schema = self._schema
        value = record.value
        if not value:
            raise _Reject("empty", "record has no value")
        if len(value) > schema.max_message_bytes:
            raise _Reject(
                "oversized", f"{len(value)} bytes > max_message_bytes {schema.max_message_bytes}"
            )
        obj = _parse_json(value)
        if not isinstance(obj, dict):
            raise _Reject("not_object", f"JSON {type(obj).__name__}, expected an object")
        key = self._key(record, obj)
        y = _finite_number(obj, schema.target_field, "missing_target", "bad_target")
        ts_ms = self._time(record, obj)
        x = self._exogenous(obj)
        named = obj.get(schema.features_field)
        ignored = len(named) - int(np.isfinite(x).sum()) if isinstance(named, dict) else 0
        return Event(key=key, ts_ms=ts_ms, y=y, x=x, record=record, ignored=ignored)

    def _key(self, record: RawRecord, obj: dict[str, Any]) -> str:
        if record.key:
            try:
                key = record.key.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Reject("bad_key", "record key is not UTF-8") from exc
        else:
            field = self._schema.key_field
            if field not in obj or obj[field] is None:
                raise _Reject("missing_key", f"no record key and no '{field}' field")
            raw = obj[field]
            if isinstance(raw, bool) or not isinstance(raw, str | int):
                raise _Reject("bad_key", f"'{field}' is a {type(raw).__name__}, expected a string")
            key = str(raw)
        if not key or len(key) > MAX_KEY_CHARS:
            raise _Reject("bad_key", f"key must have 1 to {MAX_KEY_CHARS} characters")
        return key

    def _time(self, record: RawRecord, obj: dict[str, Any]) -> int:
        field = self._schema.time_field
        raw = obj.get(field)
        if raw is None:
            if record.timestamp_ms is None or record.timestamp_ms < 0:
                raise _Reject("bad_time", f"no '{field}' field and no record timestamp")
            return record.timestamp_ms
        if isinstance(raw, bool):
            raise _Reject("bad_time", f"'{field}' is a boolean")
        if isinstance(raw, int | float):
            if not math.isfinite(raw):
                raise _Reject("bad_time", f"'{field}' is not finite")
            ts_ms = int(raw * 1000) if abs(raw) < _SECONDS_LIMIT else int(raw)
        elif isinstance(raw, str):
            ts_ms = _iso_to_ms(raw, field)
        else:
            raise _Reject("bad_time", f"'{field}' is a {type(raw).__name__}")
        if not 0 <= ts_ms <= _TS_MS_LIMIT:
            raise _Reject("bad_time", f"'{field}' out of range: {raw!r}")
        return ts_ms

    def _exogenous(self, obj: dict[str, Any]) -> np.ndarray:
        field = self._schema.features_field
        raw = obj.get(field)
        if raw is None:
            return self._no_features
        if not isinstance(raw, dict):
            raise _Reject("bad_features", f"'{field}' must be an object of name -> number")
        for name in raw:
            _finite_number(raw, name, "bad_features", "bad_features")
        return np.array([float(raw[name]) if name in raw else np.nan for name in self._features])


def _parse_json(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    # orjson rejects NaN/Infinity literals; the standard library accepts them, which
    # lets those records be reported precisely as non_finite rather than not_json.
    try:
        return json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Reject("not_json", f"not UTF-8 JSON: {exc}") from exc


def _finite_number(obj: dict[str, Any], field: str, missing: str, wrong: str) -> float:
    if field not in obj:
        raise _Reject(missing, f"no '{field}' field")
    raw = obj[field]
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _Reject(wrong, f"'{field}' is {type(raw).__name__}, expected a number")
    try:
        value = float(raw)
    except OverflowError as exc:
        raise _Reject("non_finite", f"'{field}' overflows a double") from exc
    if not math.isfinite(value):
        raise _Reject("non_finite", f"'{field}' is {raw!r}")
    return value


def _iso_to_ms(text: str, field: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _Reject("bad_time", f"'{field}' is not ISO-8601: {text[:64]!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
