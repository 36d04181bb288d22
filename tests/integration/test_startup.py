"""Start-up without a broker: the health port answers at once (not ready), the daemon
retries for ``kafka.connect_timeout_s``, then exits 1 with one line on stderr; and a
broker that comes up within that time is used. Start-up without the input topic: the
daemon waits for it, not ready, and does not create it.

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
    consume_all,
    produce,
    reaped,
    scrape,
    settings_env,
    start_daemon,
    topic_names,
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


def test_a_missing_input_topic_is_waited_for_not_created(
    broker: EmbeddedBroker, client: str, tmp_path: Path
) -> None:
    """Before: the lag probe's metadata request named the topic, and Tansu (as Kafka
    with ``auto.create.topics.enable``) created it with 4 partitions; the daemon was
    ready on an empty topic nobody writes to. Tansu creates a topic a metadata request
    names even when the client asks it not to, so this holds only because nothing
    names the topic before it exists. The dead-letter topic is missing too: a warning
    names it (a broker that does not create topics on write would refuse it)."""
    tag = uuid.uuid4().hex[:8]
    topics = Topics(f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"group-{tag}")
    broker.create_topics([topics.output])
    env = settings_env(broker, topics, client)
    port = int(env["FORECASTD_METRICS__PORT"])
    log = tmp_path / "daemon.log"
    with log.open("wb") as output:
        daemon = start_daemon(env, CONFIG, output)
        with reaped(daemon):
            wait_for(lambda: "does not exist" in log.read_text(), 60, "the warning")
            time.sleep(3)  # more than one recheck and one lag interval
            assert _probe(port, "/readyz") == 503
            assert topics.input not in topic_names(broker.bootstrap)
            broker.create_topics([topics.input], partitions=2)
            wait_for(lambda: _probe(port, "/readyz") == 200, 60, "ready once the topic exists")
            values = [b'{"ts": 1700000000000, "y": 1.0}', b'{"ts": 1700000060000, "y": 2.0}']
            produce(broker.bootstrap, topics.input, [(b"a", value, []) for value in values])
            assert len(consume_all(broker.bootstrap, topics.output, 1)) >= 1
            daemon.terminate()
            daemon.wait(timeout=60)
    text = log.read_text()
    assert daemon.returncode == 0, text
    warning = next(line for line in text.splitlines() if "does not exist" in line)
    assert f"kafka.input_topic 'in-{tag}' does not exist" in warning
    assert "input topic" in text.split(warning, 1)[1]  # "... exists now"
    assert f"kafka.dead_letter_topic 'dlq-{tag}' does not exist" in text
    assert "kafka.output_topic" not in text
