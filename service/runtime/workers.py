"""``processing.workers: N``: N consumer processes in one pod, one port for the pod.

Kafka's consumer group is what forecastd scales on, so a pod with several cores runs
several members of the group: each worker is an ordinary single-process daemon
(:class:`~service.runtime.app.Daemon`, its own partition tasks, its own lag monitor), started
with ``multiprocessing``'s *spawn* method (a fresh interpreter: no broker sockets,
threads or torch state inherited from a fork). This parent, the supervisor, holds no
partition and never imports the models; it

* serves the pod's port (``metrics.port``): ``/metrics`` merged from the workers'
  own endpoints on the loopback interface (:mod:`service.runtime.podmetrics` says why a
  scraping parent rather than client_python's multiprocess mode), ``/readyz`` 200
  only when every worker is running and ready, ``/healthz`` 503 when any worker
  reports itself stuck (the kubelet then restarts the pod);
* on SIGTERM or SIGINT sends SIGTERM to every worker, each of which finishes its
  batch, commits and leaves the group, and waits for them (a worker that has not
  exited within :func:`drain_timeout_s` is killed; its batch is uncommitted and read
  again); exit status 0 only if every worker exited 0;
* restarts a worker that dies, after a backoff that doubles from
  :data:`FIRST_BACKOFF_S` to :data:`MAX_BACKOFF_S`; a worker that dies
  :data:`MAX_FAILURES` times in a row (without staying up :data:`STABLE_S` between)
  stops the pod with status 1, so that a broken pod is restarted by Kubernetes and
  seen, rather than running at part capacity without anyone noticing.
  ``forecastd_worker_restarts_total`` counts the restarts; the pod is not ready while
  a worker is down, so its partitions' lag shows in the group.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.config import Settings
from service.runtime.health import HealthServer
from service.runtime.podmetrics import Endpoint, PodCollector, fetch
from service.tools.broker import free_port

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
MAX_FAILURES = 5
STABLE_S = 60.0
PROBE_TIMEOUT_S = 1.0

WorkerTarget = Callable[[Settings, int, int], None]
"""Runs in the worker process: (settings, worker index, loopback metrics port)."""


def drain_timeout_s(settings: Settings) -> float:
    """How long a worker may take to stop after SIGTERM: its broker waits are bounded
    by the shutdown grace, then three closes (lag monitor, consumer, producer)."""
    kafka = settings.kafka
    return kafka.shutdown_grace_s + 3 * kafka.close_timeout_s + 5.0


def run_worker(settings: Settings, index: int, port: int) -> None:
    """A worker's whole life: an ordinary daemon on a loopback port; exits with its
    status (0 clean stop, 1 broker failure)."""
    stop = threading.Event()
    _on_signals(stop)  # first: a SIGTERM while importing or connecting stops cleanly
    threading.Thread(
        target=_watch_parent, args=(os.getppid(), stop), name="forecastd-parent", daemon=True
    ).start()
    logging.basicConfig(
        level=settings.processing.log_level,
        format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s",
    )
    from service.errors import ForecastdError
    from service.runtime.app import Daemon, Interrupted

    own = settings.model_copy(
        update={
            "metrics": settings.metrics.model_copy(update={"host": "127.0.0.1", "port": port}),
            "processing": settings.processing.model_copy(update={"workers": 1}),
        }
    )
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)  # as the CLI: one line of ours on a failed connect
    try:
        daemon = Daemon(own, stop_event=stop)
        kafka_log.setLevel(level)
        status = daemon.run()
    except Interrupted:
        status = 0
    except ForecastdError as exc:
        print(f"forecastd worker {index}: {exc}", file=sys.stderr)
        status = 1
    except OSError as exc:  # e.g. the loopback port was taken meanwhile: start again
        print(f"forecastd worker {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 1
    sys.exit(status)


@dataclass
class _Worker:
    index: int
    process: BaseProcess | None = None
    port: int | None = None
    started: float = 0.0
    failures: int = 0  # deaths in a row, each within STABLE_S of its start
    restart_at: float | None = None


class Pod:
    """The supervisor of ``count`` workers (module docstring). :meth:`run` returns the
    exit status."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        stop_event: threading.Event | None = None,
        target: WorkerTarget = run_worker,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.stop_event = stop_event or threading.Event()
        self._target = target
        self._clock = clock
        self._context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(i) for i in range(count)]
        self.registry = CollectorRegistry()
        self.collector = PodCollector(self.endpoints)
        self.registry.register(self.collector)
        self.restarts = Counter(
            "forecastd_worker_restarts",
            "Worker processes restarted after they died.",
            registry=self.registry,
        )
        Gauge("forecastd_workers", "Worker processes this pod runs.", registry=self.registry).set(
            count
        )
        self.server = HealthServer(
            self.registry,
            self.ready,
            settings.metrics.host,
            settings.metrics.port,
            problem=self.problem,
        )

    @property
    def port(self) -> int:
        return self.server.port

    def endpoints(self) -> list[Endpoint]:
        """Each worker's loopback metrics port while its process runs."""
        return [Endpoint(w.index, w.port if _alive(w.process) else None) for w in self._workers]

    def worker_pids(self) -> list[int | None]:
        return [w.process.pid if _alive(w.process) and w.process else None for w in self._workers]

    def ready(self) -> bool:
        """Every worker running and answering ``/readyz`` with 200."""
        ports = [e.port for e in self.endpoints()]
        if any(port is None for port in ports):
            return False
        answers = _probe_all([port or 0 for port in ports], "/readyz")
        return all(status == 200 for status, _ in answers)

    def problem(self) -> str | None:
        """Why the pod is not live: a worker that says it is stuck (a worker being
        restarted is not a problem of liveness: the supervisor handles it)."""
        running = [e for e in self.endpoints() if e.port is not None]
        answers = _probe_all([e.port or 0 for e in running], "/healthz")
        for endpoint, (status, body) in zip(running, answers, strict=True):
            if status == 503:
                return f"worker {endpoint.index}: {body.strip()}"
        return None

    def run(self) -> int:
        """Start the workers, tend them until stopped, drain them."""
        self.server.start()
        log.info("pod of %d workers; metrics on port %d", len(self._workers), self.server.port)
        failed = False
        try:
            for worker in self._workers:
                self._start(worker)
            while not self.stop_event.wait(0.2):
                if not self._tend():
                    failed = True
                    break
        finally:
            clean = self._drain()
            self.server.stop()
        return 1 if failed or not clean else 0

    def _start(self, worker: _Worker) -> None:
        worker.port = free_port()
        process = self._context.Process(
            target=self._target,
            args=(self.settings, worker.index, worker.port),
            name=f"forecastd-worker-{worker.index}",
        )
        process.start()
        worker.process, worker.started, worker.restart_at = process, self._clock(), None
        log.info(
            "worker %d started (pid %s, metrics on 127.0.0.1:%d)",
            worker.index,
            process.pid,
            worker.port,
        )

    def _tend(self) -> bool:
        """Notice deaths, restart what is due; False when a worker keeps dying."""
        now = self._clock()
        for worker in self._workers:
            process = worker.process
            if process is not None and process.exitcode is not None:
                self.collector.retire(worker.index)
                up_for = now - worker.started
                worker.failures = worker.failures + 1 if up_for < STABLE_S else 1
                worker.process = None
                if worker.failures >= MAX_FAILURES:
                    log.error(
                        "worker %d exited with status %s, %d times in a row: stopping the"
                        " pod (exit 1) rather than running at part capacity",
                        worker.index,
                        process.exitcode,
                        worker.failures,
                    )
                    return False
                backoff = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (worker.failures - 1))
                worker.restart_at = now + backoff
                log.error(
                    "worker %d exited with status %s after %.0fs; restarting in %.0fs",
                    worker.index,
                    process.exitcode,
                    up_for,
                    backoff,
                )
            due = worker.restart_at is not None and now >= worker.restart_at
            if worker.process is None and due and not self.stop_event.is_set():
                self.restarts.inc()
                self._start(worker)
        return True

    def _drain(self) -> bool:
        """SIGTERM every worker and wait for all; True if all exited 0."""
        running = [w.process for w in self._workers if w.process is not None]
        for process in running:
            if process.exitcode is None:
                process.terminate()  # SIGTERM: the worker's graceful stop
        deadline = time.monotonic() + drain_timeout_s(self.settings)
        clean = True
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.error("worker %s did not stop in time: killing it", process.name)
                process.kill()
                process.join()
            clean = clean and process.exitcode == 0
        return clean


def _watch_parent(parent: int, stop: threading.Event) -> None:
    """A worker whose supervisor died (SIGKILL, OOM kill) stops as on SIGTERM rather
    than run on unsupervised (outside a container nothing else would end it)."""
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.error("the supervisor is gone: stopping")
            stop.set()


def install_pod_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT ask the pod to drain its workers (main thread only)."""
    _on_signals(stop)


def _on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _alive(process: BaseProcess | None) -> bool:
    return process is not None and process.exitcode is None


def _probe_all(ports: Sequence[int], path: str) -> list[tuple[int, str]]:
    if not ports:
        return []
    with ThreadPoolExecutor(max_workers=len(ports)) as pool:
        return list(pool.map(lambda port: fetch(port, path, PROBE_TIMEOUT_S), ports))
