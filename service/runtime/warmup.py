"""Load what the models import on first use before the heap is frozen.

The daemon serves with its start-up heap frozen (:func:`service.runtime.app.frozen_heap`):
a full garbage collection then walks only the objects made while serving. But the
models are built on the first poll (``schema.features: auto`` must see records
first), and their first steps import more: PyTorch's optimizer machinery, and what
else the pipeline touches only once values arrive. Those imports left
their module-lifetime objects (functions, closures, type annotations), many times
the objects a few keys' state makes, unfrozen in the collector's oldest generation,
so every full collection while serving walked them again, each landing on whichever
batch triggered it (README "Throughput, workers and latency"; ``bench.latency``
shows the collections).

:func:`warm_up` runs a few hundred synthetic events through a throwaway
:class:`~service.pipeline.processor.Processor` (the real pipeline, the configured
models, a list sink and a registry of its own), so those imports happen before the
freeze; the throwaway itself is garbage by then and collected. Models seed
themselves from ``processing.seed``, so the warm-up changes no prediction.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.io.fields import put
from service.io.sinks import ListSink
from service.pipeline.processor import Processor
from service.records import RawRecord
from service.runtime.metrics import Metrics

log = logging.getLogger(__name__)

KEYS = 2
EVENTS_PER_KEY = 200
"""Enough for every model to learn and take optimizer steps, and for season
detection's first test (at 48, 96 and 192 values)."""


def synthetic_records(settings: Settings) -> list[RawRecord]:
    """``KEYS`` series of ``EVENTS_PER_KEY`` hourly events, with every configured
    feature (none under ``schema.features: auto``), on one partition of a topic no
    broker has."""
    schema = settings.schema_
    features = () if schema.features == "auto" else schema.features
    start_ms = 1_700_000_000_000
    records: list[RawRecord] = []
    for step in range(EVENTS_PER_KEY):
        for key in range(KEYS):
            value: dict[str, Any] = {}
            put(value, schema.key_field, f"warm-up-{key}")
            put(value, schema.time_field, start_ms + step * 3_600_000)
            put(value, schema.target_field, float(key + (step % 24) + 0.1 * (step % 7)))
            if features:
                x = {name: float(step % 5) for name in features}
                if schema.features_field:
                    put(value, schema.features_field, x)
                else:  # a flat record
                    value.update(x)
            records.append(
                RawRecord(
                    "forecastd-warm-up",
                    0,
                    len(records),
                    None,
                    orjson.dumps(value),
                    (),
                    None,
                    time.monotonic(),
                )
            )
    return records


def warm_up(settings: Settings) -> None:
    """Run :func:`synthetic_records` through a throwaway processor (module docstring)."""
    started = time.perf_counter()
    processor = Processor(settings, ListSink(), Metrics(CollectorRegistry(), settings))
    processor.process(synthetic_records(settings))
    log.debug("warm-up took %.2fs", time.perf_counter() - started)
