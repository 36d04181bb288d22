"""The spine end to end through the real broker: predictions, dead letters, metrics."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.tools.broker import EmbeddedBroker
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


def _consumed(daemon: Any) -> float:
    return daemon.registry.get_sample_value("forecastd_messages_consumed_total") or 0.0


def _done(daemon: Any, records: int) -> bool:
    """All ``records`` consumed and their batches committed (so scored and learned)."""
    committed = sum(daemon.source.committed.values())
    return _consumed(daemon) >= records and committed == records


def test_every_event_gets_one_typed_prediction_and_linear_beats_persistence(
    broker: EmbeddedBroker, client: str
) -> None:
    topics = fresh_topics(broker)
    stream = linear_trends(events_per_key=600)
    # Micro-batches of at most 100 records: models learn between batches, so smaller
    # batches let them adapt sooner on this short stream.
    env = settings_env(broker, topics, client, FORECASTD_KAFKA__MAX_POLL_RECORDS="100")
    settings = make_settings(CONFIG, env)
    with running_daemon(settings) as daemon:
        produce(broker.bootstrap, topics.input, stream)
        wait_for(lambda: _done(daemon, len(stream)), 90, "all input processed")
        out = consume_all(broker.bootstrap, topics.output, len(stream))
        scores = daemon.processor.pooled_scores()
    assert len(out) == len(stream)
    inputs = {orjson.loads(value or b"")["ts"] for _, value, _ in stream}
    seen_sources = set()
    for record in out:
        prediction = orjson.loads(record.value)
        assert set(prediction) == {
            "key",
            "ts",
            "horizon",
            "y_hat",
            "lower",
            "upper",
            "model",
            "model_version",
            "leader",
            "source",
            "produced_at",
        }
        assert prediction["leader"] is None  # only an ensemble has a leading member
        assert record.key.decode() == prediction["key"]
        assert prediction["key"] in {"alpha", "beta", "gamma"}
        assert isinstance(prediction["ts"], int)
        assert prediction["ts"] in inputs
        assert prediction["horizon"] == 1
        assert isinstance(prediction["y_hat"], float)
        assert math.isfinite(prediction["y_hat"])
        for bound in ("lower", "upper"):
            assert prediction[bound] is None or isinstance(prediction[bound], float)
        if prediction["lower"] is not None:
            assert prediction["lower"] <= prediction["upper"]
        assert prediction["model"] == "linear"
        assert isinstance(prediction["model_version"], int)
        assert isinstance(prediction["produced_at"], int)
        topic, partition, offset = prediction["source"].rsplit(":", 2)
        assert topic == topics.input
        assert int(partition) in range(3)
        assert int(offset) >= 0
        seen_sources.add(prediction["source"])
    assert len(seen_sources) == len(stream), "each input event is predicted exactly once"
    linear_total, _ = scores["linear"]
    last_total, _ = scores["last"]
    assert linear_total.n == last_total.n == len(stream) - 3
    assert linear_total.mae < 0.5 * last_total.mae, (linear_total.mae, last_total.mae)


def _malformed(count: int) -> tuple[list[Any], dict[bytes, str]]:
    """``count`` bad records of twelve kinds; each carries a ``case`` header id."""
    oversized = orjson.dumps({"key": "alpha", "y": 1.0, "pad": "x" * 3000})
    kinds: list[tuple[str, bytes | None, bytes | None]] = [
        ("empty", b"alpha", None),
        ("oversized", b"alpha", oversized),
        ("not_json", b"alpha", b"{this is not json"),
        ("not_object", b"alpha", b"[1, 2, 3]"),
        ("missing_key", None, b'{"y": 1.0}'),
        ("bad_key", None, b'{"key": [1], "y": 1.0}'),
        ("missing_target", b"alpha", b'{"ts": 1}'),
        ("bad_target", b"alpha", b'{"y": "12.5"}'),
        ("non_finite", b"alpha", b'{"y": NaN}'),
        ("bad_time", b"alpha", b'{"y": 1.0, "ts": "yesterday"}'),
        ("bad_features", b"alpha", b'{"y": 1.0, "x": "b"}'),
        ("out_of_order", b"alpha", orjson.dumps({"y": 1.0, "ts": START_MS - 10_000})),
    ]
    records, expected = [], {}
    for index in range(count):
        reason, key, value = kinds[index % len(kinds)]
        case = str(index).encode()
        records.append((key, value, [("case", case)]))
        expected[case] = reason
    return records, expected


def test_malformed_records_go_to_the_dead_letter_topic_with_reasons(
    broker: EmbeddedBroker, client: str
) -> None:
    topics = fresh_topics(broker)
    valid = linear_trends(events_per_key=200)
    bad, expected = _malformed(1000)
    stream = list(valid[:3])  # every key exists before an out_of_order record arrives
    rest = valid[3:]
    for index in range(max(len(rest), len(bad))):
        if index < len(rest):
            stream.append(rest[index])
        if index < len(bad):
            stream.append(bad[index])
    env = settings_env(broker, topics, client, FORECASTD_SCHEMA__MAX_MESSAGE_BYTES="2048")
    settings = make_settings(CONFIG, env)
    with running_daemon(settings) as daemon:
        produce(broker.bootstrap, topics.input, stream)
        wait_for(lambda: _done(daemon, len(stream)), 90, "all input processed")
        dead = consume_all(broker.bootstrap, topics.dlq, len(bad))
        out = consume_all(broker.bootstrap, topics.output, len(valid))
        invalid = {
            reason: daemon.registry.get_sample_value(
                "forecastd_invalid_messages_total", {"reason": reason}
            )
            for reason in set(expected.values())
        }
    assert len(dead) == len(bad)
    by_reason: dict[str, int] = defaultdict(int)
    for record in dead:
        headers = dict(record.headers)
        reason = headers["forecastd.error.reason"].decode()
        assert reason == expected[headers["case"]]
        assert headers["forecastd.source.topic"].decode() == topics.input
        assert int(headers["forecastd.source.partition"]) in range(3)
        assert int(headers["forecastd.source.offset"]) >= 0
        by_reason[reason] += 1
    index = int(dict(dead[0].headers)["case"])
    assert dead[0].value == (bad[index][1] or b"")
    assert len(by_reason) == 12
    assert invalid == dict(by_reason)
    inputs = consume_all(broker.bootstrap, topics.input, len(stream))
    valid_sources = {
        f"{r.topic}:{r.partition}:{r.offset}" for r in inputs if "case" not in dict(r.headers)
    }
    assert len(valid_sources) == len(valid)
    assert len(out) == len(valid)
    assert {orjson.loads(r.value)["source"] for r in out} == valid_sources


def _lag_lines(text: str) -> list[str]:
    """One ``forecastd_consumer_lag`` sample per partition, once known."""
    return [line for line in text.splitlines() if line.startswith("forecastd_consumer_lag{")]


def _caught_up(text: str) -> bool:
    """A lag sample for each of the three partitions, all 0."""
    lines = _lag_lines(text)
    return len(lines) == 3 and all(line.endswith(" 0.0") for line in lines)


def _recompute(inputs: list[Any], predictions: list[Any]) -> dict[str, dict[str, float]]:
    """MAE, MSE, RMSE, R² per model from the topics alone (horizon 1)."""
    following: dict[str, float] = {}
    last_of_key: dict[tuple[int, str], str] = {}
    for record in sorted(inputs, key=lambda r: (r.partition, r.offset)):
        source = f"{record.topic}:{record.partition}:{record.offset}"
        key = record.key.decode()
        previous = last_of_key.get((record.partition, key))
        if previous is not None:
            following[previous] = orjson.loads(record.value)["y"]
        last_of_key[(record.partition, key)] = source
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for record in predictions:
        p = orjson.loads(record.value)
        if p["source"] in following:
            pairs[p["model"]].append((following[p["source"]], p["y_hat"]))
    scores = {}
    for model, values in pairs.items():
        ys = [y for y, _ in values]
        mean = sum(ys) / len(ys)
        sse = sum((y - y_hat) ** 2 for y, y_hat in values)
        sst = sum((y - mean) ** 2 for y in ys)
        mse = sse / len(values)
        scores[model] = {
            "mae": sum(abs(y - y_hat) for y, y_hat in values) / len(values),
            "mse": mse,
            "rmse": math.sqrt(mse),
            "r2": 1 - sse / sst,
        }
    return scores


def test_scraped_scores_equal_scores_recomputed_from_the_topics(
    broker: EmbeddedBroker, client: str
) -> None:
    topics = fresh_topics(broker)
    stream = linear_trends(events_per_key=300, seed=11)
    env = settings_env(
        broker,
        topics,
        client,
        FORECASTD_MODELS__1__PUBLISH="true",
        FORECASTD_MODELS__2__PUBLISH="true",
    )
    settings = make_settings(CONFIG, env)
    with running_daemon(settings) as daemon:
        wait_for(lambda: scrape(settings.metrics.port, "/readyz")[0] == 200, 60, "readiness")
        produce(broker.bootstrap, topics.input, stream)
        wait_for(lambda: _done(daemon, len(stream)), 90, "all input processed")
        # lag is refreshed about once a second, from the broker's high watermarks
        wait_for(lambda: _caught_up(scrape(settings.metrics.port)[1]), 10, "lag 0 everywhere")
        status, text = scrape(settings.metrics.port)
        assert scrape(settings.metrics.port, "/healthz")[0] == 200
    assert status == 200
    inputs = consume_all(broker.bootstrap, topics.input, len(stream))
    predictions = consume_all(broker.bootstrap, topics.output, 3 * len(stream))
    expected = _recompute(inputs, predictions)
    scraped: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in {f"forecastd_model_{m}" for m in ("mae", "mse", "rmse", "r2")}:
            for sample in family.samples:
                if sample.labels["window"] == "total":
                    scraped[(sample.labels["model"], family.name)] = sample.value
    assert set(expected) == {"linear", "ewma", "last"}
    for model, values in expected.items():
        for stat, value in values.items():
            got = scraped[(model, f"forecastd_model_{stat}")]
            assert got == pytest.approx(value, rel=1e-6, abs=1e-9), (model, stat)
    assert "forecastd_processing_latency_seconds_bucket" in text
    assert all(f'topic="{topics.input}"' in line for line in _lag_lines(text))
