"""A broker that restarts without its state, on the same address.

The test broker keeps everything in memory, so a restart loses the topics, the
group's offsets and the idempotent producer's identity: what a cluster rebuilt
behind the same address does to a running daemon. Before, kafka-python's producer
failed every record of the next batch (UnknownProducerId, then a fatal error) and the
daemon exited 1; librdkafka's retried them until its delivery timeout, with
``/healthz`` failing meanwhile. Now the batch's failed records go once more on a new
producer (:class:`service.io.sinks.Renewal`), and the same process goes on: it
predicts every record produced after the restart and stays healthy.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from service.tools.broker import EmbeddedBroker
from tests.integration.kafka_helpers import (
    consume_all,
    fresh_topics,
    produce,
    reaped,
    scrape,
    settings_env,
    start_daemon,
    wait_for,
)
from tests.integration.streams import Record, linear_trends

pytestmark = pytest.mark.integration

PARTITIONS = 4
"""As many input partitions as the test broker gives a topic it creates on a client's
metadata request: after the restart the daemon's consumer may ask for the input
topic before the test creates it again. With another count the topic could come back
with more partitions, and kafka-python then keeps the positions of the partitions it
still owns, beyond the new log's end, where the test broker (unlike Kafka, which
answers out of range and the consumer resets) leaves them waiting."""


def _later(records: list[Record], shift_ms: int) -> list[Record]:
    """``records`` with their event times ``shift_ms`` later (the keys go on in time)."""
    out: list[Record] = []
    for key, value, headers in records:
        event = orjson.loads(value or b"{}")
        event["ts"] += shift_ms
        out.append((key, orjson.dumps(event), headers))
    return out


def test_a_broker_restarted_empty_is_used_again_by_the_same_process(
    own_broker: EmbeddedBroker, client: str, tmp_path: Path
) -> None:
    broker = own_broker
    topics = fresh_topics(broker, partitions=PARTITIONS)
    first = linear_trends(events_per_key=100, seed=4)
    then = _later(linear_trends(events_per_key=100, seed=5), shift_ms=10_000_000)
    env = settings_env(
        broker,
        topics,
        client,
        # a delivery timeout (half of it) short enough for the test to wait for
        FORECASTD_KAFKA__FLUSH_TIMEOUT_S="10",
        FORECASTD_METRICS__WATCHDOG_S="30",
    )
    port = int(env["FORECASTD_METRICS__PORT"])
    produce(broker.bootstrap, topics.input, first)
    log = tmp_path / "daemon.log"
    with log.open("wb") as output, reaped(start_daemon(env, output=output)) as daemon:
        assert len(consume_all(broker.bootstrap, topics.output, len(first))) == len(first)

        broker.stop()
        time.sleep(2)
        broker.start()
        broker.create_topics([topics.input], partitions=PARTITIONS)
        broker.create_topics([topics.output, topics.dlq])
        produce(broker.bootstrap, topics.input, then)

        def predicted_all() -> bool:
            found = consume_all(broker.bootstrap, topics.output, len(then), timeout_s=2)
            return len({orjson.loads(r.value)["source"] for r in found}) >= len(then)

        wait_for(predicted_all, 90, "every record after the restart predicted")
        assert daemon.poll() is None, "the daemon exited"
        assert scrape(port, "/healthz")[0] == 200
        renewals = [
            line
            for line in scrape(port)[1].splitlines()
            if line.startswith("forecastd_producer_renewals_total ")
        ]
        assert renewals, "no forecastd_producer_renewals_total"
        assert float(renewals[0].split()[1]) >= 1
        inputs = consume_all(broker.bootstrap, topics.input, len(then))
        outputs = consume_all(broker.bootstrap, topics.output, len(then))
        assert {orjson.loads(r.value)["source"] for r in outputs} == {
            f"{r.topic}:{r.partition}:{r.offset}" for r in inputs
        }
        daemon.terminate()
        daemon.wait(timeout=60)
    text = log.read_text(errors="replace")
    assert daemon.returncode == 0, text[-3000:]
    assert "sending them again on a new producer" in text
