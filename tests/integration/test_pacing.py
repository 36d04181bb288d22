"""A trickle is not held back by the fetch wait tuned for quiet topics.

The test broker answers a fetch that finds no data only after ``fetch_max_wait_ms``
(as some Kafka-compatible brokers do), so without :mod:`service.io.pacing` a record
arriving at a random moment waits for much of it before its poll (this test fails
with the pacer turned off). With a configured wait of 500 ms, the
median latency of a live trickle (input broker timestamp to the prediction's
``produced_at``) must stay under a tenth of it.
A ratio to the setting, not an absolute time. kafka-python only: librdkafka fixes its
fetch wait when the consumer is created (see service/io/pacing.py).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from service.tools.broker import EmbeddedBroker
from tests.integration.kafka_helpers import (
    consume_all,
    fresh_topics,
    make_settings,
    running_daemon,
    settings_env,
    wait_for,
)

pytestmark = pytest.mark.integration

CONFIG = str(Path(__file__).with_name("pipeline.yaml"))
FETCH_WAIT_MS = 500
WARM, TRICKLE = 5, 30


def test_a_trickle_waits_far_less_than_the_idle_fetch_wait(broker: EmbeddedBroker) -> None:
    topics = fresh_topics(broker, partitions=1)
    env = settings_env(broker, topics, FORECASTD_KAFKA__FETCH_MAX_WAIT_MS=str(FETCH_WAIT_MS))
    settings = make_settings(CONFIG, env)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)

    def send(step: int) -> None:
        value = orjson.dumps({"key": "k", "ts": 1_700_000_000_000 + step * 1000, "y": step % 7})
        producer.send(topics.input, key=b"k", value=value).get(timeout=10)

    with running_daemon(settings) as daemon:
        wait_for(lambda: daemon.processor.assignments > 0, 60, "an assignment")
        for step in range(WARM):  # the first batch builds the models: not measured
            send(step)
        wait_for(lambda: sum(daemon.source.committed.values()) >= WARM, 60, "the warm-up")
        for step in range(WARM, WARM + TRICKLE):
            send(step)
            time.sleep(0.1)
        wait_for(lambda: sum(daemon.source.committed.values()) >= WARM + TRICKLE, 60, "the trickle")
    producer.close()
    inputs = consume_all(broker.bootstrap, topics.input, WARM + TRICKLE)
    sent_at = {f"{r.topic}:{r.partition}:{r.offset}": r.timestamp for r in inputs}
    outputs = [orjson.loads(r.value) for r in consume_all(broker.bootstrap, topics.output, 35)]
    latencies = [
        p["produced_at"] - sent_at[p["source"]]
        for p in outputs
        if int(p["source"].rsplit(":", 1)[1]) >= WARM
    ]
    assert len(latencies) == TRICKLE
    assert statistics.median(latencies) < FETCH_WAIT_MS / 10, sorted(latencies)
