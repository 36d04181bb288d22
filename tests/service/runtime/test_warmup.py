"""The warm-up before the heap is frozen: what the models import on their first steps
is frozen with the rest of the start-up heap, and no prediction changes.

The first test runs in fresh interpreters (``spawn``): in this one, other tests have
long since imported everything, so there would be nothing left to warm up. It counts
objects, never time.
"""

from __future__ import annotations

import gc
import multiprocessing

import orjson

from service.config import Settings
from service.io.decode import Decoder
from service.io.sinks import ListSink
from service.pipeline.processor import Processor
from service.records import Event, RawRecord
from service.runtime.app import default_registry, frozen_heap
from service.runtime.metrics import Metrics
from service.runtime.warmup import synthetic_records, warm_up

SETTINGS = Settings()  # the built-in default: the ensemble, River and torch members


def _records(count: int) -> list[RawRecord]:
    return [
        RawRecord(
            "ticks",
            0,
            i,
            f"k{i % 3}".encode(),
            orjson.dumps({"ts": 1_700_000_000_000 + i * 60_000, "y": (i % 11) * 1.5 + i / 50}),
            (),
            None,
            0.0,
        )
        for i in range(count)
    ]


def _unfrozen_old_objects_after_first_batch(warm: bool) -> int:
    """In a fresh process: serve the first batch with the heap frozen as the daemon
    does (after the warm-up, or not); the objects the collector's oldest generation
    then holds, which every full collection walks."""
    processor = Processor(SETTINGS, ListSink(), Metrics(default_registry(), SETTINGS))
    if warm:
        warm_up(SETTINGS)
    with frozen_heap():
        processor.process(_records(300))
        gc.collect(1)  # what survives young collections moves on, as while serving
        return len(gc.get_objects(2))


def test_the_warm_up_leaves_the_models_first_imports_frozen() -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as pool:
        cold = pool.apply(_unfrozen_old_objects_after_first_batch, (False,))
    with context.Pool(1, maxtasksperchild=1) as pool:
        warm = pool.apply(_unfrozen_old_objects_after_first_batch, (True,))
    assert warm < cold / 10, (warm, cold)


def _outputs(processor: Processor, sink: ListSink) -> list[dict[str, object]]:
    processor.process(_records(400))
    sink.flush()
    values = [orjson.loads(r.value) for r in sink.records]
    for value in values:
        value.pop("produced_at", None)
    return values


def test_the_warm_up_changes_no_prediction() -> None:
    sink = ListSink()
    before = _outputs(Processor(SETTINGS, sink, Metrics(default_registry(), SETTINGS)), sink)
    warm_up(SETTINGS)
    sink = ListSink()
    after = _outputs(Processor(SETTINGS, sink, Metrics(default_registry(), SETTINGS)), sink)
    assert len(before) > 300
    assert after == before


def test_the_synthetic_records_carry_every_configured_feature() -> None:
    settings = Settings.model_validate({"schema": {"features": ["load", "temp"]}})
    values = [orjson.loads(r.value or b"") for r in synthetic_records(settings)]
    assert all(set(v["x"]) == {"load", "temp"} for v in values)
    assert len({v["key"] for v in values}) >= 2


def test_the_synthetic_records_of_a_flat_schema_carry_their_features_beside_the_target() -> None:
    schema = {"features": ["load", "temp"], "features_field": ""}
    settings = Settings.model_validate({"schema": schema})
    values = [orjson.loads(r.value or b"") for r in synthetic_records(settings)]
    assert all(set(v) == {"key", "ts", "y", "load", "temp"} for v in values)


def test_the_synthetic_records_of_a_nested_schema_decode() -> None:
    schema = {
        "key_field": "/meta/sensor",
        "time_field": "/meta/at",
        "target_field": "/reading/value",
        "features_field": "/reading/x",
        "features": ["temp"],
    }
    settings = Settings.model_validate({"schema": schema})
    decoder = Decoder(settings.schema_)
    decoded = [decoder.decode(r) for r in synthetic_records(settings)]
    assert all(isinstance(d, Event) for d in decoded), decoded[:1]
    assert {d.key for d in decoded if isinstance(d, Event)} >= {"warm-up-0", "warm-up-1"}
