"""The supervisor: a worker that dies is restarted with backoff, one that keeps dying
takes the pod down (exit 1), and a stop drains the workers. Workers here are tiny
spawned functions; tests/integration/test_workers.py runs real daemons."""

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
from service.runtime.workers import Pod
from service.tools.broker import free_port


def _dies(settings: Settings, index: int, port: int) -> None:
    sys.exit(3)


def _waits_for_sigterm(settings: Settings, index: int, port: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    marker = Path(os.environ["FORECASTD_TEST_MARKERS"]) / f"{index}-{os.getpid()}"
    marker.write_text("started")
    stop.wait(60)
    marker.write_text("drained")
    sys.exit(0)


def _settings() -> Settings:
    return Settings.model_validate({"metrics": {"host": "127.0.0.1", "port": free_port()}})


def test_a_worker_that_keeps_dying_stops_the_pod_with_status_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers, "FIRST_BACKOFF_S", 0.01)
    monkeypatch.setattr(workers, "MAX_FAILURES", 3)
    pod = Pod(_settings(), 1, target=_dies)
    assert pod.run() == 1
    assert pod.registry.get_sample_value("forecastd_worker_restarts_total") == 2


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
