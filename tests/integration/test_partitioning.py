"""Predictions land in the output partition Kafka's Java client would pick, with
either client: consumers of a multi-partition output topic find a key in one place."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from service.io.partitioner import positive_murmur2
from service.tools.broker import EmbeddedBroker
from tests.integration.kafka_helpers import (
    consume_all,
    fresh_topics,
    make_settings,
    produce,
    running_daemon,
    settings_env,
    wait_for,
)
from tests.integration.streams import Record

pytestmark = pytest.mark.integration

CONFIG = str(Path(__file__).with_name("pipeline.yaml"))
OUTPUT_PARTITIONS = 4


def test_keys_are_partitioned_with_murmur2(broker: EmbeddedBroker, client: str) -> None:
    topics = fresh_topics(broker, partitions=2, output_partitions=OUTPUT_PARTITIONS)
    keys = [f"sensor-{i}".encode() for i in range(24)]
    stream: list[Record] = [
        (key, orjson.dumps({"ts": 1_700_000_000_000 + step, "y": float(step)}), [])
        for step in range(5)
        for key in keys
    ]
    settings = make_settings(CONFIG, settings_env(broker, topics, client))
    with running_daemon(settings) as daemon:
        produce(broker.bootstrap, topics.input, stream)
        wait_for(lambda: sum(daemon.source.committed.values()) == len(stream), 60, "processed")
    out = consume_all(broker.bootstrap, topics.output, len(stream))
    assert len(out) == len(stream)
    placed = {(record.key, record.partition) for record in out}
    expected = {(key, positive_murmur2(key) % OUTPUT_PARTITIONS) for key in keys}
    assert placed == expected
    assert len({partition for _, partition in placed}) > 1  # the keys really spread out
