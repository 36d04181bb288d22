"""Consumer lag and broker reachability, measured off the processing loop.

The loop used to update ``forecastd_consumer_lag`` between batches, from its own
consumer's fetch positions: a loop stuck in a broker call showed the last value
(often 0) while records piled up. :class:`LagMonitor` is a thread with its own
kafka-python consumer (KafkaConsumer is not thread-safe, so the loop's is never
touched, whichever client the loop uses). Every ``kafka.lag_interval_s`` it:

1. asks the cluster for metadata (always a round trip, :func:`probe`): the broker
   answers, so ``/readyz`` may say so (:meth:`LagMonitor.answered_within`);
2. takes each owned partition's high watermark from the loop's own polls
   (:attr:`Source.watermarks <service.io.sources.Source.watermarks>`) where one
   brought records of it lately (within ``fresh_s``), and the loop's position (the
   next offset after its last processed batch, :attr:`Processor.positions`);
3. for the partitions left (none of their records came lately, or none was
   processed yet), fetches once at that position (else the group's committed
   offset, else the beginning), which returns the partition's high watermark. (A
   fetch, not ListOffsets: Tansu's ListOffsets answer is wrong.)
4. sets the lag gauge to ``high watermark - position`` per owned partition, and
   tells the watchdog how many records wait.

Why the loop's own watermarks first: the fetch returns the records between the
loop's position and the end, which this thread's client then decodes, holding the
GIL the loop needs, in bursts of many small polls; with the loop keeping up, every
second a few batches ran that much slower, and the slowest predictions were those
(``bench.latency``, ``--set FORECASTD_KAFKA__LAG_INTERVAL_S``). A loop that is
stuck stops polling, its watermarks age past ``fresh_s``, and the fetch measures it
from outside as before; so does one whose fetches stopped answering (a poll that
brings no records says nothing of the broker). An idle partition is fetched too: it
has no records to decode.

When the broker does not answer, the gauge keeps its last values rather than
dropping to 0, and ``/readyz`` turns 503 once ``metrics.ready_stale_s`` passed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kafka import KafkaConsumer
from kafka.structs import TopicPartition as KafkaTopicPartition

from service.config import KafkaSettings
from service.io.sources import TopicPartition, Watermarks, client_options
from service.runtime.watchdog import Watchdog

log = logging.getLogger(__name__)


def lag_client(
    settings: KafkaSettings, timeout_s: float, api_version: tuple[int, ...] | None = None
) -> KafkaConsumer:
    """A consumer for metadata, committed offsets and fetches; it names the group (to
    read its committed offsets) but never subscribes, so it never joins it.

    Constructing it bootstraps (raises ``NoBrokersAvailable`` when no broker answers
    within ``timeout_s``), which makes it the start-up connection probe too.
    """
    timeout_ms = max(100, int(timeout_s * 1000))
    return KafkaConsumer(
        group_id=settings.group_id,  # for committed(); it never subscribes, never joins
        enable_auto_commit=False,
        client_id="forecastd-lag",
        allow_auto_create_topics=False,  # see app.await_topic
        fetch_max_wait_ms=10,  # 0 makes Tansu answer no fetch at all
        max_partition_fetch_bytes=65_536,
        request_timeout_ms=max(timeout_ms, 1000),
        bootstrap_timeout_ms=timeout_ms,
        api_version=api_version,
        **client_options(settings),
    )


def probe(client: Any, topic: str) -> None:
    """One metadata round trip for ``topic`` (the input topic). ``KafkaConsumer.topics()``
    asks for every topic of the cluster: on a cluster of thousands, a large answer for
    the broker to build and for this process to decode, holding the GIL, every
    interval on every worker (and an empty topic list is no cheaper: older versions
    of the request read it as every topic, and the test broker answers with all).
    kafka-python has no public call for this; where its internals differ (another
    version), ``topics()`` does it."""
    try:
        cluster, net, manager = client._cluster, client._net, client._manager
    except AttributeError:
        client.topics()
        return
    cluster.set_topics([topic])  # the topics its metadata requests name, kept after
    net.run(manager.wait_for, cluster.request_update(), None)


class LagMonitor:
    """Background lag gauge and reachability probe; see the module docstring."""

    def __init__(
        self,
        client: Any,
        owned: Callable[[], frozenset[TopicPartition]],
        positions: Callable[[], Mapping[TopicPartition, int]],
        record_lag: Callable[[Mapping[TopicPartition, int]], None],
        watchdog: Watchdog,
        interval_s: float,
        *,
        topic: str,
        watermarks: Callable[[], Watermarks] = dict,
        fresh_s: float = 0.0,
    ) -> None:
        """``owned()`` and ``positions()`` return the processor's current snapshots;
        ``record_lag(lags)`` sets the gauge; ``watermarks()``, the loop's source's,
        count where at most ``fresh_s`` old; ``topic``: the input topic, the one the
        reachability probe asks about."""
        self._client = client
        self._owned = owned
        self._positions = positions
        self._watermarks = watermarks
        self._fresh_s = fresh_s
        self._topic = topic
        self._record_lag = record_lag
        self._watchdog = watchdog
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._last_answer: float | None = None
        self._thread = threading.Thread(target=self._run, name="forecastd-lag", daemon=True)

    def start(self) -> LagMonitor:
        self._last_answer = time.monotonic()  # the connection probe just answered
        self._thread.start()
        return self

    def answered_within(self, seconds: float) -> bool:
        last = self._last_answer
        return last is not None and time.monotonic() - last <= seconds

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._client.close(autocommit=False, timeout_ms=int(timeout_s * 1000))

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.update()
            except Exception as exc:  # the broker is away: try again next interval
                log.debug("lag update failed: %s", type(exc).__name__)

    def update(self) -> None:
        """One measurement (public for tests)."""
        probe(self._client, self._topic)
        self._last_answer = time.monotonic()
        owned = self._owned()
        if not owned:
            self._watchdog.waiting = 0
            return
        positions: Mapping[TopicPartition, int] = self._positions()
        lags = self._from_loop(owned, positions)
        if len(lags) < len(owned):
            lags.update(self._fetched(owned - lags.keys(), positions))
        self._record_lag(lags)
        if len(lags) == len(owned):
            self._watchdog.waiting = sum(lags.values())

    def _from_loop(
        self, owned: frozenset[TopicPartition], positions: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """The lag of each owned partition the loop's own recent polls tell."""
        marks = self._watermarks()
        since = time.monotonic() - self._fresh_s
        lags = {}
        for tp in owned:
            mark, position = marks.get(tp), positions.get(tp)
            if mark is not None and position is not None and mark[1] >= since:
                lags[tp] = max(0, mark[0] - position)
        return lags

    def _fetched(
        self, owned: frozenset[TopicPartition], positions: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """The lag of ``owned`` partitions from a fetch of this thread's client."""
        tps = {tp: KafkaTopicPartition(*tp) for tp in sorted(owned)}
        # Re-assigning forgets the old high watermarks: a value read below is fresh.
        self._client.assign([])
        self._client.assign(list(tps.values()))
        start: dict[TopicPartition, int] = {}
        for tp, ktp in tps.items():
            position = positions.get(tp)
            if position is None:
                position = self._client.committed(ktp)
            if position is None:
                position = self._client.beginning_offsets([ktp]).get(ktp, 0)
            start[tp] = int(position)
            self._client.seek(ktp, start[tp])
        # A poll returns as soon as one partition has records: poll until every
        # partition's fetch answered, for at most a second.
        deadline = time.monotonic() + 1.0
        lags: dict[TopicPartition, int] = {}
        while len(lags) < len(tps) and time.monotonic() < deadline:
            self._client.poll(timeout_ms=100, max_records=1)
            for tp, ktp in tps.items():
                high = self._client.highwater(ktp)
                if high is not None:
                    lags[tp] = max(0, int(high) - start[tp])
        return lags
