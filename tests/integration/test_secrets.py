"""Secrets against the real broker: a password that looks like YAML is used as the
string it is (the daemon connects and gets ready), and nothing the process prints
ever contains a secret, whether the config is good or not.

Before: ``[abc]`` became a list, an invalid ``{...`` was quoted in the error, a
misspelt option reached kafka-python, whose traceback printed it with its value,
and a wrong-typed ``FORECASTD_KAFKA__SECURITY`` ended with "(got '<the value>')".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from service.tools.broker import EmbeddedBroker
from tests.integration.kafka_helpers import (
    fresh_topics,
    reaped,
    scrape,
    settings_env,
    wait_for,
)

pytestmark = pytest.mark.integration

CONFIG = str(Path(__file__).with_name("pipeline.yaml"))
SECRET = "s3cr3t-Value"  # noqa: S105 - the value looked for in every output


def _run(env: dict[str, str], until_ready: bool) -> tuple[int, str]:
    """Exit status and everything the process wrote (to a file: a pipe nobody reads
    while waiting for readiness would fill and block the daemon's logging)."""
    with tempfile.TemporaryFile() as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "service", "run", "-c", CONFIG],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        with reaped(daemon):
            if until_ready:
                port = int(env["FORECASTD_METRICS__PORT"])
                wait_for(lambda: _ready(port), 60, "readiness")
                daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        log.seek(0)
        return daemon.returncode, log.read().decode(errors="replace")


def _ready(port: int) -> bool:
    try:
        return scrape(port, "/readyz")[0] == 200
    except OSError:
        return False


@pytest.mark.parametrize("password", [f"[{SECRET}]", f"{{{SECRET}"])
def test_a_yaml_looking_password_is_a_string_and_never_printed(
    broker: EmbeddedBroker, password: str
) -> None:
    env = settings_env(
        broker,
        fresh_topics(broker, partitions=1),
        FORECASTD_KAFKA__SECURITY__SECURITY_PROTOCOL="PLAINTEXT",
        FORECASTD_KAFKA__SECURITY__SASL_PLAIN_USERNAME="forecastd",
        FORECASTD_KAFKA__SECURITY__SASL_PLAIN_PASSWORD=password,
        FORECASTD_PROCESSING__LOG_LEVEL="DEBUG",
    )
    returncode, output = _run(env, until_ready=True)
    assert returncode == 0, output[-2000:]
    assert SECRET not in output


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"FORECASTD_KAFKA__SECURITY__SASL_PLAIN_PASWORD": SECRET}, "sasl_plain_pasword"),
        ({"FORECASTD_KAFKA__SECURITY": SECRET}, "kafka.security"),
        ({"FORECASTD_KAFKA__SECURITY": "{sasl_plain_password: " + SECRET}, "SECURITY"),
    ],
)
def test_a_bad_security_config_exits_2_naming_the_key_only(
    broker: EmbeddedBroker, extra: dict[str, str], named: str
) -> None:
    env = settings_env(broker, fresh_topics(broker, partitions=1), **extra)
    returncode, output = _run(env, until_ready=False)
    assert returncode == 2, output[-2000:]
    assert named in output
    assert SECRET not in output
    assert len(output.strip().splitlines()) == 1
