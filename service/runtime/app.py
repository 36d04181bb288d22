"""The daemon: wiring, start-up, the poll loop and signals. Processing lives elsewhere.

Start-up: the HTTP port opens first (``/healthz`` 200, ``/readyz`` 503), then the
broker connection is tried, with kafka-python's backoff, for ``kafka.connect_timeout_s``;
if no broker answers, :class:`~service.errors.BrokerError` ends the process with one
line on stderr and status 1 (the CLI turns kafka-python's own retry log off meanwhile).

SIGTERM or SIGINT sets a flag. The loop finishes the batch in hand, completes it
(flush, commit: see :mod:`service.runtime.checkpoint`), closes the consumer (leaving the group
so partitions move at once) and returns 0. Every broker wait is bounded and notices
the flag (:mod:`service.runtime.watchdog`): if the broker does not take the batch within
``kafka.shutdown_grace_s`` of the signal, the flush raises BrokerError before the
commit and the process exits 1 with the batch uncommitted, to be read again after a
restart. A broker that refuses writes or commits raises BrokerError the same way.

Consumer lag and broker reachability are measured by a thread of their own
(:mod:`service.runtime.lag`), so they stay true while the loop waits on the broker.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)

from service.config import KafkaSettings, Settings
from service.errors import BrokerError, ConfigError, ForecastdError
from service.io.sinks import KafkaSink, KafkaTransactionalSink, Sink
from service.io.sources import KafkaSource, Source
from service.pipeline.processor import Processor, producer_request_limit
from service.runtime.checkpoint import Checkpointer, complete_batch
from service.runtime.health import HealthServer
from service.runtime.lag import LagMonitor, lag_client
from service.runtime.metrics import Metrics
from service.runtime.state import StateTopic
from service.runtime.warmup import warm_up
from service.runtime.watchdog import Watchdog, in_thread

log = logging.getLogger(__name__)


class Interrupted(ForecastdError):
    """A stop was requested before the daemon was connected: nothing to finish."""


def default_registry() -> CollectorRegistry:
    """A fresh registry with the standard process, platform and GC collectors."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


@dataclass
class Daemon:
    """One forecastd process: a source, a processor, a sink and the HTTP port.

    Constructing it opens the port and connects (see the module docstring); raises
    :class:`BrokerError` when no broker answers in time, :class:`Interrupted` when
    stopped meanwhile.
    """

    settings: Settings
    registry: CollectorRegistry = field(default_factory=default_registry)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        set_torch_threads(self.settings.processing.torch_threads)
        self.metrics = Metrics(self.registry, self.settings)
        self.watchdog = Watchdog(
            self.settings.metrics.watchdog_s,
            self.settings.kafka.shutdown_grace_s,
            stop_event=self.stop_event,
        )
        self.connected = False
        self.server = HealthServer(
            self.registry,
            self.ready,
            self.settings.metrics.host,
            self.settings.metrics.port,
            problem=self.watchdog.problem,
        )
        self.server.start()
        log.info("metrics on port %d", self.server.port)
        try:
            client = connect(self.settings.kafka, self.stop_event)
            listed = await_topic(client, self.settings.kafka.input_topic, self.stop_event)
            warn_absent_outputs(self.settings, listed)
            api_version = client.config.get("api_version")
            self.sink, self.processor, self.source, self.state = _connect(
                self.settings, self.metrics, self.watchdog, api_version
            )
        except BaseException:
            self.server.stop()
            raise
        self.lag = LagMonitor(
            client,
            lambda: self.processor.owned,
            lambda: self.processor.positions,
            self.processor.record_lag,
            self.watchdog,
            self.settings.kafka.lag_interval_s,
            watermarks=lambda: self.source.watermarks,
            # a partition that flows brings records every turn of the loop: twice the
            # monitor's interval plus a whole idle poll without any, and it has stopped
            fresh_s=2 * self.settings.kafka.lag_interval_s
            + self.settings.kafka.poll_timeout_ms / 1000,
            topic=self.settings.kafka.input_topic,
        )
        self.connected = True

    def ready(self) -> bool:
        """Connected, joined the group (an assignment, possibly empty), and the broker
        answered within ``metrics.ready_stale_s``."""
        if not self.connected:
            return False
        return (
            self.processor.assignments > 0
            and (self.state is None or not self.state.restoring)
            and self.source.reachable()
            and self.lag.answered_within(self.settings.metrics.ready_stale_s)
        )

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> int:
        """Serve until stopped; returns the exit status."""
        self.lag.start()
        try:
            warm_up(self.settings)  # before the freeze: see service.runtime.warmup
            with frozen_heap():
                run_loop(
                    self.settings,
                    self.source,
                    self.sink,
                    self.processor,
                    self.metrics,
                    self.stop_event.is_set,
                    self.watchdog,
                    self.state,
                )
                if self.state is not None:
                    self.state.checkpoint()  # shutdown: every task, then commit
        finally:
            self._close()
        return 0

    def _close(self) -> None:
        closes: tuple[Callable[[], None], ...] = (
            lambda: self.lag.stop(self.settings.kafka.close_timeout_s),
            self.source.close,
            self.sink.close,
            self.state.close if self.state is not None else lambda: None,
            self.server.stop,
        )
        for close in closes:
            try:
                close()
            except Exception as exc:  # a failing close must not hide the first error
                log.warning("error while closing: %s: %s", type(exc).__name__, exc)


