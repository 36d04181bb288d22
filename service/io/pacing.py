"""How long the broker may hold the next fetch: short while records flow, long when idle.

Measured before changing anything (README "Throughput, workers and latency"): at a paced input
the loop's own waits are small beside processing (a flush ends ``linger_ms``; the
commit is one round trip), and ``max_poll_records`` never binds a live stream, whose
polls hold what arrived. What held a trickle back was the fetch: a broker that
answers a fetch that found no data late, up to ``fetch_max_wait_ms`` (the test
broker, Tansu, does; Kafka answers as soon as data arrives), puts much of that wait
between a record's arrival and its poll.

A short wait is not free: an idle consumer then sends a fetch every few milliseconds.
So the wait follows the load: :data:`LIVE_WAIT_MS` (at most the configured
``kafka.fetch_max_wait_ms``) while polls keep returning records, and the configured
value once none came for :data:`IDLE_AFTER_S`. Under a backlog the wait does not
matter (there is always data to answer with). With ``client: confluent`` the wait
stays the configured one: librdkafka takes ``fetch.wait.max.ms`` when the consumer
is created and fetches ahead on its own thread, so there is nothing to change
between polls; against a broker that holds fetches (Tansu), lower
``kafka.fetch_max_wait_ms`` itself (README, "Throughput, workers and latency").

Why the number of records per poll is not paced as well: a live poll holds only what
arrived during the loop's previous turn (both clients return at once with what is
buffered, so ``kafka.max_poll_records`` binds only a backlog), and a poll is
processed at a fixed cost per partition task plus a cost per record. Taking fewer
than what is there adds a turn's fixed cost and makes the rest wait for it, so the
p99 rose in every paced run that capped polls (``bench.latency --set
FORECASTD_KAFKA__MAX_POLL_RECORDS=200``, README): a queue with a fixed cost per batch
does best taking all it has.

Why no fetch is sent ahead while a batch is processed: kafka-python 3 sends a fetch
when a poll starts with nothing buffered, so each turn pays one fetch round trip. A
fetch sent right after each poll (tried against the test broker) came back with only
the records of its first few milliseconds, and the rest then waited a turn more; a
fetch held with ``fetch_min_bytes`` holds the poll's own fetch as well. One sent
later, once the batch is processed and before its flush, had its answer in hand when
the poll started, so the poll took only its parsing time; but the latency did not
fall (``bench.latency``, interleaved runs): what arrived during the flush waited a
turn more, and the loop paid more CPU per record, as with the pump below. Against
Kafka, which answers as soon as data arrives, the round trip is the network's.

Why no fetch is pumped while a batch is processed: the fetcher can be drained and
sent again between partition tasks, in the loop's thread, keeping the next batch's
records arriving during this one (tried, then taken out). The poll then took only its
parsing time, but each batch's processing grew by more than that, and the p99 with
it (``bench.latency``, interleaved runs): most likely because kafka-python's client
work runs on its IO thread, which then competes with the loop for the GIL while the
loop computes, where before it worked while the loop waited. Handing the send to that
thread without waiting for it did not change that. librdkafka fetches outside the
GIL: with ``client: confluent`` the wait is out of the turn already.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LIVE_WAIT_MS = 5
IDLE_AFTER_S = 2.0


class FetchPacer:
    """The fetch wait to use next, from whether the last polls brought records.

    >>> clock = iter([0.0, 0.1, 5.0]).__next__
    >>> pacer = FetchPacer(100, clock=clock)
    >>> pacer.observed(3), pacer.observed(0), pacer.observed(0)
    (5, 5, 100)
    """

    def __init__(
        self,
        idle_wait_ms: int,
        live_wait_ms: int = LIVE_WAIT_MS,
        idle_after_s: float = IDLE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_wait_ms = idle_wait_ms
        self.live_wait_ms = min(live_wait_ms, idle_wait_ms)
        self._idle_after_s = idle_after_s
        self._clock = clock
        self._last_records = float("-inf")

    def observed(self, records: int) -> int:
        """Note a poll that returned ``records``; the wait for the next fetch."""
        now = self._clock()
        if records:
            self._last_records = now
        live = now - self._last_records < self._idle_after_s
        return self.live_wait_ms if live else self.idle_wait_ms
