"""The values that flow through forecastd: raw records in, events, predictions and
dead letters out.

Immutable named tuples, safe to share: a few are created per record, and a
``NamedTuple`` is built much faster than a frozen dataclass (whose ``__init__`` goes
through ``object.__setattr__`` field by field), a cost paid on every event (README,
"Throughput and latency").
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

Headers = tuple[tuple[str, bytes], ...]


class RawRecord(NamedTuple):
    """A record as a source hands it over, before any parsing.

    ``consumed_at`` is ``time.monotonic()`` when the source returned the record; the
    latency histogram measures from there to the broker's acknowledgement.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int | None = None
    consumed_at: float = 0.0

    @property
    def source(self) -> str:
        """``topic:partition:offset``, the traceability id on predictions
        (docs/messages.md)."""
        return f"{self.topic}:{self.partition}:{self.offset}"


class Event(NamedTuple):
    """A valid input event. ``x`` holds the configured exogenous features in
    ``schema.features`` order, NaN where the event lacks one."""

    key: str
    ts_ms: int
    y: float
    x: npt.NDArray[np.float64]
    record: RawRecord
    ignored: int = 0  # names in the features field that models do not use


class Invalid(NamedTuple):
    """A record that failed validation; ``reason`` is a bounded label value."""

    reason: str
    detail: str
    record: RawRecord


class Prediction(NamedTuple):
    """One published forecast, serialised exactly as docs/messages.md, "Output"."""

    key: str
    ts: int
    horizon: int
    y_hat: float
    lower: float | None
    upper: float | None
    model: str
    model_version: int
    source: str
    consumed_at: float = 0.0
    leader: str | None = None  # an ensemble's leading member; None for other models

    def to_json(self, produced_at_ms: int | None = None) -> bytes:
        produced = produced_at_ms if produced_at_ms is not None else time.time_ns() // 1_000_000
        return orjson.dumps(
            {
                "key": self.key,
                "ts": self.ts,
                "horizon": self.horizon,
                "y_hat": self.y_hat,
                "lower": self.lower,
                "upper": self.upper,
                "model": self.model,
                "model_version": self.model_version,
                "leader": self.leader,
                "source": self.source,
                "produced_at": produced,
            }
        )


DEAD_LETTER_KEY_BYTES = 4096
"""A dead letter keeps at most this much of the original key (a key is bounded only
by the input broker's record size, and an abusive one must still fit the DLQ)."""
DEAD_LETTER_HEADER_BYTES = 32768
"""The original headers a dead letter keeps, names and values together; the rest are
dropped (counted in ``forecastd.error.headers_dropped``)."""
DEAD_LETTER_OVERHEAD_BYTES = 65536
"""Room for a dead letter's key, headers and framing: a dead letter's value is cut
this much below ``schema.max_message_bytes`` (:func:`dead_letter_value_limit`), so the
whole record fits a topic that takes ``max_message_bytes`` (Kafka's default limit
for the default 1 MiB); the producer's ``max_request_size`` keeps the same room above
``max_message_bytes`` on top."""


def dead_letter_value_limit(max_message_bytes: int) -> int:
    """The most bytes of a value a dead letter carries: ``max_message_bytes`` less
    :data:`DEAD_LETTER_OVERHEAD_BYTES` (half of it for tiny limits).

    >>> dead_letter_value_limit(1_048_576)
    983040
    """
    return max(max_message_bytes - DEAD_LETTER_OVERHEAD_BYTES, max_message_bytes // 2)


class DeadLetter(NamedTuple):
    key: bytes | None
    value: bytes
    headers: Headers


def dead_letter(invalid: Invalid, max_value_bytes: int) -> DeadLetter:
    """The record to send to the dead-letter topic for ``invalid``, bounded in size.

    The value is forwarded byte for byte when it fits in ``max_value_bytes`` (the
    processor passes :func:`dead_letter_value_limit`, which only ``oversized`` values
    and those within 64 KiB of the limit exceed); else its first ``max_value_bytes``
    bytes, with the original length in ``forecastd.error.original_size``. Key and
    headers are capped by :data:`DEAD_LETTER_KEY_BYTES` and
    :data:`DEAD_LETTER_HEADER_BYTES`, so a dead letter is always smaller than
    ``max_value_bytes + DEAD_LETTER_OVERHEAD_BYTES``: no record is too large to be
    dead-lettered.
    """
    record = invalid.record
    value = record.value or b""
    extra: list[tuple[str, bytes]] = []
    if len(value) > max_value_bytes:
        extra.append(("forecastd.error.original_size", str(len(value)).encode()))
        value = value[:max_value_bytes]
    key = record.key[:DEAD_LETTER_KEY_BYTES] if record.key is not None else None
    kept: list[tuple[str, bytes]] = []
    budget = DEAD_LETTER_HEADER_BYTES
    for name, header_value in record.headers:
        size = len(name.encode("utf-8", "backslashreplace")) + len(header_value)
        if size > budget:
            break
        budget -= size
        kept.append((name, header_value))
    if len(kept) < len(record.headers):
        extra.append(
            ("forecastd.error.headers_dropped", str(len(record.headers) - len(kept)).encode())
        )
    headers = _with_error_headers(tuple(kept), invalid)
    return DeadLetter(key, value, (*headers, *extra))


def dead_letter_headers(invalid: Invalid) -> Headers:
    """The original headers plus where the record came from and why it was rejected."""
    return _with_error_headers(invalid.record.headers, invalid)


def _with_error_headers(original: Headers, invalid: Invalid) -> Headers:
    """``original`` plus forecastd's headers. Text is encoded with
    ``backslashreplace``: a detail or topic name can carry a lone surrogate from the
    input, which a strict UTF-8 encoder refuses (that crashed the daemon once)."""
    record = invalid.record
    return (
        *original,
        ("forecastd.error.reason", _utf8(invalid.reason)),
        ("forecastd.error.detail", _utf8(invalid.detail)[:1024]),
        ("forecastd.source.topic", _utf8(record.topic)),
        ("forecastd.source.partition", str(record.partition).encode()),
        ("forecastd.source.offset", str(record.offset).encode()),
    )


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")
