"""Issue 13's poison records among valid ones: the daemon stays up, predicts every
valid event and dead-letters each poison record once, with a reason.

Before the fix each of these records stopped the daemon at its offset, again after
every restart (RecursionError, OverflowError, UnicodeEncodeError), or could never be
dead-lettered (a 2 MB value through a producer limited to 1 MiB).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from service.records import dead_letter_value_limit
from service.tools.broker import EmbeddedBroker
from tests.integration.kafka_helpers import (
    consume_all,
    fresh_topics,
    make_settings,
    running_daemon,
    settings_env,
    wait_for,
)
from tests.integration.streams import linear_trends

pytestmark = pytest.mark.integration

CONFIG = str(Path(__file__).with_name("pipeline.yaml"))

TWO_MB = 2 * 1024 * 1024

POISON: list[tuple[bytes, bytes, str]] = [
    (b"nested", b"[" * 100_000 + b"]" * 100_000, "not_json"),
    (b"deep-y", b'{"y": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "not_json"),
    (b"huge-ts", b'{"y": 1, "ts": 1' + b"0" * 399 + b"}", "bad_time"),
    (b"", b'{"key": "\\ud800", "y": 1, "ts": 1700000000000}', "bad_key"),
    (b"bad-feature", b'{"y": 1, "ts": 1700000000000, "x": {"\\ud800": 1}}', "bad_features"),
    (b"big", b'{"y": 1, "pad": "' + b"x" * TWO_MB + b'"}', "oversized"),
]


def test_poison_records_are_dead_lettered_and_the_rest_predicted(
    broker: EmbeddedBroker, client: str
) -> None:
    topics = fresh_topics(broker, partitions=1)
    valid = linear_trends(events_per_key=40, seed=5)
    half = len(valid) // 2
    records = [(k, v) for k, v, _ in valid[:half]]
    records += [(key or None, value) for key, value, _ in POISON]
    records += [(k, v) for k, v, _ in valid[half:]]
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", max_request_size=3 * TWO_MB
    )
    for key, value in records:
        producer.send(topics.input, key=key, value=value)
    producer.flush()
    producer.close()

    settings = make_settings(CONFIG, settings_env(broker, topics, client))
    with running_daemon(settings) as daemon:
        wait_for(
            lambda: sum(daemon.source.committed.values()) == len(records),
            60,
            "every record committed",
        )
        invalid = {
            reason: daemon.registry.get_sample_value(
                "forecastd_invalid_messages_total", {"reason": reason}
            )
            for _, _, reason in POISON
        }
    predictions = consume_all(broker.bootstrap, topics.output, len(valid))
    dead = consume_all(broker.bootstrap, topics.dlq, len(POISON))

    assert len({orjson.loads(r.value)["source"] for r in predictions}) == len(valid)
    assert len(dead) == len(POISON)
    reasons = {dict(r.headers)["forecastd.error.reason"].decode() for r in dead}
    assert reasons == {reason for _, _, reason in POISON}
    assert invalid == {
        "not_json": 2,
        "bad_time": 1,
        "bad_key": 1,
        "bad_features": 1,
        "oversized": 1,
    }
    (oversized,) = [r for r in dead if dict(r.headers)["forecastd.error.reason"] == b"oversized"]
    headers = dict(oversized.headers)
    assert int(headers["forecastd.error.original_size"]) == len(POISON[-1][1])
    limit = settings.schema_.max_message_bytes
    assert len(oversized.value) == dead_letter_value_limit(limit)
    size = len(oversized.key or b"") + len(oversized.value)
    assert size + sum(len(n) + len(v) for n, v in oversized.headers) < limit
    assert POISON[-1][1].startswith(oversized.value)
