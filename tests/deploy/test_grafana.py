"""The Grafana dashboard: loadable, templated on the data source, and covering what an
operator looks for."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .metric_names import label_matchers_used, metric_names_used
from .support import DASHBOARD, INSTALL_HINT, find_tool, run_tool

pytestmark = pytest.mark.deploy


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert board["uid"]
    assert board["title"]
    assert board["id"] is None, "an exported id clashes on import; leave it null"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_panel_queries_prometheus_through_the_datasource_variable() -> None:
    board = dashboard()
    for panel in panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no targets"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}", variable["name"]


def test_dashboard_covers_the_operator_questions() -> None:
    used = metric_names_used(DASHBOARD)
    assert {
        "forecastd_model_mae",
        "forecastd_model_rmse",
        "forecastd_model_r2",
        "forecastd_absolute_error_total",
        "forecastd_scored_total",
        "forecastd_model_info",
        "forecastd_drift_detections_total",
        "forecastd_messages_consumed_total",
        "forecastd_predictions_produced_total",
        "forecastd_invalid_messages_total",
        "forecastd_processing_latency_seconds",
        "forecastd_consumer_lag",
        "forecastd_active_series",
        "forecastd_model_updates_total",
        "forecastd_workers",
        "forecastd_worker_up",
        "forecastd_worker_restarts_total",
        "forecastd_checkpoint_bytes",
        "forecastd_checkpoint_duration_seconds",
        "forecastd_checkpoint_age_seconds",
        "forecastd_restore_duration_seconds",
        "forecastd_restores_total",
    } <= used
    windows = {
        (metric, value)
        for metric, label, _, value in label_matchers_used(DASHBOARD)
        if label == "window"
    }
    for metric in ("forecastd_model_mae", "forecastd_model_rmse", "forecastd_model_r2"):
        assert {(metric, "rolling"), (metric, "total")} <= windows, metric
    exprs = " ".join(t["expr"] for p in panels(dashboard()["panels"]) for t in p.get("targets", []))
    for quantile in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs
    for fragment in (
        'primary="true"',
        'kind="persistence"',
        "by (reason)",
        "by (topic, partition)",
    ):
        assert fragment in exprs


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query, Grafana variables replaced by what Grafana sends."""
    exprs = [t["expr"] for p in panels(dashboard()["panels"]) for t in p.get("targets", [])]
    substituted = [re.sub(r"\$\w+", ".*", expr.replace("$__rate_interval", "2m")) for expr in exprs]
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": f"dashboard:query_{i}:check", "expr": expr}
                    for i, expr in enumerate(substituted)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    promtool = find_tool(
        "promtool", f"promtool comes with Debian's prometheus package: {INSTALL_HINT}"
    )
    out = run_tool([promtool, "check", "rules", str(path)])
    assert f"SUCCESS: {len(exprs)} rules found" in out