def connect(settings: KafkaSettings, stop_event: threading.Event) -> Any:
    """The lag monitor's client, once a broker answered: kafka-python bootstraps with
    its own backoff for ``connect_timeout_s``. It runs in a helper thread so that a
    SIGTERM meanwhile ends the wait at once.

    Raises:
        BrokerError: no broker answered in time (one line: no traceback to print).
        Interrupted: a stop was requested first.
    """
    timeout = settings.connect_timeout_s
    made: list[Any] = []
    step = in_thread(lambda: made.append(lag_client(settings, timeout)), "forecastd-connect")
    deadline = time.monotonic() + timeout + 5.0
    while True:
        if stop_event.is_set():
            raise Interrupted("stopped while connecting to the broker")
        try:
            if step(0.25):
                return made[0]
        except Exception as exc:
            raise BrokerError(
                f"no broker answered at {settings.bootstrap_servers} within {timeout:.0f}s "
                f"({type(exc).__name__})"
            ) from None
        if time.monotonic() > deadline:
            raise BrokerError(
                f"no broker answered at {settings.bootstrap_servers} within {timeout:.0f}s"
            )


TOPIC_RECHECK_S = 2.0
"""How often a daemon waiting for its input topic asks the broker again."""


def await_topic(
    client: Any, topic: str, stop_event: threading.Event, recheck_s: float = TOPIC_RECHECK_S
) -> set[str]:
    """Return once ``topic`` exists, with the cluster's topics as then listed; until
    then ``/readyz`` stays 503 and a warning says what is missing.

    The decision: forecastd never creates its input topic, and does not exit when it
    is missing. A broker with ``auto.create.topics.enable`` (Kafka's default) creates
    any topic a client's metadata request names, so a misspelt ``kafka.input_topic``
    used to become a new, empty topic with the broker's default partition count, and
    the daemon sat on it, ready and idle. Its clients now ask not to create topics
    (``allow_auto_create_topics``); and since some brokers create them regardless
    (Tansu, the embedded broker, does), nothing names the input topic to the broker
    until a metadata request for every topic, which creates nothing, lists it. Waiting
    rather than exiting fits a deployment where the topic is created alongside the
    daemon (a Strimzi ``KafkaTopic`` applied with the Deployment): the pod becomes
    ready when the topic appears, instead of a restart loop.

    Raises:
        Interrupted: a stop was requested while waiting.
    """
    warned = False
    while True:
        if stop_event.is_set():
            raise Interrupted(f"stopped while waiting for the input topic {topic!r}")
        try:
            listed: set[str] = set(client.topics())
        except Exception as exc:  # the broker is away: the wait goes on, the log says so
            log.debug("listing topics failed: %s", type(exc).__name__)
            listed = set()
        if topic in listed:
            if warned:
                log.info("input topic %r exists now", topic)
            return listed
        if not warned:
            log.warning(
                "kafka.input_topic %r does not exist on the broker (or this client may not"
                " describe it); waiting for it to be created. forecastd does not create it:"
                " check the name, or create the topic",
                topic,
            )
            warned = True
        stop_event.wait(recheck_s)


