"""bench/latency.py's CPU accounting: what the traced loop notes, and the shares of the
paced run computed from it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bench.latency import _wrap, analyse, cpu_sample, cpu_shares


def _burn(seconds: float) -> None:
    """Keep this thread on a core for ``seconds`` of its own CPU time."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        sum(range(1000))


def test_a_sample_counts_this_threads_work_and_the_machines() -> None:
    own, waited, process, busy, total = cpu_sample()
    _burn(0.2)
    own_after, waited_after, process_after, busy_after, total_after = cpu_sample()
    assert own_after - own >= 0.2
    assert process_after - process >= own_after - own - 0.01  # every thread's, this one's too
    # read wherever the system has them (Linux), "not known" only where it has not
    assert (waited is not None) == Path("/proc/thread-self/schedstat").exists()
    if waited is not None:
        assert waited_after is not None
        assert waited_after >= waited
    assert (busy is not None) == (total is not None) == Path("/proc/stat").exists()
    if busy is not None and total is not None:
        assert busy_after is not None
        assert total_after is not None
        assert total_after > total
        assert busy_after > busy


def _cpu(at: float, own: float, waited: float, process: float, busy: int, total: int) -> list[Any]:
    return ["cpu", at, own, waited, process, busy, total]


def test_shares_of_the_paced_run_come_from_its_first_and_last_samples() -> None:
    trace = [
        _cpu(99.0, 0.0, 0.0, 0.0, 0, 0),  # before the paced run: not counted
        _cpu(100.0, 1.0, 0.5, 1.5, 1000, 4000),
        ["poll", 100.1, 100.2, [(0, 0, 99), (1, 0, 99)]],
        ["poll", 104.0, 104.1, None],
        ["poll", 109.0, 109.1, [(2, 0, 199)]],
        _cpu(110.0, 7.0, 2.0, 8.5, 2600, 6000),
        ["poll", 110.1, 110.5, [(0, 100, 499)]],  # returned after the last sample
    ]
    shares = cpu_shares(trace, 100.0, 2)
    assert shares is not None
    assert shares.seconds == pytest.approx(10.0)
    assert shares.running == pytest.approx(0.6)
    assert shares.waiting == pytest.approx(0.15)
    assert shares.blocked == pytest.approx(0.25)
    assert shares.other_threads == pytest.approx(0.1)  # 7 s of the process's 8, less own 6
    assert shares.machine_busy == pytest.approx(0.8)
    assert shares.loop_us_per_record == pytest.approx(6e6 / 400)
    assert cpu_shares(trace[:2], 100.0, 2) is None  # one sample in the run: no span


def test_shares_without_the_linux_counters_say_not_known() -> None:
    trace = [
        ["cpu", 0.0, 0.0, None, 0.0, None, None],
        ["cpu", 2.0, 1.0, None, 1.2, None, None],
    ]
    shares = cpu_shares(trace, 0.0, 4)
    assert shares is not None
    assert shares.running == pytest.approx(0.5)
    assert shares.waiting is None
    assert shares.blocked is None
    assert shares.machine_busy is None


def test_analyse_reports_the_shares_of_the_counted_span() -> None:
    trace = [
        _cpu(10.0, 0.0, 0.0, 0.0, 0, 100),
        ["poll", 10.0, 10.01, [(0, 0, 1)], 0.004],  # 4 ms of the 10 on the loop's CPU
        ["process", 10.01, 10.03, None],
        ["flush", 10.03, 10.04, None],
        ["ack", 10.04, 10.05, None],
        _cpu(11.0, 0.5, 0.1, 0.6, 50, 200),
    ]
    sent = {"t:0:0": 9.995, "t:0:1": 9.999}
    produced = {"t:0:0": 10.02, "t:0:1": 10.03}
    result = analyse(trace, sent, produced, set(sent), cores=2)
    assert sorted(result.to_produced.round(1).tolist()) == [25.0, 31.0]
    assert result.cpu is not None
    assert result.cpu.running == pytest.approx(0.5)
    assert result.cpu.machine_busy == pytest.approx(0.5)
    assert result.cpu.loop_us_per_record == pytest.approx(0.5e6 / 2)
    assert result.poll_ms == pytest.approx(10.0)
    assert result.poll_cpu_ms == pytest.approx(4.0)
    # a trace of polls without their CPU time (not noted): not known, not zero
    untimed = [e[:4] if e[0] == "poll" else e for e in trace]
    assert analyse(untimed, sent, produced, set(sent), cores=2).poll_cpu_ms is None


def test_a_traced_poll_notes_the_calling_threads_cpu_in_it() -> None:
    """Of a poll that waits, only its own work counts as the loop's CPU."""

    class Slow:
        def poll(self) -> list[int]:
            _burn(0.05)
            time.sleep(0.1)
            return []

    owner = Slow()
    trace: list[list[Any]] = []
    _wrap(owner, "poll", trace, "poll", own_cpu=True)
    owner.poll()
    (entry,) = trace
    assert entry[2] - entry[1] >= 0.15
    assert 0.05 <= entry[4] < 0.1
