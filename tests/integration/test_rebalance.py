"""Two replicas in one consumer group split the partitions; nothing is lost or mixed."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from service.app import Daemon
from service.broker import EmbeddedBroker, free_port
from tests.integration.kafka_helpers import (
    consume_all,
    fresh_topics,
    make_settings,
    produce,
    running_daemon,
    settings_env,
    wait_for,
)
from tests.integration.streams import linear_trends

pytestmark = pytest.mark.integration

CONFIG = str(Path(__file__).with_name("pipeline.yaml"))


def test_a_second_replica_takes_partitions_and_every_record_is_predicted(
    broker: EmbeddedBroker, client: str
) -> None:
    topics = fresh_topics(broker, partitions=4)
    stream = linear_trends(events_per_key=300, seed=9)
    env = settings_env(broker, topics, client)
    first = make_settings(CONFIG, env)
    second = make_settings(CONFIG, {**env, "FORECASTD_METRICS__PORT": str(free_port())})
    with running_daemon(first) as one:
        wait_for(lambda: len(one.processor.tasks) == 4, 60, "the first replica owns all")
        produce(broker.bootstrap, topics.input, stream[: len(stream) // 2])
        with running_daemon(second) as two:
            wait_for(lambda: len(two.processor.tasks) > 0, 60, "the second replica joins")
            wait_for(
                lambda: len(one.processor.tasks) + len(two.processor.tasks) == 4,
                60,
                "the partitions are split",
            )
            owned_one, owned_two = set(one.processor.tasks), set(two.processor.tasks)
            produce(broker.bootstrap, topics.input, stream[len(stream) // 2 :])
            wait_for(lambda: _committed(one, two) >= len(stream), 90, "every record committed")
    assert owned_one
    assert owned_two
    assert not owned_one & owned_two, "a partition is owned by both replicas"
    inputs = consume_all(broker.bootstrap, topics.input, len(stream))
    predictions = consume_all(broker.bootstrap, topics.output, len(stream))
    sources = [orjson.loads(r.value)["source"] for r in predictions]
    every_input = {f"{r.topic}:{r.partition}:{r.offset}" for r in inputs}
    assert set(sources) == every_input  # at-least-once: none missing, none invented


def _committed(*daemons: Daemon) -> int:
    """Next offsets committed per partition, the newest over the replicas, summed."""
    newest: dict[tuple[str, int], int] = {}
    for daemon in daemons:
        for tp, offset in daemon.source.committed.items():
            newest[tp] = max(newest.get(tp, 0), offset)
    return sum(newest.values())
