"""Issue 13's clock, value and key-flood findings, through the real broker and daemon.

* one event dated 2100 is dead-lettered as ``future_time`` and moves nothing: its
  key's later, correct events are predicted (before, every one was ``out_of_order``);
* one ``y = 1e300`` is dead-lettered as ``outlier``; every exported score stays finite
  and the stream goes on (before, it overflowed the scaler and every score);
* a flood of distinct keys over three partitions never holds more than
  ``forecast.max_keys`` keys in the process (before, the cap was per partition).
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

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
from tests.integration.streams import START_MS, linear_trends

pytestmark = pytest.mark.integration

CONFIG = str(Path(__file__).with_name("pipeline.yaml"))
YEAR_2100_MS = 4_102_444_800_000


def test_a_wrong_clock_and_an_absurd_value_cost_one_record_each(
    broker: EmbeddedBroker, client: str
) -> None:
    topics = fresh_topics(broker, partitions=1)
    valid = linear_trends(events_per_key=60, seed=3)
    half = len(valid) // 2
    bad: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = [
        (b"alpha", orjson.dumps({"key": "alpha", "ts": YEAR_2100_MS, "y": 1.0}), []),
        (b"beta", orjson.dumps({"key": "beta", "ts": START_MS + 30_500, "y": 1e300}), []),
    ]
    records = valid[:half] + bad + valid[half:]
    produce(broker.bootstrap, topics.input, records)
    settings = make_settings(CONFIG, settings_env(broker, topics, client))
    with running_daemon(settings) as daemon:
        wait_for(
            lambda: sum(daemon.source.committed.values()) == len(records),
            60,
            "every record committed",
        )
        samples = [
            sample.value
            for metric in daemon.registry.collect()
            if metric.name.startswith("forecastd_")
            for sample in metric.samples
        ]
    predictions = consume_all(broker.bootstrap, topics.output, len(valid))
    dead = consume_all(broker.bootstrap, topics.dlq, 2)
    reasons = sorted(dict(r.headers)["forecastd.error.reason"].decode() for r in dead)
    assert reasons == ["future_time", "outlier"]
    predicted = [orjson.loads(r.value) for r in predictions]
    assert len({p["source"] for p in predicted}) == len(valid)
    later_up = [p for p in predicted if p["key"] == "alpha" and p["ts"] >= START_MS + 30_000]
    assert len(later_up) == 30  # the key's clock did not move to 2100
    assert all(math.isfinite(value) for value in samples)


def test_a_flood_of_keys_stays_under_the_process_cap(broker: EmbeddedBroker) -> None:
    topics = fresh_topics(broker, partitions=3)
    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = [
        (f"k{i}".encode(), orjson.dumps({"key": f"k{i}", "ts": START_MS + i, "y": 1.0}), [])
        for i in range(600)
    ]
    produce(broker.bootstrap, topics.input, records)
    env = settings_env(broker, topics, FORECASTD_FORECAST__MAX_KEYS="50")
    settings = make_settings(CONFIG, env)
    held: list[float] = []
    with running_daemon(settings) as daemon:

        def done() -> bool:
            held.append(daemon.registry.get_sample_value("forecastd_active_series") or 0.0)
            return sum(daemon.source.committed.values()) == len(records)

        wait_for(done, 60, "every record committed")
        evicted = daemon.registry.get_sample_value("forecastd_evicted_series_total")
    assert max(held) <= 50
    assert held[-1] == 50
    assert evicted == len(records) - 50
