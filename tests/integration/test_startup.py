"""Start-up without a broker: the health port answers at once (not ready), the daemon
retries for ``kafka.connect_timeout_s``, then exits 1 with one line on stderr; and a
broker that comes up within that time is used.

Before: no port until connected, and after ~36 s a 43-line traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from service.tools.broker import EmbeddedBroker, free_port
from tests.integration.kafka_helpers import (
    Topics,
    reaped,
    scrape,
    settings_env,
    wait_for,
)

pytestmark = pytest.mark.integration

CONFIG = str(Path(__file__).with_name("pipeline.yaml"))


def _start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "run", "-c", CONFIG],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _probe(port: int, path: str) -> int | None:
    try:
        return scrape(port, path)[0]
    except OSError:
        return None


def test_no_broker_one_line_exit_1_with_the_health_port_up_meanwhile() -> None:
    """Once, not per client: the connection probe is the same for both."""
    port = free_port()
    env = {
        "FORECASTD_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "FORECASTD_KAFKA__CONNECT_TIMEOUT_S": "6",
        "FORECASTD_METRICS__HOST": "127.0.0.1",
        "FORECASTD_METRICS__PORT": str(port),
        "FORECASTD_PROCESSING__LOG_LEVEL": "WARNING",
    }
    started = time.monotonic()
    with reaped(_start(env)) as daemon:
        wait_for(lambda: _probe(port, "/healthz") == 200, 30, "the health port")
        assert _probe(port, "/readyz") == 503
        _, err = daemon.communicate(timeout=60)
    elapsed = time.monotonic() - started
    lines = err.decode().strip().splitlines()
    assert daemon.returncode == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("forecastd: no broker answered at 127.0.0.1:"), lines
    assert 6 <= elapsed < 30


def test_a_broker_that_comes_up_while_retrying_is_used(client: str) -> None:
    broker = EmbeddedBroker()  # not started yet: its port is reserved
    tag = uuid.uuid4().hex[:8]
    topics = Topics(f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"group-{tag}")
    env = {**settings_env(broker, topics, client), "FORECASTD_KAFKA__CONNECT_TIMEOUT_S": "60"}
    port = int(env["FORECASTD_METRICS__PORT"])
    with reaped(_start(env)) as daemon:
        wait_for(lambda: _probe(port, "/readyz") == 503, 30, "the health port, not ready")
        time.sleep(2)
        with broker:
            broker.create_topics([topics.input, topics.output, topics.dlq])
            wait_for(lambda: _probe(port, "/readyz") == 200, 60, "ready once the broker is up")
            daemon.terminate()
            daemon.communicate(timeout=60)
    assert daemon.returncode == 0
