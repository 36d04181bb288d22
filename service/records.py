"""The values that flow through forecastd: raw records in, events, predictions and
dead letters out.

Immutable named tuples, safe to share: a few are created per record, and a
``NamedTuple`` is built in about a fifth of the time of a frozen dataclass (whose
``__init__`` goes through ``object.__setattr__`` field by field), which was ~2 µs of
every event.
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
        """``topic:partition:offset``, the traceability id SPEC puts on predictions."""
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
    """One published forecast, serialised exactly as SPEC "Output messages"."""

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


def dead_letter_headers(invalid: Invalid) -> Headers:
    """The original headers plus where the record came from and why it was rejected."""
    record = invalid.record
    return (
        *record.headers,
        ("forecastd.error.reason", invalid.reason.encode()),
        ("forecastd.error.detail", invalid.detail.encode()[:1024]),
        ("forecastd.source.topic", record.topic.encode()),
        ("forecastd.source.partition", str(record.partition).encode()),
        ("forecastd.source.offset", str(record.offset).encode()),
    )
