"""The probe and metrics port over real sockets."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from service.errors import ConfigError
from service.runtime import health
from service.runtime.health import HealthServer


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HealthServer]:
    monkeypatch.setattr(health, "IDLE_TIMEOUT_S", 0.5)
    registry = CollectorRegistry()
    Counter("forecastd_test_events", "events", registry=registry).inc(3)
    started = HealthServer(registry, lambda: False, "127.0.0.1", 0, lambda: "no turn").start()
    yield started
    started.stop()


def _get(server: HealthServer, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_each_path_answers_with_its_status(server: HealthServer) -> None:
    status, body = _get(server, "/metrics")
    assert status == 200
    assert b"forecastd_test_events_total 3.0" in body
    assert _get(server, "/healthz") == (503, b"stuck: no turn\n")
    assert _get(server, "/readyz") == (503, b"not ready\n")
    assert _get(server, "/other")[0] == 404


def test_a_silent_connection_is_closed_and_others_are_served(server: HealthServer) -> None:
    """A client that connects and sends nothing does not keep its thread: the server
    hangs up after the idle timeout, and answers everyone else meanwhile."""
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        assert _get(server, "/metrics")[0] == 200
        start = time.monotonic()
        for connection in silent:
            connection.settimeout(5)
            assert connection.recv(1024) == b""  # closed by the server
        assert time.monotonic() - start < 4
    finally:
        for connection in silent:
            connection.close()


def test_a_port_another_process_holds_is_a_config_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"metrics.port: cannot listen on 127.0.0.1:{port}"):
            HealthServer(CollectorRegistry(), lambda: True, "127.0.0.1", port)
