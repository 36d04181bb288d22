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
  :data:`FIRST_BACKOFF_S` to :data:`MAX_BACKOFF_S`. A worker that dies
  ``processing.worker_failures`` times within ``processing.worker_failure_window_s``
  (:class:`Deaths`), or that cannot start at all (:data:`EXIT_CANNOT_START`: no
  broker answered within ``kafka.connect_timeout_s``, a refused topic, a client
  setting), stops the pod: the other workers are drained as on SIGTERM and the
  supervisor exits 1, so that Kubernetes restarts the pod and the failure shows
  (CrashLoopBackOff), rather than a pod running at part capacity without anyone
  noticing. ``forecastd_worker_restarts_total`` counts the restarts; the pod is not
  ready while a worker is down, so its partitions' lag shows in the group.

Why a window, not "deaths in a row without staying up a minute" (the rule before): a
worker that cannot reach the broker dies after ``kafka.connect_timeout_s``, 60 s by
default, so it "stayed up" a minute every time and was restarted forever, at part
capacity, with nothing visible outside the pod but a restart counter.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.config import Settings
from service.runtime.health import HealthServer
from service.runtime.logs import configure as configure_logs
from service.runtime.podmetrics import Endpoint, PodCollector, fetch
from service.tools.broker import free_port

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
PROBE_TIMEOUT_S = 1.0
EXIT_CANNOT_START = 3
"""A worker's exit status when its daemon could not start (the constructor raised: no
broker answered in time, a topic or client setting the broker refused). Restarting
it would fail the same way, so the supervisor stops the pod at once, as a
single-process daemon exits 1 in the same case."""

WorkerTarget = Callable[[Settings, int, int], None]
"""Runs in the worker process: (settings, worker index, loopback metrics port)."""


def drain_timeout_s(settings: Settings) -> float:
    """How long a worker may take to stop after SIGTERM: its broker waits are bounded
    by the shutdown grace, then three closes (lag monitor, consumer, producer)."""
    kafka = settings.kafka
    return kafka.shutdown_grace_s + 3 * kafka.close_timeout_s + 5.0