def warn_absent_outputs(settings: Settings, listed: set[str]) -> None:
    """One warning per topic forecastd writes that is not in ``listed``: a broker with
    ``auto.create.topics.enable`` creates it on the first write (with its default
    partitions and retention), one without refuses every write to it, and the daemon
    stops at the first such write with a broker error. Said at start-up, where it is
    cheap to fix. (The state topic is created by the daemon itself,
    :mod:`service.runtime.state`.)"""
    for key, topic in settings.written_topics.items():
        if topic not in listed:
            log.warning(
                "%s %r does not exist on the broker: only a broker that creates topics on"
                " first write (auto.create.topics.enable) will take what forecastd writes"
                " there; create it beforehand",
                key,
                topic,
            )


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the start-up heap out of the cyclic garbage collector while serving.

    Importing torch, River and pandas and building the models leaves hundreds of
    thousands of objects that live as long as the process; a full collection walks all
    of them, and the loop's steady allocation (River's per-event dicts, records,
    predictions) triggered one every second or so. ``gc.freeze`` after a collection
    moves them to a generation the collector skips, as Instagram does for its Django
    workers (README, "Throughput, workers and latency"). What the models import on
    their first steps is loaded before it by :func:`~service.runtime.warmup.warm_up`.
    Objects made later are collected as before; leaving the block unfreezes, so a
    process that runs daemons one after another (tests) can still collect the old ones.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def set_torch_threads(threads: int | None) -> None:
    """Process-wide, so set once here, by the process owner, not by a model."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _connect(
    settings: Settings,
    metrics: Metrics,
    watchdog: Watchdog,
    api_version: tuple[int, ...] | None = None,
) -> tuple[Sink, Processor, Source, Checkpointer | None]:
    """The sink, the processor writing to it, the source feeding it (through the
    checkpointer, its rebalance listener, when ``state.enabled``), for the configured
    client; the sink is transactional with ``kafka.exactly_once``, and is made
    first, so that its transactional id fences this process's predecessor before
    anything is read. ``api_version``: what the connection probe found, so that
    kafka-python clients do not probe again."""
    kafka = settings.kafka
    limit = producer_request_limit(settings)
    tid = transactional_id(settings) if kafka.exactly_once else None
    if tid is not None:
        log.info("exactly-once: transactional id %s", tid)
    sink: Sink
    source: Source
    if kafka.client == "confluent":
        try:
            from service.io.confluent import (
                ConfluentSink,
                ConfluentSource,
                ConfluentTransactionalSink,
            )
        except ImportError as exc:
            raise ConfigError(
                "kafka.client: confluent needs confluent-kafka: pip install 'forecastd[confluent]'"
            ) from exc
        if tid is None:
            sink = ConfluentSink(kafka, watchdog, limit, renewed=metrics.producer_renewals.inc)
        else:
            sink = ConfluentTransactionalSink(kafka, tid, watchdog, limit)
        processor = Processor(settings, sink, metrics)
        state = _checkpointer(settings, processor, sink, metrics)
        confluent = ConfluentSource(kafka, state or processor, watchdog)
        source = confluent
        if state is not None:
            state.source = confluent
    else:
        if tid is None:
            sink = KafkaSink(
                kafka, watchdog, limit, api_version, renewed=metrics.producer_renewals.inc
            )
        else:
            sink = KafkaTransactionalSink(kafka, tid, watchdog, limit, api_version)
        processor = Processor(settings, sink, metrics)
        state = _checkpointer(settings, processor, sink, metrics)
        python = KafkaSource(kafka, state or processor, watchdog, api_version)
        source = python
        if state is not None:
            state.source = python
    return sink, processor, source, state


def transactional_id(settings: Settings) -> str:
    """This process's transactional id (``kafka.exactly_once``).

    The decision: one id per consumer process, ``<prefix>[-<worker index>]``, the prefix
    ``kafka.transactional_id`` or ``<group_id>-<host name>``. It must be unique among
    live processes (two producers with one id fence each other) and the same when a
    process restarts in its place, so that the new one's ``init_transactions`` fences
    the old one and aborts the transaction it left open at once. In Kubernetes the
    host name is the pod's name: a container restarted in its pod (a crash, an OOM
    kill) keeps it; a pod rescheduled by a Deployment gets a new name, and its
    predecessor's open transaction then holds back ``read_committed`` readers of its
    partitions until ``kafka.transaction_timeout_s`` (a StatefulSet keeps names). One
    id per process rather than per input partition (the pre-KIP-447 scheme) is
    enough because the offsets go with the consumer's group metadata: the broker
    refuses a commit from a member of an older generation, so a zombie cannot commit
    over the partitions' new owner whatever its id.

    A worker of ``processing.workers`` is a process that
    :mod:`service.runtime.workers` names ``forecastd-worker-<index>``; its index keeps
    the ids of a pod's workers apart and stable across their restarts.
    """
    kafka = settings.kafka
    prefix = kafka.transactional_id or f"{kafka.group_id}-{socket.gethostname()}"
    worker = _WORKER_NAME.fullmatch(multiprocessing.current_process().name)
    return prefix if worker is None else f"{prefix}-{worker.group(1)}"


_WORKER_NAME = re.compile(r"forecastd-worker-(\d+)")


def _checkpointer(
    settings: Settings, processor: Processor, sink: Sink, metrics: Metrics
) -> Checkpointer | None:
    if not settings.state.enabled:
        return None
    return Checkpointer(settings, processor, sink, StateTopic(settings, sink), metrics)


def run_loop(
    settings: Settings,
    source: Source,
    sink: Sink,
    processor: Processor,
    metrics: Metrics,
    should_stop: Callable[[], bool],
    watchdog: Watchdog | None = None,
    state: Checkpointer | None = None,
) -> None:
    """Poll, process, complete; until ``should_stop()`` or a finite source ends.

    ``watchdog`` hears of every turn and every completed batch (or idle poll with
    nothing waiting); the lag gauge is the lag monitor's job, off this thread.
    ``state``: checkpoints (:mod:`service.runtime.checkpoint`); a restore that failed inside
    the poll's rebalance callback is raised here, before any record is processed.

    Each turn's time outside the poll goes to ``forecastd_loop_busy_seconds_total``:
    its rate says how close the loop is to saturation before the latency does. A live
    stream's turns cost more per record than a backlog's (a partition task's fixed
    cost per turn), so the events per second a worker can take live is not its backlog
    rate (README, "On a machine of 16 cores")."""
    kafka = settings.kafka
    timeout_s = kafka.poll_timeout_ms / 1000
    busy = metrics.loop_busy
    if watchdog is not None:
        watchdog.progressed()  # the clock starts now, not when the process did
    while not should_stop():
        records = source.poll(kafka.max_poll_records, timeout_s)
        polled = time.monotonic()
        if state is not None:
            records = state.after_poll(records)
        if watchdog is not None:
            watchdog.turn()
        if records:
            result = processor.process(records)
            complete_batch(result, sink, source, processor, metrics, state, len(records))
        elif state is not None and state.due():
            state.scheduled()
        if watchdog is not None and (records or watchdog.waiting == 0):
            watchdog.progressed()
        busy.inc(time.monotonic() - polled)
        if source.exhausted:
            break


def install_signal_handlers(daemon: Daemon | threading.Event) -> None:
    """SIGTERM and SIGINT request a graceful stop (main thread only): they set the
    daemon's stop event, which the loop and every bounded broker wait check."""
    event = daemon.stop_event if isinstance(daemon, Daemon) else daemon

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: finishing the batch, then stopping", signal.Signals(signum).name)
        event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
