"""The daemon: wiring, the poll loop and signals. Processing lives elsewhere.

SIGTERM or SIGINT sets a flag; the loop finishes the batch in hand, completes it
(flush, commit: see :mod:`service.checkpoint`), closes the consumer (leaving the group
so partitions move at once) and returns 0. A broker that refuses writes or commits
raises :class:`~service.errors.BrokerError`: the daemon exits non-zero and lets its
supervisor restart it from the last committed offsets.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)

from service.checkpoint import complete_batch
from service.config import KafkaSettings, Settings
from service.errors import ConfigError
from service.health import HealthServer
from service.metrics import Metrics
from service.processor import Processor
from service.sinks import KafkaSink, Sink
from service.sources import KafkaSource, Source

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 1.0


def default_registry() -> CollectorRegistry:
    """A fresh registry with the standard process, platform and GC collectors."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


@dataclass
class Daemon:
    """One forecastd process: a source, a processor, a sink and the HTTP port."""

    settings: Settings
    registry: CollectorRegistry = field(default_factory=default_registry)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        set_torch_threads(self.settings.processing.torch_threads)
        self.metrics = Metrics(self.registry, self.settings)
        self.sink, self.processor, self.source = _connect(self.settings, self.metrics)
        self.server = HealthServer(
            self.registry, self.ready, self.settings.metrics.host, self.settings.metrics.port
        )

    def ready(self) -> bool:
        return self.processor.assignments > 0 and self.source.reachable()

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> int:
        """Serve until stopped; returns the exit status."""
        self.server.start()
        log.info("metrics on port %d", self.server.port)
        try:
            with frozen_heap():
                run_loop(
                    self.settings,
                    self.source,
                    self.sink,
                    self.processor,
                    self.metrics,
                    self.stop_event.is_set,
                )
        finally:
            self._close()
        return 0

    def _close(self) -> None:
        for close in (self.source.close, self.sink.close, self.server.stop):
            try:
                close()
            except Exception:  # a failing close must not hide the first error
                log.exception("error while closing")


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the start-up heap out of the cyclic garbage collector while serving.

    Importing torch, River and pandas and building the models leaves ~400,000 objects
    that live as long as the process; a full collection walks all of them (~190 ms on
    the development machine), and the loop's steady allocation (River's per-event
    dicts, records, predictions) triggered one every second or so. ``gc.freeze`` after
    a collection moves them to a generation the collector skips, as Instagram does
    for its Django workers: on a 20,000-record backlog the kafka-python daemon went
    from about 14,400 to 17,900 events/s. Objects made later are collected as before;
    leaving the block unfreezes, so a process that runs daemons one after another
    (tests) can still collect the old ones.
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


def _connect(settings: Settings, metrics: Metrics) -> tuple[Sink, Processor, Source]:
    """The sink, the processor writing to it, and the source feeding it, for the
    configured client."""
    kafka = settings.kafka
    make_sink: Callable[[KafkaSettings], Sink] = KafkaSink
    make_source: Callable[[KafkaSettings, Processor], Source] = KafkaSource
    if kafka.client == "confluent":
        try:
            from service.confluent import ConfluentSink, ConfluentSource
        except ImportError as exc:
            raise ConfigError(
                "kafka.client: confluent needs confluent-kafka: pip install 'forecastd[confluent]'"
            ) from exc
        make_sink, make_source = ConfluentSink, ConfluentSource
    sink = make_sink(kafka)
    processor = Processor(settings, sink, metrics)
    return sink, processor, make_source(kafka, processor)


def run_loop(
    settings: Settings,
    source: Source,
    sink: Sink,
    processor: Processor,
    metrics: Metrics,
    should_stop: Callable[[], bool],
) -> None:
    """Poll, process, complete; until ``should_stop()`` or a finite source ends."""
    kafka = settings.kafka
    timeout_s = kafka.poll_timeout_ms / 1000
    next_lag = 0.0
    while not should_stop():
        records = source.poll(kafka.max_poll_records, timeout_s)
        if records:
            result = processor.process(records)
            complete_batch(result, sink, source, processor, metrics)
        if time.monotonic() >= next_lag:  # a lag query may cost a broker round trip
            processor.record_lag(source.lag())
            next_lag = time.monotonic() + LAG_INTERVAL_S
        if source.exhausted:
            break


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGTERM and SIGINT request a graceful stop (main thread only)."""

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: finishing the batch, then stopping", signal.Signals(signum).name)
        daemon.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