def run_worker(settings: Settings, index: int, port: int) -> None:
    """A worker's whole life: an ordinary daemon on a loopback port; exits with its
    status (0 clean stop, 1 broker failure while serving, :data:`EXIT_CANNOT_START`)."""
    stop = threading.Event()
    _on_signals(stop)  # first: a SIGTERM while importing or connecting stops cleanly
    threading.Thread(
        target=_watch_parent, args=(os.getppid(), stop), name="forecastd-parent", daemon=True
    ).start()
    configure_logs(settings, worker=index)
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
    except Interrupted:
        sys.exit(0)
    except ForecastdError as exc:
        print(f"forecastd worker {index}: cannot start: {exc}", file=sys.stderr)
        sys.exit(EXIT_CANNOT_START)
    except OSError as exc:  # e.g. the loopback port was taken meanwhile: start again
        print(f"forecastd worker {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    kafka_log.setLevel(level)
    try:
        status = daemon.run()
    except Interrupted:
        status = 0
    except ForecastdError as exc:
        print(f"forecastd worker {index}: {exc}", file=sys.stderr)
        status = 1
    except OSError as exc:
        print(f"forecastd worker {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 1
    sys.exit(status)


class Deaths:
    """When one worker died, within a sliding window: :meth:`died` says whether the
    pod must stop (``limit`` deaths within ``window_s``), :meth:`backoff` how long to
    wait before the next start.

    >>> deaths = Deaths(limit=3, window_s=60.0)
    >>> deaths.died(0.0), deaths.died(10.0), deaths.backoff()
    (False, False, 2.0)
    >>> deaths.died(100.0)  # the first two are out of the window by now
    False
    >>> deaths.died(110.0), deaths.died(120.0)
    (False, True)
    """

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def died(self, now: float) -> bool:
        """Note a death at ``now``; True when it is the ``limit``-th in the window."""
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        return len(self._times) >= self.limit

    @property
    def recent(self) -> int:
        """Deaths within the window, as of the last one."""
        return len(self._times)

    def backoff(self) -> float:
        """1, 2, 4 ... :data:`MAX_BACKOFF_S` seconds, by the deaths in the window."""
        return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** max(0, len(self._times) - 1))


class PodMetrics:
    """The supervisor's registry: the workers' merged metrics (:class:`PodCollector`,
    which adds ``forecastd_worker_up``), and the pod's own. A single-process daemon
    (``processing.workers: 1``) has none of these."""

    def __init__(
        self,
        registry: CollectorRegistry,
        count: int,
        endpoints: Callable[[], Sequence[Endpoint]],
    ) -> None:
        self.collector = PodCollector(endpoints)
        registry.register(self.collector)
        self.restarts = Counter(
            "forecastd_worker_restarts",
            "Worker processes restarted after they died (pods of several workers only).",
            registry=registry,
        )
        self.workers = Gauge(
            "forecastd_workers",
            "Worker processes this pod runs (pods of several workers only).",
            registry=registry,
        )
        self.workers.set(count)


@dataclass
class _Worker:
    index: int
    deaths: Deaths
    process: BaseProcess | None = None
    port: int | None = None
    started: float = 0.0
    restart_at: float | None = None
    exits: list[int | None] = field(default_factory=list)


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
        processing = settings.processing
        self._workers = [
            _Worker(i, Deaths(processing.worker_failures, processing.worker_failure_window_s))
            for i in range(count)
        ]
        self.registry = CollectorRegistry()
        self.metrics = PodMetrics(self.registry, count, self.endpoints)
        self.collector = self.metrics.collector
        self.restarts = self.metrics.restarts
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
        """Notice deaths, restart what is due; False when the pod must stop."""
        now = self._clock()
        for worker in self._workers:
            process = worker.process
            if process is not None and process.exitcode is not None:
                self.collector.retire(worker.index)
                worker.process = None
                if not self._restartable(worker, process.exitcode, now - worker.started, now):
                    return False
            due = worker.restart_at is not None and now >= worker.restart_at
            if worker.process is None and due and not self.stop_event.is_set():
                self.restarts.inc()
                self._start(worker)
        return True

    def _restartable(self, worker: _Worker, status: int, up_for: float, now: float) -> bool:
        """Log a worker's death; schedule its restart, or return False (the pod stops)."""
        how = _describe(status)
        if status == EXIT_CANNOT_START:
            log.error(
                "worker %d could not start (its error is above: is a broker listening at"
                " kafka.bootstrap_servers %s?); restarting it would fail the same way:"
                " stopping the pod with status 1",
                worker.index,
                self.settings.kafka.bootstrap_servers,
            )
            return False
        if worker.deaths.died(now):
            processing = self.settings.processing
            log.error(
                "worker %d %s: its %d%s death within %.0fs (processing.worker_failures:"
                " %d, processing.worker_failure_window_s: %.0f); stopping the pod with"
                " status 1 rather than running at part capacity: see the worker's errors"
                " above",
                worker.index,
                how,
                worker.deaths.recent,
                _ordinal(worker.deaths.recent),
                processing.worker_failure_window_s,
                processing.worker_failures,
                processing.worker_failure_window_s,
            )
            return False
        backoff = worker.deaths.backoff()
        worker.restart_at = now + backoff
        log.error(
            "worker %d %s after %.0fs up; restarting it in %.0fs (%d of %d deaths allowed"
            " within %.0fs)",
            worker.index,
            how,
            up_for,
            backoff,
            worker.deaths.recent,
            worker.deaths.limit - 1,
            worker.deaths.window_s,
        )
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
            log.info("%s stopped: %s", process.name, _describe(process.exitcode or 0))
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


def _describe(status: int) -> str:
    """A worker's exit status in words (negative: the signal that killed it)."""
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _ordinal(n: int) -> str:
    """The English ordinal suffix of ``n``.

    >>> [_ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22)]
    ['st', 'nd', 'rd', 'th', 'th', 'th', 'th', 'st', 'nd']
    """
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _alive(process: BaseProcess | None) -> bool:
    return process is not None and process.exitcode is None


def _probe_all(ports: Sequence[int], path: str) -> list[tuple[int, str]]:
    if not ports:
        return []
    with ThreadPoolExecutor(max_workers=len(ports)) as pool:
        return list(pool.map(lambda port: fetch(port, path, PROBE_TIMEOUT_S), ports))
