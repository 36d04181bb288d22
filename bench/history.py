"""The records the benchmarks replay: a bundled dataset, repeated to any length."""

from __future__ import annotations

import orjson

from service.config import SchemaSettings
from service.tools import replay

_START_MS = 1_700_000_000_000


def repeated_history(dataset: str, schema: SchemaSettings, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` (key, JSON value) pairs of ``dataset``, repeated as often as needed,
    with fresh increasing times (one ms apart) so no repetition is out of order."""
    pairs = replay.encode(replay.load_input(dataset), replay.Columns(), schema)
    pairs = (pairs * (count // len(pairs) + 1))[:count]
    return [
        (key, orjson.dumps({**orjson.loads(value), "ts": _START_MS + index}))
        for index, (key, value) in enumerate(pairs)
    ]


def spread(pairs: list[tuple[bytes, bytes]], keys: int) -> list[tuple[bytes, bytes]]:
    """The same records with their keys replaced by ``keys`` distinct ones, in turn
    (record i gets key ``i % keys``), as the record key and the JSON ``key`` field."""
    out = []
    for index, (_, value) in enumerate(pairs):
        key = f"key-{index % keys}"
        out.append((key.encode(), orjson.dumps({**orjson.loads(value), "key": key})))
    return out
