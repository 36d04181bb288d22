"""The supervisor: a worker that dies is restarted with backoff; one that dies
``processing.worker_failures`` times within the window, or cannot start at all, takes
the pod down (exit 1); a stop drains the workers. Workers here are tiny spawned
functions and the clock is the test's; tests/integration/test_workers.py runs real
daemons against the real broker."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from service.config import Settings
from service.runtime import workers
from service.runtime.workers import Deaths, Pod
from service.tools.broker import free_port


def _dies(settings: Settings, index: int, port: int) -> None:
    sys.exit(1)  # as a daemon whose broker failed while serving


def _cannot_start(settings: Settings, index: int, port: int) -> None:
    sys.exit(workers.EXIT_CANNOT_START)


def _waits_for_sigterm(settings: Settings, index: int, port: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    marker = Path(os.environ["FORECASTD_TEST_MARKERS"]) / f"{index}-{os.getpid()}"
    marker.write_text("started")
    stop.wait(60)
    marker.write_text("drained")
    sys.exit(0)


def _settings(failures: int = 5, window_s: float = 300.0) -> Settings:
    return Settings.model_validate(
        {
            "metrics": {"host": "127.0.0.1", "port": free_port()},
            "processing": {"worker_failures": failures, "worker_failure_window_s": window_s},
        }
    )


def test_a_worker_that_keeps_dying_stops_the_pod_with_status_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers, "FIRST_BACKOFF_S", 0.01)
    pod = Pod(_settings(failures=3), 1, target=_dies)
    assert pod.run() == 1
    assert pod.registry.get_sample_value("forecastd_worker_restarts_total") == 2


def test_deaths_a_minute_apart_stop_the_pod_within_the_window() -> None:
    """The rule before forgave a death after a minute up, so a worker that cannot
    reach the broker (it dies after kafka.connect_timeout_s, 60 s) restarted forever."""
    deaths = Deaths(limit=5, window_s=300.0)
    at = [65.0 * n for n in range(1, 6)]  # each after 60 s up and its backoff
    assert [deaths.died(t) for t in at] == [False, False, False, False, True]


def test_deaths_further_apart_than_the_window_never_stop_the_pod() -> None:
    deaths = Deaths(limit=2, window_s=300.0)
    assert not any(deaths.died(301.0 * n) for n in range(20))
    assert deaths.backoff() == workers.FIRST_BACKOFF_S


def test_the_backoff_doubles_with_the_deaths_in_the_window_up_to_its_cap() -> None:
    deaths = Deaths(limit=100, window_s=1000.0)
    backoffs = []
    for n in range(8):
        deaths.died(float(n))
        backoffs.append(deaths.backoff())
    assert backoffs == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_worker_that_cannot_start_stops_the_pod_at_once() -> None:
    pod = Pod(_settings(), 2, target=_cannot_start)
    assert pod.run() == 1
    assert pod.registry.get_sample_value("forecastd_worker_restarts_total") == 0


def test_a_dead_worker_is_restarted_and_sigterm_drains_every_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FORECASTD_TEST_MARKERS", str(tmp_path))
    monkeypatch.setattr(workers, "FIRST_BACKOFF_S", 0.01)
    pod = Pod(_settings(), 2, target=_waits_for_sigterm)
    status: list[int] = []
    runner = threading.Thread(target=lambda: status.append(pod.run()))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pod.ready()  # the workers serve no /readyz: never ready
        first = pod.worker_pids()
        os.kill(first[1] or 0, signal.SIGKILL)
        while len(list(tmp_path.iterdir())) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pod.registry.get_sample_value("forecastd_worker_restarts_total") == 1
        assert pod.worker_pids()[0] == first[0]
        assert pod.worker_pids()[1] != first[1]
    finally:
        pod.stop_event.set()
        runner.join(60)
    assert status == [0]
    states = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert states[f"1-{first[1]}"] == "started"  # killed: never drained
    assert sorted(s for n, s in states.items() if n != f"1-{first[1]}") == ["drained"] * 2
