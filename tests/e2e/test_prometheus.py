"""A real Prometheus scrapes a real daemon fed through the real broker.

Prometheus (Debian's package, installed by ``deploy/tools/install.sh``) runs on
loopback with the project's scrape config and recording rules; the test reads its
HTTP API, and checks the metric names the rules and the dashboard use against the
daemon's own ``/metrics`` page.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.tools.broker import EmbeddedBroker, free_port
from tests.deploy.metric_names import POD_ONLY, check_names, exported_names, metric_names_used
from tests.integration.kafka_helpers import (
    fresh_topics,
    make_settings,
    produce,
    running_daemon,
    scrape,
    settings_env,
    wait_for,
)
from tests.integration.streams import linear_trends

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = str(ROOT / "tests" / "integration" / "pipeline.yaml")


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    """Start Prometheus scraping a given metrics port every second; yields a starter."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run deploy/tools/install.sh (make tools)")
    processes: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{target_port}"]}]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        processes.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url), 30, "Prometheus ready")
        return url

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as reply:  # noqa: S310
            return int(reply.status) == 200
    except OSError:
        return False


def query(url: str, expr: str) -> list[dict[str, Any]]:
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(address, timeout=5) as reply:  # noqa: S310
        body = json.load(reply)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_sees_the_daemons_scores_and_the_rules_evaluate(
    broker: EmbeddedBroker, prometheus_for: Any
) -> None:
    topics = fresh_topics(broker)
    settings = make_settings(
        CONFIG, settings_env(broker, topics, FORECASTD_KAFKA__MAX_POLL_RECORDS="100")
    )
    stream = linear_trends(events_per_key=300, seed=5)
    with running_daemon(settings) as daemon:
        url = prometheus_for(settings.metrics.port)
        # A scrape before, during and after the stream: rate() needs increases to see.
        wait_for(lambda: bool(query(url, 'up{job="forecastd"} == 1')), 30, "a first scrape")
        produce(broker.bootstrap, topics.input, stream[: len(stream) // 2])
        wait_for(lambda: bool(query(url, "forecastd_scored_total > 0")), 60, "a mid-stream scrape")
        produce(broker.bootstrap, topics.input, stream[len(stream) // 2 :])
        wait_for(
            lambda: sum(daemon.source.committed.values()) >= len(stream), 90, "stream processed"
        )
        own = daemon.processor.pooled_scores()["linear"][0].mae
        selector = 'forecastd_model_mae{job="forecastd",model="linear",window="total"}'

        def scraped_final() -> bool:
            result = query(url, selector)
            return bool(result) and math.isclose(float(result[0]["value"][1]), own, rel_tol=1e-9)

        wait_for(scraped_final, 30, "Prometheus to scrape the final MAE")

        def recorded() -> float:
            result = query(url, 'forecastd:model_mae:rate5m{model="linear"}')
            return float(result[0]["value"][1]) if result else math.nan

        # NaN (0/0) until two scrapes bracket an increase of the counters
        wait_for(lambda: math.isfinite(recorded()), 30, "the recording rule to yield a value")
        assert recorded() > 0
        up = query(url, 'up{job="forecastd"}')
        assert float(up[0]["value"][1]) == 1.0
        status, page = scrape(settings.metrics.port)
    assert status == 200
    exported = exported_names(page)
    used = metric_names_used(
        PROMETHEUS_DIR / "rules.yml", ROOT / "deploy" / "grafana" / "forecastd.json"
    )
    # a single-process daemon; test_workers checks a pod's page for all of them
    missing = check_names(used - POD_ONLY, exported)
    assert missing == [], f"rules/dashboard use names the daemon does not export: {missing}"
