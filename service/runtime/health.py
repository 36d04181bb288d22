"""One HTTP port for ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` (liveness) answers 200 while the processing loop makes progress, and 503
with the reason once the watchdog (:mod:`service.runtime.watchdog`) sees it stuck: inside one
broker call, or without a turn, or without a completed batch while records wait, for
``metrics.watchdog_s``. Kubernetes then restarts the pod; offsets are committed only
after a batch's outputs were acknowledged, so the restart loses nothing.

``/readyz`` answers 200 when the daemon is connected, is a member of its group now
(with an assignment, possibly empty: an idle replica in a group with more replicas
than partitions is healthy, not broken), the group coordinator is known, and the
broker answered the lag monitor within ``metrics.ready_stale_s``; else 503. It is 503 from
the moment the port opens until the first connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from service.errors import ConfigError

IDLE_TIMEOUT_S = 10.0
"""How long a connection may stay silent before the server closes it: without a limit,
a client that connects and sends nothing (a half-open probe, a port scanner, a slow
client on purpose) holds a thread of the server for good, and enough of them exhaust
the pod's threads. Probes and scrapes send their request at once."""


class HealthServer:
    """Serves the registry and the two probes from a background thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        host: str,
        port: int,
        problem: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``problem()`` returns why the daemon is not live, or None.

        Raises:
            ConfigError: the port cannot be listened on (held by another process, a
                privileged port, an address this host does not have).
        """
        handler = _handler(registry, ready, problem)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"metrics.port: cannot listen on {host}:{port}: {exc.strerror or exc} (another"
                " process may hold it: set metrics.port or metrics.host)"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="forecastd-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    registry: CollectorRegistry,
    ready: Callable[[], bool],
    problem: Callable[[], str | None],
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = IDLE_TIMEOUT_S

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                stuck = problem()
                if stuck is None:
                    self._reply(200, b"ok\n")
                else:
                    self._reply(503, f"stuck: {stuck}\n".encode())
            elif path == "/readyz":
                is_ready = ready()
                self._reply(200 if is_ready else 503, b"ready\n" if is_ready else b"not ready\n")
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes every few seconds would drown the log; stay quiet."""

    return Handler
