"""Synthetic input streams with known dynamics, as Kafka (key, value, headers) triples."""

from __future__ import annotations

import math
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


WAVES = {"alpha": (10.0, 40), "beta": (5.0, 25), "gamma": (20.0, 60)}


def sine_waves(events_per_key: int, seed: int = 5, copies: int = 1) -> list[Record]:
    """Keys that are sine waves (amplitude, period in events) plus N(0, 0.1²) noise,
    interleaved in time: each of :data:`WAVES` (``copies`` > 1: ``alpha-0``, ...).
    Stationary: a model's error settles and stays, so errors before and after some
    instant compare like for like (a linear model of the change learns the wave's
    recurrence from the lags)."""
    rng = random.Random(seed)
    waves = [
        (name if copies == 1 else f"{name}-{copy}", 100.0 * (i + 1) + copy, amplitude, period)
        for copy in range(copies)
        for i, (name, (amplitude, period)) in enumerate(WAVES.items())
    ]
    records: list[Record] = []
    for step in range(events_per_key):
        for key, level, amplitude, period in waves:
            y = level + amplitude * math.sin(2 * math.pi * step / period)
            value = {"key": key, "ts": START_MS + step * 1000, "y": y + rng.gauss(0.0, 0.1)}
            records.append((key.encode(), orjson.dumps(value), []))
    return records
