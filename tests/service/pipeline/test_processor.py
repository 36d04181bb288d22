"""The processing loop offline: list source -> processor -> list sink, same code as live."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.io.sinks import ListSink
from service.io.sources import ListSource
from service.pipeline.processor import Processor, discover_features
from service.pipeline.tasks import PartitionTask, TaskOutput
from service.records import Event, RawRecord
from service.runtime.app import run_loop
from service.runtime.metrics import Metrics

SETTINGS = Settings.model_validate(
    {
        "kafka": {"max_poll_records": 10},
        "forecast": {"window": 8, "lags": 4},
        "models": [
            {"name": "lin", "kind": "river.linear", "primary": True},
            {"name": "last", "kind": "persistence", "publish": True},
        ],
        "scoring": {"interval_min_samples": 5},
    }
)


def _run(records: list[RawRecord]) -> tuple[Processor, ListSource, ListSink, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(registry, SETTINGS)
    sink = ListSink()
    processor = Processor(SETTINGS, sink, metrics)
    source = ListSource(records, processor)
    run_loop(SETTINGS, source, sink, processor, metrics, lambda: False)
    return processor, source, sink, registry


def _record(partition: int, offset: int, value: bytes, key: bytes | None = b"k") -> RawRecord:
    return RawRecord("ticks", partition, offset, key, value, (("trace", b"1"),), 1000 + offset)


def test_valid_and_invalid_records_all_end_up_somewhere() -> None:
    records = [_record(0, i, orjson.dumps({"ts": i, "y": float(i % 5)})) for i in range(40)]
    records.append(_record(0, 40, b"garbage"))
    records += [_record(1, i, orjson.dumps({"ts": i, "y": 1.0}), b"other") for i in range(10)]
    _, source, sink, registry = _run(records)
    predictions = [orjson.loads(r.value) for r in sink.on("predictions")]
    assert len(predictions) == 2 * 50  # primary + published shadow
    assert {p["model"] for p in predictions} == {"lin", "last"}
    assert [p for p in predictions if p["lower"] is not None], "intervals appear once scored"
    dead = sink.on("ticks.dlq")
    assert len(dead) == 1
    assert dead[0].value == b"garbage"
    headers = dict(dead[0].headers)
    assert headers["trace"] == b"1"  # original headers kept
    assert headers["forecastd.error.reason"] == b"not_json"
    assert headers["forecastd.source.offset"] == b"40"
    assert source.committed == {("ticks", 0): 41, ("ticks", 1): 10}
    assert (
        registry.get_sample_value("forecastd_invalid_messages_total", {"reason": "not_json"}) == 1
    )
    assert registry.get_sample_value("forecastd_messages_consumed_total") == 51
    assert registry.get_sample_value("forecastd_predictions_produced_total", {"model": "lin"}) == 50
    # counted once per poll, summed over its partitions: both partitions' predictions
    assert registry.get_sample_value("forecastd_predictions_total", {"model": "lin"}) == 50
    assert registry.get_sample_value("forecastd_active_series") == 2
    mae = registry.get_sample_value("forecastd_model_mae", {"model": "last", "window": "total"})
    assert mae is not None
    assert mae > 0


def test_revoked_partitions_drop_their_state_and_others_keep_it() -> None:
    registry = CollectorRegistry()
    processor = Processor(SETTINGS, ListSink(), Metrics(registry, SETTINGS))
    processor.on_assigned([("ticks", 0), ("ticks", 1)])
    processor.process([_record(0, 0, b'{"y": 1}'), _record(1, 0, b'{"y": 2}', b"b")])
    kept = processor.tasks[("ticks", 1)]
    processor.on_revoked([("ticks", 0)])
    assert list(processor.tasks) == [("ticks", 1)]
    assert processor.tasks[("ticks", 1)] is kept
    processor.on_assigned([("ticks", 0)])
    assert processor.tasks[("ticks", 0)].active_series == 0  # fresh, nothing mixed in
    assert kept.active_series == 1
    assert registry.get_sample_value("forecastd_assigned_partitions") == 2


def test_the_key_cap_holds_for_the_whole_process_least_recent_keys_first() -> None:
    """A flood of distinct keys over three partitions: the process never holds more
    than ``forecast.max_keys`` keys, though each partition alone stays under it."""
    settings = SETTINGS.model_copy(
        update={"forecast": SETTINGS.forecast.model_copy(update={"max_keys": 50})}
    )
    registry = CollectorRegistry()
    metrics = Metrics(registry, settings)
    processor = Processor(settings, ListSink(), metrics)
    held = []
    for batch in range(10):
        records = [
            _record(
                p,
                batch * 30 + i,
                orjson.dumps({"ts": batch, "y": 1.0}),
                f"k{p}-{batch}-{i}".encode(),
            )
            for p in range(3)
            for i in range(30)
        ]
        processor.process(records)
        held.append(processor.active_series)
    assert max(held) == 50
    newest = {f"k{p}-9-{i}" for p in range(3) for i in range(30)}
    kept = {key for task in processor.tasks.values() for key in task._windows.keys()}  # noqa: SIM118
    assert len(kept & newest) == 50  # the last batch's keys are the most recent
    assert registry.get_sample_value("forecastd_evicted_series_total") == 10 * 90 - 50


def test_an_event_whose_processing_raises_is_dead_lettered_and_the_rest_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The per-record guard: a task that raises on one event (here, any batch holding
    y == 13) costs that record only, as internal_error with the exception's type."""
    original = PartitionTask.process

    def process(self: PartitionTask, events: Sequence[Event]) -> TaskOutput:
        if any(event.y == 13.0 for event in events):
            raise ValueError("a message that may quote data")
        return original(self, events)

    monkeypatch.setattr(PartitionTask, "process", process)
    records = [_record(0, i, orjson.dumps({"ts": i, "y": float(i)})) for i in range(30)]
    _, source, sink, registry = _run(records)
    primary = [orjson.loads(r.value) for r in sink.on("predictions")]
    predicted = {p["source"] for p in primary if p["model"] == "lin"}
    assert predicted == {f"ticks:0:{i}" for i in range(30) if i != 13}
    (dead,) = sink.on("ticks.dlq")
    headers = dict(dead.headers)
    assert headers["forecastd.error.reason"] == b"internal_error"
    assert headers["forecastd.error.detail"] == b"ValueError"
    assert headers["forecastd.source.offset"] == b"13"
    internal = {"reason": "internal_error"}
    assert registry.get_sample_value("forecastd_invalid_messages_total", internal) == 1
    assert source.committed == {("ticks", 0): 30}


