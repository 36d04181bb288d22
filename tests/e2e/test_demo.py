"""``forecastd demo`` end to end: broker, data, daemon, live table, summary; Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.e2e


def _demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "demo", "--dataset", "waterflow", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_demo_runs_to_its_summary() -> None:
    demo = _demo("--rate", "2000", "--duration", "60")
    output, _ = demo.communicate(timeout=120)
    assert demo.returncode == 0, output[-3000:]
    assert "summary: prequential scores per model" in output
    assert "consumed 1274/1274" in output  # 1,268 events and 6 malformed ones
    assert "dead-lettered 6" in output
    assert "stopped: daemon committed and closed, broker stopped" in output


def test_ctrl_c_stops_everything_cleanly() -> None:
    demo = _demo("--rate", "20", "--duration", "120")
    assert demo.stdout is not None
    # Wait for the demo's own word that the daemon is up and the replay started (a fixed
    # sleep loses the race on a slow machine: a Ctrl-C while the daemon is still being
    # built, before the demo's watch loop, is not what this test is about).
    killer = threading.Timer(120, demo.kill)
    killer.start()
    head = []
    for line in demo.stdout:
        head.append(line)
        if "daemon up" in line:
            break
    killer.cancel()
    assert any("daemon up" in line for line in head), "".join(head)
    time.sleep(4)  # group joined, a few records through
    demo.send_signal(signal.SIGINT)
    output, _ = demo.communicate(timeout=60)
    output = "".join(head) + output
    assert demo.returncode == 0, output[-3000:]
    assert "interrupted: stopping cleanly" in output
    assert "stopped: daemon committed and closed, broker stopped" in output


def test_ctrl_c_while_the_demo_starts_stops_it_as_cleanly() -> None:
    """A Ctrl-C before the daemon is up (the broker starting, the models being built) is
    not lost in whatever the main thread is doing: the demo stops as soon as it can."""
    demo = _demo("--rate", "20", "--duration", "120")
    assert demo.stdout is not None
    first = demo.stdout.readline()
    assert "forecastd demo" in first, first
    demo.send_signal(signal.SIGINT)
    output, _ = demo.communicate(timeout=120)
    output = first + output
    assert demo.returncode == 0, output[-3000:]
    assert "interrupted: stopping cleanly" in output
    assert "stopped: daemon committed and closed, broker stopped" in output
