"""Live explanations: a sampled share of the primary model's predictions gets a record
on the explanations topic, with the features that moved it most."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from models.base import FeatureBatch
from service.config import Settings
from service.errors import ConfigError
from service.io.sinks import ListSink
from service.io.sources import ListSource
from service.pipeline.explanations import contributions
from service.pipeline.processor import Processor
from service.runtime.app import run_loop
from service.runtime.metrics import Metrics
from service.tools import replay
from tests.service.workbench.test_explain import DRIVERS, synthetic


def _run(config: dict[str, Any], events: int = 1500) -> tuple[Settings, ListSink]:
    settings = Settings.model_validate(config)
    sink = ListSink()
    processor = Processor(settings, sink, Metrics(CollectorRegistry(), settings))
    records = replay.as_records(synthetic(events), settings.kafka.input_topic)
    run_loop(
        settings, ListSource(records, processor), sink, processor, processor._metrics, lambda: False
    )
    return settings, sink


BASE = {"forecast": {"horizon": 0, "target": "level", "calendar": False}}


def test_off_by_default_nothing_extra_is_sent() -> None:
    settings, sink = _run(
        {**BASE, "models": [{"name": "linear", "kind": "river.linear", "primary": True}]}, 300
    )
    assert settings.explanations.topic is None
    assert sink.on(settings.kafka.output_topic)
    assert {r.topic for r in sink.records} <= {
        settings.kafka.output_topic,
        settings.kafka.dead_letter_topic,
    }


def test_sampled_predictions_name_the_features_that_drive_them() -> None:
    config = {
        **BASE,
        "explanations": {"topic": "explained", "sample": 0.5, "top": 3},
        "models": [
            {"name": "ensemble", "kind": "ensemble", "primary": True},
            {"name": "last", "kind": "persistence"},
            {"name": "linear", "kind": "river.linear"},
        ],
    }
    settings, sink = _run(config)
    predictions = [orjson.loads(r.value) for r in sink.on(settings.kafka.output_topic)]
    explained = [orjson.loads(r.value) for r in sink.on("explained")]
    by_source = {p["source"]: p for p in predictions}
    assert 0.4 * len(predictions) < len(explained) < 0.6 * len(predictions)
    for record in explained:
        prediction = by_source[record["source"]]
        assert record["key"] == prediction["key"]
        assert record["y_hat"] == prediction["y_hat"]
        assert record["explained"] == prediction["leader"]
        assert len(record["attributions"]) == 3
    late = [r for r in explained[len(explained) // 2 :] if r["explained"] == "linear"]
    assert len(late) > 100
    hits = [{a["feature"] for a in r["attributions"]} >= DRIVERS for r in late]
    assert np.mean(hits) > 0.8


def test_occlusion_of_a_linear_function_is_weight_times_input() -> None:
    class Linear:
        updates = 0
        w = np.array([2.0, -1.0, 0.5])

        def predict(self, batch: FeatureBatch) -> Any:
            return batch.x @ self.w

    x = np.array([[1.0, 3.0, -2.0]])
    batch = FeatureBatch(x, np.zeros((1, 2)), np.zeros(1), ["k"], ["a", "b", "c"], np.array([2.0]))
    got = contributions(Linear(), batch, 0)  # type: ignore[arg-type]
    assert got.tolist() == pytest.approx((Linear.w * x[0] * 2.0).tolist())


def test_a_bad_sample_share_is_a_config_error() -> None:
    from service.config import load_settings

    with pytest.raises(ConfigError, match=r"explanations\.sample"):
        load_settings(None, env={"FORECASTD_EXPLANATIONS__SAMPLE": "1.5"})
