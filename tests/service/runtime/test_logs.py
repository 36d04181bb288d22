"""``processing.log_format: json``: every line a process writes on standard error is
one JSON object, its last words included; text stays as it was."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import orjson

from service.runtime.logs import JsonFormatter
from service.tools.broker import free_port


def test_a_line_with_an_exception_carries_its_traceback_and_worker() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = orjson.loads(JsonFormatter(worker=3).format(record))
    assert (line["level"], line["logger"], line["message"], line["worker"]) == (
        "ERROR",
        "x",
        "failed",
        3,
    )
    assert line["exception"].startswith("Traceback")
    assert "ValueError: bad value" in line["exception"]


def _run_without_a_broker(log_format: str) -> list[str]:
    env = {
        **os.environ,
        "FORECASTD_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "FORECASTD_KAFKA__CONNECT_TIMEOUT_S": "1",
        "FORECASTD_METRICS__HOST": "127.0.0.1",
        "FORECASTD_METRICS__PORT": str(free_port()),
        "FORECASTD_PROCESSING__LOG_FORMAT": log_format,
    }
    done = subprocess.run(
        [sys.executable, "-m", "service", "run"], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 1
    return done.stderr.decode().strip().splitlines()


def test_json_logs_hold_the_last_words_of_a_daemon_that_cannot_start() -> None:
    lines = [orjson.loads(line) for line in _run_without_a_broker("json")]
    assert lines[-1]["level"] == "ERROR"
    assert lines[-1]["message"].startswith("no broker answered at 127.0.0.1:")
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    text = _run_without_a_broker("text")
    assert text[-1].startswith("forecastd: no broker answered at 127.0.0.1:")