def test_an_oversized_record_is_dead_lettered_truncated_with_its_size() -> None:
    settings = SETTINGS.model_copy(
        update={"schema_": SETTINGS.schema_.model_copy(update={"max_message_bytes": 100})}
    )
    sink = ListSink()
    processor = Processor(settings, sink, Metrics(CollectorRegistry(), settings))
    value = b'{"y": 1, "pad": "' + b"x" * 500 + b'"}'
    processor.process([_record(0, 0, value)])
    sink.flush()
    (dead,) = sink.on("ticks.dlq")
    headers = dict(dead.headers)
    assert headers["forecastd.error.reason"] == b"oversized"
    assert headers["forecastd.error.original_size"] == str(len(value)).encode()
    assert dead.value == value[:50]  # half the limit: room for key and headers
    assert headers["trace"] == b"1"


def test_horizon_zero_polls_of_nothing_but_first_values_seed_their_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With ``h = 0`` and ``target: change`` a key's first value has nothing to change
    from: it seeds the key and gets no prediction. A poll holding nothing else (a live
    trickle, one record per poll, as new keys arrive) is no error: the built-in
    ensemble with every member goes on, and each later event is predicted once."""
    settings = Settings.model_validate({"forecast": {"horizon": 0}})
    sink = ListSink()
    processor = Processor(settings, sink, Metrics(CollectorRegistry(), settings))
    offsets = iter(range(100))
    for keys in (["a"], ["b", "c"], ["a"], ["d"], ["b", "c", "d"], ["a"]):
        values = [orjson.dumps({"ts": 1000 * i, "y": 1.0 + i, "x": {"f": i}}) for i in range(3)]
        records = [_record(0, next(offsets), values[i], k.encode()) for i, k in enumerate(keys)]
        processor.acknowledged(processor.process(records))
    sink.flush()
    assert not sink.on("ticks.dlq")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    published = [orjson.loads(r.value)["source"] for r in sink.on("predictions")]
    # offsets 0-2 and 4 are the keys' first values; 3 and 5-8 come after one
    assert published == [f"ticks:0:{i}" for i in (3, 5, 6, 7, 8)]


@pytest.mark.parametrize(
    ("schema", "found"),
    [
        ({}, ("load",)),
        ({"numeric_text": True}, ("load", "price")),
        ({"features_field": ""}, ("extra",)),
        ({"features_field": "", "numeric_text": True}, ("extra", "quote")),
    ],
)
def test_auto_features_are_the_numbers_of_x_or_of_a_flat_record(
    schema: dict[str, object], found: tuple[str, ...]
) -> None:
    value = {
        "key": "a",
        "ts": 1_700_000_000_000,
        "y": 1.0,
        "extra": 3,
        "quote": "4.25",
        "note": "n/a",
        "x": {"load": 2.5, "price": "43210.55", "colour": "red"},
    }
    settings = Settings.model_validate({"schema": schema})
    records = [RawRecord("ticks", 0, 0, b"a", orjson.dumps(value))]
    assert discover_features(records, settings.schema_) == found
