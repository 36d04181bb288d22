"""The watchdog's verdicts and bounded waits, on a hand-driven clock."""

from __future__ import annotations

import threading
import time

import pytest

from service.errors import BrokerError
from service.runtime.watchdog import Watchdog, close_within, in_thread


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_live_while_starting_however_long_connecting_takes() -> None:
    clock = Clock()
    dog = Watchdog(stall_s=10, grace_s=5, clock=clock)
    clock.now += 300
    assert dog.healthy()
    dog.turn()
    clock.now += 11
    assert not dog.healthy()


def test_live_while_the_loop_turns_and_idle() -> None:
    clock = Clock()
    dog = Watchdog(stall_s=10, grace_s=5, clock=clock)
    for _ in range(5):
        clock.now += 4
        dog.turn()
        dog.progressed()
    assert dog.healthy()


def test_stuck_in_a_broker_call() -> None:
    clock = Clock()
    dog = Watchdog(stall_s=10, grace_s=5, clock=clock)
    dog.progressed()
    with dog.broker_call("producer flush"):
        clock.now += 9
        assert dog.healthy()
        clock.now += 2
        assert dog.problem() == "stuck in producer flush for 11s"
    assert dog.problem() is not None  # no turn for 11 s either, until the loop turns
    dog.turn()
    assert dog.healthy()


def test_waiting_records_without_progress_is_stuck_even_while_polling() -> None:
    clock = Clock()
    dog = Watchdog(stall_s=10, grace_s=5, clock=clock)
    dog.progressed()
    dog.waiting = 500
    for _ in range(3):
        clock.now += 4
        dog.turn()  # polls come back empty: the broker does not deliver
    problem = dog.problem()
    assert problem is not None
    assert "500 records wait" in problem
    dog.progressed()
    assert dog.healthy()


def test_idle_with_nothing_waiting_stays_live() -> None:
    clock = Clock()
    dog = Watchdog(stall_s=10, grace_s=5, clock=clock)
    clock.now += 60
    dog.turn()
    assert dog.healthy()


def test_bounded_wait_times_out_with_a_broker_error() -> None:
    dog = Watchdog(stall_s=10, grace_s=5)
    started = time.monotonic()
    with pytest.raises(BrokerError, match=r"offset commit did not complete in .* \(timed out\)"):
        dog.bounded("offset commit", _never_done, timeout_s=0.5)
    assert 0.5 <= time.monotonic() - started < 2


def test_a_stop_request_cuts_a_long_wait_to_the_grace_period() -> None:
    stop = threading.Event()
    dog = Watchdog(stall_s=10, grace_s=0.5, stop_event=stop)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(BrokerError, match=r"\(stopping\)"):
        dog.bounded("producer flush", _never_done, timeout_s=120)
    assert 0.8 <= time.monotonic() - started < 2.5


def test_bounded_wait_returns_once_done() -> None:
    dog = Watchdog(stall_s=10, grace_s=5)
    calls = []

    def step(_slice: float) -> bool:
        calls.append(1)
        return len(calls) == 3

    dog.bounded("x", step, timeout_s=5)
    assert len(calls) == 3
    assert dog.healthy()


def test_in_thread_reraises_and_close_within_gives_up() -> None:
    def fail() -> None:
        raise BrokerError("refused")

    dog = Watchdog(stall_s=10, grace_s=5)
    with pytest.raises(BrokerError, match="refused"):
        dog.bounded("offset commit", in_thread(fail, "t"), timeout_s=5)
    blocker = threading.Event()
    started = time.monotonic()
    assert not close_within(lambda: _wait(blocker), 0.2, "test close")
    assert time.monotonic() - started < 3
    blocker.set()


def _never_done(slice_s: float) -> bool:
    """A broker that never answers: each step waits its slice and is not done."""
    time.sleep(slice_s)
    return False


def _wait(event: threading.Event) -> None:
    event.wait(30)
