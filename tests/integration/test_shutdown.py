"""SIGTERM in mid-stream, then a restart: nothing committed is lost (at-least-once)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import orjson
import pytest

from service.tools.broker import EmbeddedBroker
from tests.integration.kafka_helpers import (
    committed_offsets,
    consume_all,
    fresh_topics,
    produce,
    reaped,
    settings_env,
    start_daemon,
    wait_for,
)
from tests.integration.streams import linear_trends

pytestmark = pytest.mark.integration


def _run_then_sigterm(env: dict[str, str], meanwhile: Callable[[], None]) -> tuple[int, bytes]:
    """Start ``forecastd run``, call ``meanwhile()``, send SIGTERM; (exit status, output)."""
    with reaped(start_daemon(env)) as daemon:
        meanwhile()
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=60)
    return daemon.returncode, output


def _predicted_sources(bootstrap: str, topic: str) -> set[str]:
    return {orjson.loads(r.value)["source"] for r in consume_all(bootstrap, topic, 10**9, 3.0)}


def test_sigterm_mid_stream_then_restart_loses_no_committed_record(
    broker: EmbeddedBroker, client: str
) -> None:
    topics = fresh_topics(broker)
    stream = linear_trends(events_per_key=2000, seed=3)
    # Small polls and a slow-ish producer keep the daemon busy mid-stream at SIGTERM.
    env = settings_env(broker, topics, client, FORECASTD_KAFKA__MAX_POLL_RECORDS="50")

    def feed_then_interrupt() -> None:
        produce(broker.bootstrap, topics.input, stream[:3000])
        wait_for(lambda: bool(committed_offsets(broker.bootstrap, topics.group)), 60, "a commit")
        produce(broker.bootstrap, topics.input, stream[3000:])

    returncode, output = _run_then_sigterm(env, feed_then_interrupt)
    assert returncode == 0, output.decode()[-2000:]
    assert b"finishing the batch" in output

    committed = committed_offsets(broker.bootstrap, topics.group)
    assert committed, "the first run committed nothing"
    assert sum(committed.values()) < len(stream), "SIGTERM came too late to test mid-stream"
    predicted = _predicted_sources(broker.bootstrap, topics.output)
    for partition, next_offset in committed.items():
        for offset in range(next_offset):
            assert f"{topics.input}:{partition}:{offset}" in predicted

    def until_all_committed() -> None:
        wait_for(
            lambda: sum(committed_offsets(broker.bootstrap, topics.group).values()) >= len(stream),
            90,
            "every offset committed",
        )

    returncode, output = _run_then_sigterm(env, until_all_committed)
    assert returncode == 0, output.decode()[-2000:]
    assert sum(committed_offsets(broker.bootstrap, topics.group).values()) == len(stream)
    inputs = consume_all(broker.bootstrap, topics.input, len(stream))
    every_source = {f"{r.topic}:{r.partition}:{r.offset}" for r in inputs}
    assert every_source <= _predicted_sources(broker.bootstrap, topics.output)
