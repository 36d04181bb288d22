"""The daemon's process-level helpers."""

from __future__ import annotations

import gc
import multiprocessing
import socket
import threading
import time
from collections.abc import Sequence

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.io.sinks import ListSink
from service.io.sources import ListSource
from service.pipeline.processor import BatchResult, Processor
from service.records import RawRecord
from service.runtime.app import (
    Interrupted,
    await_topic,
    frozen_heap,
    run_loop,
    transactional_id,
)
from service.runtime.metrics import Metrics


def test_the_start_up_heap_is_frozen_while_serving_and_released_after() -> None:
    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() > before  # imported modules, models: left alone
        garbage: list[object] = []
        garbage.append(garbage)  # a cycle made while serving is still collectable
        del garbage
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0


def test_the_transactional_id_is_stable_per_host_and_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same process restarted in its place gets the same id (so it fences its
    predecessor); a pod's workers get different ones (service.runtime.workers names
    their processes forecastd-worker-<index>)."""
    settings = Settings.model_validate({"kafka": {"group_id": "fc"}})
    assert transactional_id(settings) == f"fc-{socket.gethostname()}"
    named = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"transactional_id": "fc-pod-0"})}
    )
    assert transactional_id(named) == "fc-pod-0"
    monkeypatch.setattr(multiprocessing.current_process(), "name", "forecastd-worker-3")
    assert transactional_id(named) == "fc-pod-0-3"


class _SlowPolls(ListSource):
    """A broker that holds every fetch for ``WAIT_S``, as a fetch wait does."""

    WAIT_S = 0.05

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        time.sleep(self.WAIT_S)
        return super().poll(max_records, timeout_s)


class _SlowBatches(Processor):
    """Every batch takes at least ``WORK_S`` more than its records need."""

    WORK_S = 0.03

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        time.sleep(self.WORK_S)
        return super().process(records)


def test_loop_busy_counts_the_turns_outside_the_poll() -> None:
    """``forecastd_loop_busy_seconds_total`` holds every batch's work and none of the
    polls' waits: bounded below by the batches' known work, above by the run's wall
    time less the polls' known waits."""
    settings = Settings.model_validate(
        {
            "kafka": {"max_poll_records": 5},
            "models": [{"name": "last", "kind": "persistence", "primary": True}],
        }
    )
    registry = CollectorRegistry()
    metrics = Metrics(registry, settings)
    sink = ListSink()
    processor = _SlowBatches(settings, sink, metrics)
    records = [
        RawRecord("ticks", 0, i, b"k", orjson.dumps({"ts": i, "y": float(i)}), (), 1000 + i)
        for i in range(40)
    ]
    source = _SlowPolls(records, processor)
    started = time.monotonic()
    run_loop(settings, source, sink, processor, metrics, lambda: False)
    wall = time.monotonic() - started
    batches = registry.get_sample_value("forecastd_batches_total")
    busy = registry.get_sample_value("forecastd_loop_busy_seconds_total")
    assert batches == 8
    assert busy is not None
    assert busy >= batches * _SlowBatches.WORK_S
    assert busy <= wall - batches * _SlowPolls.WAIT_S


class _Listing:
    """Stands in for the lag client's ``topics()`` (the broker side of the wait is
    tests/integration/test_startup.py's): answers in turn, an exception raised."""

    def __init__(self, *answers: set[str] | Exception) -> None:
        self.answers = list(answers)
        self.asked = 0

    def topics(self) -> set[str]:
        self.asked += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_input_topic_is_waited_for_through_broker_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = _Listing({"other"}, OSError("broker away"), {"other", "ticks"})
    with caplog.at_level("INFO", logger="service.runtime.app"):
        listed = await_topic(client, "ticks", threading.Event(), recheck_s=0.0)
    assert listed == {"other", "ticks"}
    assert client.asked == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1  # once, not per recheck
    assert "kafka.input_topic 'ticks' does not exist" in warnings[0]
    assert any("exists now" in r.getMessage() for r in caplog.records)


def test_a_stop_ends_the_wait_for_the_input_topic() -> None:
    stop = threading.Event()
    client = _Listing({"other"})
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(Interrupted, match="waiting for the input topic 'ticks'"):
        await_topic(client, "ticks", stop, recheck_s=60.0)
    assert time.monotonic() - started < 10  # not the 60 s recheck
    timer.join()


def test_an_existing_input_topic_is_not_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    client = _Listing({"ticks"})
    with caplog.at_level("INFO", logger="service.runtime.app"):
        assert await_topic(client, "ticks", threading.Event()) == {"ticks"}
    assert client.asked == 1
    assert not caplog.records
