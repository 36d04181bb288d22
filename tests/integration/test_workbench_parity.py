"""Parity: a dataset replayed offline (``forecastd backtest`` and its report) and
through the live daemon over the real broker gives every model the same MAE, RMSE and
R²: what the workbench measures is what the daemon publishes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.tools import replay
from service.tools.backtest import run_backtest
from service.tools.broker import EmbeddedBroker
from service.workbench.report import build
from tests.integration.kafka_helpers import (
    fresh_topics,
    make_settings,
    produce,
    running_daemon,
    scrape,
    settings_env,
    wait_for,
)

pytestmark = pytest.mark.integration

# The integration config's models plus an MLP and the ensemble over them (drift is
# judged per event, so the ensemble's figures do not depend on where polls end).
CONFIG = """\
forecast: {horizon: 1, window: 16, lags: 8, target: change}
models:
  - {name: linear, kind: river.linear, primary: true, params: {lr: 0.005}}
  - {name: ewma, kind: ewma, params: {alpha: 0.5}}
  - {name: last, kind: persistence}
  - {name: mlp, kind: torch.mlp}
  - {name: ensemble, kind: ensemble, publish: true}
"""
STATS = ("mae", "rmse", "r2")
# The MLP computes in float32, and a batch's rows can round differently with the
# batch's shape (the live polls are not the backtest's): its forecasts agree to about
# 1e-7, its scores over a thousand events to about 1e-9. One row scored differently,
# or one more or fewer, moves a score by 1e-4 or more.
RELATIVE = 1e-7


def _done(daemon: Any, records: int) -> bool:
    committed: int = sum(daemon.source.committed.values())
    return committed == records


def test_backtest_report_and_live_daemon_agree(broker: EmbeddedBroker, tmp_path: Path) -> None:
    # One partition: a backtest is one partition task, and so is this daemon.
    topics = fresh_topics(broker, partitions=1)
    config = tmp_path / "parity.yaml"
    config.write_text(CONFIG)
    settings = make_settings(str(config), settings_env(broker, topics))
    pairs = replay.encode(replay.load_input("waterflow"), replay.Columns(), settings.schema_)
    with running_daemon(settings) as daemon:
        wait_for(lambda: scrape(settings.metrics.port, "/readyz")[0] == 200, 60, "readiness")
        produce(broker.bootstrap, topics.input, [(k, v, []) for k, v in pairs])
        wait_for(lambda: _done(daemon, len(pairs)), 120, "all input processed and committed")
        status, text = scrape(settings.metrics.port)
    assert status == 200
    live: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                family.name.startswith("forecastd_model_")
                and sample.labels.get("window") == "total"
            ):
                live[(sample.labels["model"], family.name.removeprefix("forecastd_model_"))] = (
                    sample.value
                )

    records = replay.as_records(pairs, settings.kafka.input_topic)
    offline = run_backtest(records, settings, warmup=0.0).scores
    build(records, settings, tmp_path / "report", warmup=0.0, source="waterflow")
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())["models"]
    assert set(offline) == {"linear", "ewma", "last", "mlp", "ensemble"}
    for model, stats in offline.items():
        assert stats.n > 1000
        for stat in STATS:
            value = getattr(stats, stat)
            expected = pytest.approx(value, rel=RELATIVE, abs=1e-12)
            assert live[(model, stat)] == expected, (model, stat)
            assert report[model]["overall"][stat] == expected, (model, stat)
