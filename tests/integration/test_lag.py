"""The lag gauge is measured off the processing loop: while the loop is held inside a
batch, records that arrive still show as lag, and the watchdog fails /healthz.

Before, the loop itself refreshed the gauge between batches, so a loop stuck in a
broker call reported its last value (often 0) however many records waited.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from service.pipeline.processor import BatchResult, Processor
from service.records import RawRecord
from service.runtime.app import Daemon
from service.runtime.lag import lag_client, probe
from service.tools.broker import EmbeddedBroker
from tests.integration.kafka_helpers import (
    fresh_topics,
    make_settings,
    produce,
    running_daemon,
    scrape,
    settings_env,
    wait_for,
)
from tests.integration.streams import linear_trends, sine_waves

pytestmark = pytest.mark.integration

CONFIG = str(Path(__file__).with_name("pipeline.yaml"))


def _lag(daemon: Daemon, topic: str) -> float:
    return sum(
        daemon.registry.get_sample_value(
            "forecastd_consumer_lag", {"topic": topic, "partition": str(p)}
        )
        or 0.0
        for p in range(2)
    )


def test_lag_grows_while_the_loop_is_held_and_healthz_fails(
    broker: EmbeddedBroker, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = fresh_topics(broker, partitions=2)
    stream = linear_trends(events_per_key=100, seed=2)
    release = threading.Event()
    original = Processor.process

    def held(self: Processor, records: Sequence[RawRecord]) -> BatchResult:
        if any(record.topic == topics.input for record in records):
            release.wait(60)  # the loop is stuck inside its first batch (not the warm-up's)
        return original(self, records)

    monkeypatch.setattr(Processor, "process", held)
    env = settings_env(
        broker,
        topics,
        client,
        FORECASTD_KAFKA__MAX_POLL_RECORDS="10",
        FORECASTD_METRICS__WATCHDOG_S="3",
    )
    settings = make_settings(CONFIG, env)
    port = settings.metrics.port
    try:
        with running_daemon(settings) as daemon:
            wait_for(lambda: len(daemon.processor.owned) == 2, 60, "both partitions")
            produce(broker.bootstrap, topics.input, stream)
            # The loop holds at most one batch of 10; the rest must show as lag.
            wait_for(lambda: _lag(daemon, topics.input) >= len(stream) - 10, 30, "the lag to show")
            wait_for(lambda: scrape(port, "/healthz")[0] == 503, 20, "/healthz to fail")
            release.set()
            wait_for(lambda: sum(daemon.source.committed.values()) == len(stream), 60, "all done")
            wait_for(lambda: _lag(daemon, topics.input) == 0, 20, "the lag to drain")
            assert scrape(port, "/healthz")[0] == 200
    finally:
        release.set()


def test_a_loop_that_keeps_up_is_measured_from_its_own_polls(
    broker: EmbeddedBroker, client: str
) -> None:
    """While records flow and the loop keeps up, the monitor reads the loop's own
    watermarks and fetches nothing itself: its client decoding the records the loop is
    about to read would hold the GIL the loop needs (``service.runtime.lag``). Once the
    partitions fall idle it fetches them again (nothing to decode), and reads 0."""
    topics = fresh_topics(broker, partitions=2)
    stream = sine_waves(events_per_key=120, copies=2)  # 6 keys, on both partitions
    keys = 6
    settings = make_settings(
        CONFIG, settings_env(broker, topics, client, FORECASTD_KAFKA__LAG_INTERVAL_S="0.5")
    )
    fetches: list[float] = []

    def processed(count: int) -> bool:
        return sum(daemon.processor.positions.values()) == count

    with running_daemon(settings) as daemon:
        wait_for(lambda: len(daemon.processor.owned) == 2, 60, "both partitions")
        warm = 20 * keys
        produce(broker.bootstrap, topics.input, stream[:warm])
        wait_for(lambda: processed(warm), 60, "the first records processed")
        lag_client = daemon.lag._client
        fetch = lag_client.poll

        def counted(*args: Any, **kwargs: Any) -> Any:
            fetches.append(time.monotonic())
            return fetch(*args, **kwargs)

        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        try:
            for step, start in enumerate(range(warm, len(stream), keys)):
                # Counted from 1.4 s in: every partition has had records lately, and a
                # fetch of the idle spell before (at most a second of polls) is over.
                if step == 40:
                    lag_client.poll = counted
                for key, value, _ in stream[start : start + keys]:
                    producer.send(topics.input, key=key, value=value)
                producer.flush()
                time.sleep(0.03)
        finally:
            lag_client.poll = fetch
            producer.close()
        assert fetches == []
        wait_for(lambda: processed(len(stream)), 60, "all processed")
        wait_for(lambda: _lag(daemon, topics.input) == 0, 20, "the lag to read 0 once idle")


def test_the_reachability_probe_asks_for_the_input_topic_only(broker: EmbeddedBroker) -> None:
    """``topics()`` fetched every topic's metadata each interval; the probe names the
    input topic, so its answer stays small whatever else the cluster holds."""
    topics = fresh_topics(broker, partitions=2)  # the output and dead-letter topics too
    settings = make_settings(CONFIG, settings_env(broker, topics))
    client = lag_client(settings.kafka, 10.0)
    try:
        assert {topics.output, topics.dlq} <= client.topics()  # every topic, asked for
        probe(client, topics.input)
        assert client._cluster.topics() == {topics.input}  # what the last answer held
        assert client._cluster.partitions_for_topic(topics.input) == {0, 1}
    finally:
        client.close()
