"""A broker that stops answering mid-stream (SIGSTOP: connections stay open, nothing
comes back, as with a hung broker or a network partition).

Issue 13 stopped the broker for 150 s: the daemon froze in an unbounded flush,
ignored SIGTERM, and kept /healthz at 200. Here the watchdog and the grace period are
shortened (3 s) so the same sequence takes seconds: /healthz and /readyz turn 503
while the broker is stopped, SIGTERM ends the process within the grace period (exit
1 if a flush could not complete, never committing past what the broker took), and a
restart once the broker is back predicts every record (at-least-once).
"""

from __future__ import annotations

import os
import signal
import time

import orjson
import pytest

from service.tools.broker import EmbeddedBroker
from tests.integration.kafka_helpers import (
    committed_offsets,
    consume_all,
    fresh_topics,
    produce,
    reaped,
    scrape,
    settings_env,
    start_daemon,
    wait_for,
)
from tests.integration.streams import linear_trends

pytestmark = pytest.mark.integration


def _status(port: int, path: str) -> int | None:
    try:
        return scrape(port, path)[0]
    except OSError:
        return None


def test_stalled_broker_fails_health_obeys_sigterm_and_loses_nothing(
    own_broker: EmbeddedBroker, client: str
) -> None:
    broker = own_broker
    topics = fresh_topics(broker, partitions=2)
    stream = linear_trends(events_per_key=1500, seed=4)
    env = settings_env(
        broker,
        topics,
        client,
        FORECASTD_KAFKA__MAX_POLL_RECORDS="20",
        FORECASTD_KAFKA__SHUTDOWN_GRACE_S="3",
        FORECASTD_KAFKA__CLOSE_TIMEOUT_S="2",
        FORECASTD_METRICS__WATCHDOG_S="3",
        FORECASTD_METRICS__READY_STALE_S="3",
    )
    port = int(env["FORECASTD_METRICS__PORT"])
    produce(broker.bootstrap, topics.input, stream)
    daemon = start_daemon(env)
    pid = broker._process.pid if broker._process is not None else 0
    stopped = False
    try:
        wait_for(
            lambda: sum(committed_offsets(broker.bootstrap, topics.group).values()) > 0,
            60,
            "a first commit",
        )
        assert _status(port, "/healthz") == 200
        # Mid-stream, or the test would prove nothing.
        assert sum(committed_offsets(broker.bootstrap, topics.group).values()) < len(stream)
        os.kill(pid, signal.SIGSTOP)
        stopped = True
        wait_for(lambda: _status(port, "/healthz") == 503, 20, "/healthz to fail")
        wait_for(lambda: _status(port, "/readyz") == 503, 10, "/readyz to fail")
        assert "stuck" in scrape(port, "/healthz")[1]
        daemon.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()
        output, _ = daemon.communicate(timeout=30)
        exit_s = time.monotonic() - sigterm_at
    finally:
        if daemon.poll() is None:
            daemon.kill()
        if stopped:
            os.kill(pid, signal.SIGCONT)
    text = output.decode()
    assert daemon.returncode in (0, 1), text[-2000:]
    assert exit_s < 15, f"took {exit_s:.1f}s to obey SIGTERM"
    assert "Traceback" not in text, text[-3000:]
    if daemon.returncode == 1:
        assert "did not complete" in text.strip().splitlines()[-1]

    # The broker is back: a new process predicts every record, none is lost (taking
    # the rest in large polls: how fast it drains is not the point).
    with reaped(start_daemon({**env, "FORECASTD_KAFKA__MAX_POLL_RECORDS": "500"})) as restarted:
        wait_for(
            lambda: sum(committed_offsets(broker.bootstrap, topics.group).values()) == len(stream),
            90,
            "every record committed after the restart",
        )
        restarted.send_signal(signal.SIGTERM)
        restarted.communicate(timeout=30)
    assert restarted.returncode == 0
    inputs = consume_all(broker.bootstrap, topics.input, len(stream))
    predictions = consume_all(broker.bootstrap, topics.output, len(stream), timeout_s=60)
    predicted = {orjson.loads(r.value)["source"] for r in predictions}
    assert {f"{r.topic}:{r.partition}:{r.offset}" for r in inputs} <= predicted
