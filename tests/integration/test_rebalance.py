"""Two replicas in one consumer group split the partitions; nothing is lost or mixed."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from service.runtime.app import Daemon
from service.tools.broker import EmbeddedBroker, free_port
from tests.integration.kafka_helpers import (
    consume_all,
    fresh_topics,
    make_settings,
    produce,
    running_daemon,
    scrape,
    settings_env,
    wait_for,
)
from tests.integration.streams import START_MS, linear_trends

pytestmark = pytest.mark.integration

CONFIG = str(Path(__file__).with_name("pipeline.yaml"))


# Each of the two rebalance scenarios with one client, the two clients between them
# (the suite keeps within its time; the scenarios share the daemon's rebalance code).
@pytest.mark.parametrize("client", ["kafka-python"])
def test_a_second_replica_takes_partitions_and_every_record_is_predicted(
    broker: EmbeddedBroker, client: str
) -> None:
    topics = fresh_topics(broker, partitions=4)
    stream = linear_trends(events_per_key=300, seed=9)
    env = settings_env(broker, topics, client)
    first = make_settings(CONFIG, env)
    second = make_settings(CONFIG, {**env, "FORECASTD_METRICS__PORT": str(free_port())})
    with running_daemon(first) as one:
        wait_for(lambda: len(one.processor.owned) == 4, 60, "the first replica owns all")
        produce(broker.bootstrap, topics.input, stream[: len(stream) // 2])
        with running_daemon(second) as two:
            wait_for(lambda: len(two.processor.owned) > 0, 60, "the second replica joins")
            wait_for(
                lambda: len(one.processor.owned) + len(two.processor.owned) == 4,
                60,
                "the partitions are split",
            )
            owned_one, owned_two = set(one.processor.owned), set(two.processor.owned)
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


def test_a_replica_with_no_partitions_is_ready(broker: EmbeddedBroker, client: str) -> None:
    """More replicas than partitions: the idle one is in the group and healthy, so it is
    ready (cooperative rebalancing tells a member only of partitions it gains)."""
    topics = fresh_topics(broker, partitions=1)
    env = settings_env(broker, topics, client)
    first = make_settings(CONFIG, env)
    second = make_settings(CONFIG, {**env, "FORECASTD_METRICS__PORT": str(free_port())})
    with running_daemon(first) as one, running_daemon(second) as two:
        wait_for(lambda: len(one.processor.owned) + len(two.processor.owned) == 1, 60, "owned")
        for settings in (first, second):
            port = settings.metrics.port
            wait_for(lambda p=port: scrape(p, "/readyz")[0] == 200, 30, f"ready on {port}")


def _committed(*daemons: Daemon) -> int:
    """Next offsets committed per partition, the newest over the replicas, summed."""
    newest: dict[tuple[str, int], int] = {}
    for daemon in daemons:
        for tp, offset in daemon.source.committed.items():
            newest[tp] = max(newest.get(tp, 0), offset)
    return sum(newest.values())


@pytest.mark.parametrize("client", ["confluent"])
def test_partitions_a_replica_keeps_through_rebalances_keep_their_models(
    broker: EmbeddedBroker, client: str
) -> None:
    """A second replica joins, then leaves: the partitions the first one owns all along
    keep their tasks, so their model_version never goes back (eager rebalancing
    revoked every partition at each rebalance and restarted every model from zero)."""
    topics = fresh_topics(broker, partitions=4)
    stream = _many_keys(keys=12, events_per_key=60)
    third = len(stream) // 3
    env = settings_env(broker, topics, client)
    first = make_settings(CONFIG, env)
    second = make_settings(CONFIG, {**env, "FORECASTD_METRICS__PORT": str(free_port())})
    with running_daemon(first) as one:
        wait_for(lambda: len(one.processor.owned) == 4, 60, "the first replica owns all")
        produce(broker.bootstrap, topics.input, stream[:third])
        wait_for(lambda: _committed(one) >= third, 60, "the first third committed")
        with running_daemon(second) as two:
            wait_for(
                lambda: (
                    len(one.processor.owned) + len(two.processor.owned) == 4
                    and len(two.processor.owned) > 0
                ),
                60,
                "the partitions are split",
            )
            kept = {tp[1] for tp in one.processor.owned}
            produce(broker.bootstrap, topics.input, stream[third : 2 * third])
            wait_for(lambda: _committed(one, two) >= 2 * third, 60, "two thirds committed")
        wait_for(lambda: len(one.processor.owned) == 4, 60, "the first replica owns all again")
        produce(broker.bootstrap, topics.input, stream[2 * third :])
        wait_for(lambda: _committed(one) >= len(stream), 60, "everything committed")
    assert kept
    predictions = consume_all(broker.bootstrap, topics.output, len(stream))
    versions: dict[int, list[int]] = {}
    for record in predictions:  # one output partition: production order
        prediction = orjson.loads(record.value)
        partition = int(prediction["source"].rsplit(":", 2)[1])
        versions.setdefault(partition, []).append(prediction["model_version"])
    assert kept <= set(versions), "a kept partition got no records: use more keys"
    for partition in kept:
        history = versions[partition]
        assert history == sorted(history), f"partition {partition} lost its model"
        assert history[-1] > 0


def _many_keys(
    keys: int, events_per_key: int
) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """Enough keys that each of 4 partitions gets some (murmur2 of the key)."""
    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
    for step in range(events_per_key):
        for index in range(keys):
            key = f"series-{index}"
            value = {"key": key, "ts": START_MS + step * 1000, "y": 10.0 * index + 0.5 * step}
            records.append((key.encode(), orjson.dumps(value), []))
    return records
