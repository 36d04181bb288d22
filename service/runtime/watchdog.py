"""Bounded, stop-aware broker waits, and the liveness verdict behind ``/healthz``.

Every call on the broker path that can wait for the broker (producer flush, offset
commit, client close) goes through :meth:`Watchdog.bounded`: it waits in short
slices, so it notices a stop request within a fraction of a second, gives up after
its own timeout or ``kafka.shutdown_grace_s`` after a stop request, whichever comes
first, and raises :class:`~service.errors.BrokerError`. A flush that cannot complete
therefore ends the process non-zero *before* the commit: the batch is read again
after the restart (at-least-once), nothing is lost.

Why a watchdog and not just the timeouts: a process that stays alive but makes no
progress (stuck in a broker call, or spinning on polls that return nothing while
records wait) looks healthy from outside. :meth:`Watchdog.healthy` is false when,
for ``metrics.watchdog_s``:

* the loop has been inside one broker call;
* the loop has not turned at all (stuck in processing or in the client);
* records wait (the lag monitor's last count is above 0) and no batch completed.

An idle daemon with nothing to do stays healthy whatever the broker does: a restart
would not help it (``/readyz`` reports the broker instead).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service.errors import BrokerError

log = logging.getLogger(__name__)

SLICE_S = 0.25
"""Longest single wait inside a bounded call: the delay to notice a stop request."""


class Watchdog:
    """Progress of the processing loop, written by its thread, read by any."""

    def __init__(
        self,
        stall_s: float,
        grace_s: float,
        stop_event: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``stop_event``: set by the signal handler; a bounded wait that sees it set
        ends at most ``grace_s`` later."""
        self.stall_s = stall_s
        self.grace_s = grace_s
        self._stop_event = stop_event
        self._clock = clock
        now = clock()
        self._last_turn = now
        self._last_progress = now
        self._call: tuple[str, float] | None = None
        self._stop_at: float | None = None
        self._started = False  # the loop's first turn: connecting is not being stuck
        self.waiting = 0
        """Records known to wait in owned partitions (set by the lag monitor)."""

    # -- written by the loop ------------------------------------------------------

    def turn(self) -> None:
        """The loop came round (a poll returned)."""
        self._last_turn = self._clock()
        self._started = True

    def progressed(self) -> None:
        """A batch completed, or there was nothing to do."""
        now = self._clock()
        self._last_turn = now
        self._last_progress = now
        self._started = True

    def request_stop(self) -> None:
        """Called from the signal handler: bounded waits end within the grace period."""
        if self._stop_at is None:
            self._stop_at = self._clock()

    @property
    def stopping(self) -> bool:
        if self._stop_at is None and self._stop_event is not None and self._stop_event.is_set():
            self._stop_at = self._clock()
        return self._stop_at is not None

    @contextmanager
    def broker_call(self, what: str) -> Iterator[None]:
        self._call = (what, self._clock())
        try:
            yield
        finally:
            self._call = None

    def bounded(self, what: str, step: Callable[[float], bool], timeout_s: float) -> None:
        """Call ``step(slice_s)`` until it returns True (done).

        Raises:
            BrokerError: after ``timeout_s``, or ``grace_s`` after a stop request.
        """
        start = self._clock()
        with self.broker_call(what):
            while True:
                deadline = start + timeout_s
                if self.stopping and self._stop_at is not None:
                    deadline = min(deadline, self._stop_at + self.grace_s)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    cause = "stopping" if self._stop_at is not None else "timed out"
                    waited = self._clock() - start
                    raise BrokerError(f"{what} did not complete in {waited:.1f}s ({cause})")
                if step(min(remaining, SLICE_S)):
                    return

    # -- read by /healthz -----------------------------------------------------------

    def problem(self) -> str | None:
        """Why the daemon is stuck, or None while it is live (or still starting:
        connecting has its own deadline, ``kafka.connect_timeout_s``)."""
        if not self._started:
            return None
        now = self._clock()
        call = self._call
        if call is not None and now - call[1] > self.stall_s:
            return f"stuck in {call[0]} for {now - call[1]:.0f}s"
        if now - self._last_turn > self.stall_s:
            return f"the processing loop has not turned for {now - self._last_turn:.0f}s"
        if self.waiting > 0 and now - self._last_progress > self.stall_s:
            return (
                f"{self.waiting} records wait and no batch completed for "
                f"{now - self._last_progress:.0f}s"
            )
        return None

    def healthy(self) -> bool:
        return self.problem() is None


def in_thread(call: Callable[[], None], name: str) -> Callable[[float], bool]:
    """A :meth:`Watchdog.bounded` step for a client call that has no timeout of its
    own (confluent's synchronous commit, a close): the call runs in a daemon thread,
    each step waits for it a slice; its exception is re-raised in the caller.

    If the caller gives up, the thread is left blocked in the client; the process is
    on its way out then (a BrokerError), and a daemon thread does not hold it back.
    """
    errors: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the waiting thread
            errors.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()

    def step(slice_s: float) -> bool:
        thread.join(slice_s)
        if thread.is_alive():
            return False
        if errors:
            raise errors[0]
        return True

    return step


def close_within(close: Callable[[], None], timeout_s: float, what: str) -> bool:
    """Run ``close`` for at most ``timeout_s`` (plus a second); False if it did not
    finish. A close talks to the broker (leave the group, flush): a stalled broker
    must not keep the process from exiting."""
    step = in_thread(close, f"forecastd-{what.replace(' ', '-')}")
    deadline = time.monotonic() + timeout_s + 1.0
    while time.monotonic() < deadline:
        if step(SLICE_S):
            return True
    log.warning("%s did not finish within %.0fs; leaving it", what, timeout_s)
    return False
