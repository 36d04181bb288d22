"""Synthetic input streams with known dynamics, as Kafka (key, value, headers) triples."""

from __future__ import annotations

import random

import orjson

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]

SLOPES = {"alpha": 1.0, "beta": -0.5, "gamma": 2.0}
START_MS = 1_700_000_000_000


def linear_trends(events_per_key: int, seed: int = 7) -> list[Record]:
    """Three keys, each ``y_t = y_{t-1} + slope + N(0, 0.1²)``, interleaved in time.

    Persistence is off by the slope every step; a linear model of the change learns
    the slope from the lag differences.
    """
    rng = random.Random(seed)
    level = {key: 100.0 * (i + 1) for i, key in enumerate(SLOPES)}
    records: list[Record] = []
    for step in range(events_per_key):
        for key, slope in SLOPES.items():
            level[key] += slope + rng.gauss(0.0, 0.1)
            value = {"key": key, "ts": START_MS + step * 1000, "y": level[key]}
            records.append((key.encode(), orjson.dumps(value), []))
    return records
