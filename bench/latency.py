"""Where a paced event's latency goes: a traced 1-worker pod through the real broker.

    python -m bench.latency --rate 3700                 # configs/demo.yaml, 10 s paced
    python -m bench.latency --rate 2000 --keys 100000   # the same over 100k keys

Runs the daemon as ``bench.throughput`` runs it for its latency rows (a pod of one
worker process, the embedded Tansu broker, 3 input partitions unless
``--partitions`` says otherwise, a warm-up of
:data:`~bench.throughput.WARM_UP` records not counted), with the worker's loop traced:
each poll (when it started and returned, which records it brought, and the loop
thread's CPU time inside it: the client's own work, apart from the wait for the
broker's answer), each batch's
processing, the flush that acknowledged its outputs, each checkpoint and each
garbage collection are timed in the worker (wrappers around the loop's own objects,
installed in the worker process only; the daemon's code is unchanged). Every
prediction is then taken apart, in milliseconds:

* *waited*: from the event's broker timestamp to the start of the poll that fetched
  it, when the loop was busy elsewhere when it arrived (processing, flushing,
  checkpointing an earlier batch): queueing;
* *fetch*: from the later of its arrival and that poll's start to the poll's return
  (the broker's fetch wait, the client's own work);
* *process*: from the poll's return to the prediction's ``produced_at`` (the events
  before it in its batch, and its own);
* *flush*: from ``produced_at`` to the acknowledgement of its batch (the producer's
  linger, the broker's append).

Printed: p50/p99 of the total (to ``produced_at``, which ``bench.throughput``
reports, and to the acknowledgement) and of each part; the mean of each part over
the slowest 1% of predictions (what the p99 is made of); batch sizes; the longest
batch; checkpoints and full garbage collections during the paced run. Not a test:
the figures depend on the machine and its neighbours.

How much of that is the machine's neighbours rather than the daemon: every
:data:`CPU_SAMPLE_S` the loop's thread notes its own CPU time, the worker's (all its
threads: the clients' network threads, the lag monitor), and, on Linux, how long the
loop's thread waited for a core while it could run (``/proc/thread-self/schedstat``)
and how busy the machine's cores were (``/proc/stat``). Over the paced run that says
what share of the time the loop computed, waited for a core (other processes: the
broker, the paced producer, anything else on the machine), or was blocked (fetch and
flush round trips, the GIL held by another thread), and the loop's CPU per record
live, to set beside ``bench.pipeline``'s offline cost.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from bench.history import repeated_history, spread
from bench.specs import add_set_option, set_overrides
from bench.throughput import (
    WARM_UP,
    _daemon_settings,
    _read,
    add_stream_options,
    running_pod,
    wait_done,
)
from service.config import Settings, load_settings
from service.io.sinks import Sink
from service.io.sources import Source
from service.pipeline.processor import Processor
from service.runtime.checkpoint import Checkpointer
from service.runtime.metrics import Metrics
from service.runtime.watchdog import Watchdog
from service.tools import replay
from service.tools.broker import EmbeddedBroker

AFTER_STALL_S = 0.5
"""A prediction whose event arrived during a checkpoint or a full collection, or this
long after one ended, counts as one a stall delayed (the queue it left drains)."""
CPU_SAMPLE_S = 0.25
"""How often the traced loop notes its CPU accounting (a few small reads each time)."""
TRACE_ENV = "FORECASTD_BENCH_TRACE"
"""The file the traced worker writes its trace to (inherited through ``spawn``)."""


def traced_worker(settings: Settings, index: int, port: int) -> None:
    """A pod worker (:func:`service.runtime.workers.run_worker`) whose loop is traced."""
    from service.runtime import app, workers

    untraced = app.run_loop
    trace: list[list[Any]] = []

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
        _wrap(source, "poll", trace, "poll", lambda result: _ranges(result), own_cpu=True)
        _sample_cpu_before(source, "poll", trace)
        _wrap(processor, "process", trace, "process")
        _wrap(processor, "acknowledged", trace, "ack")
        _wrap(sink, "flush", trace, "flush")
        if state is not None:
            _wrap(state, "checkpoint", trace, "checkpoint", lambda covered: covered)

        def on_gc(phase: str, info: dict[str, int]) -> None:
            trace.append(["gc-" + phase, time.time(), info["generation"]])

        gc.callbacks.append(on_gc)
        try:
            untraced(settings, source, sink, processor, metrics, should_stop, watchdog, state)
        finally:
            gc.callbacks.remove(on_gc)
            Path(os.environ[TRACE_ENV]).write_bytes(orjson.dumps(trace))

    app.run_loop = run_loop
    workers.run_worker(settings, index, port)


def _wrap(
    owner: Any,
    name: str,
    trace: list[list[Any]],
    kind: str,
    detail: Callable[[Any], Any] = lambda _: None,
    own_cpu: bool = False,
) -> None:
    """Replace ``owner.name`` (on the instance) by a timed call of the original;
    ``own_cpu``: also note the calling thread's CPU seconds in the call (what of a
    poll is the client's own work, and what a wait for the broker)."""
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started, cpu = time.time(), time.thread_time() if own_cpu else 0.0
        result = original(*args, **kwargs)
        entry = [kind, started, time.time(), detail(result)]
        if own_cpu:
            entry.append(time.thread_time() - cpu)
        trace.append(entry)
        return result

    setattr(owner, name, timed)


def _sample_cpu_before(owner: Any, name: str, trace: list[list[Any]]) -> None:
    """Note :func:`cpu_sample` in ``trace`` before a call of ``owner.name``, at most
    every :data:`CPU_SAMPLE_S`."""
    original = getattr(owner, name)
    due = [0.0]

    def sampled(*args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now >= due[0]:
            due[0] = now + CPU_SAMPLE_S
            trace.append(["cpu", time.time(), *cpu_sample()])
        return original(*args, **kwargs)

    setattr(owner, name, sampled)


def cpu_sample() -> tuple[float, float | None, float, int | None, int | None]:
    """The calling thread's CPU seconds, its seconds spent runnable but waiting for a
    core, the process's CPU seconds (every thread), and the machine's busy and total
    jiffies over all cores; ``None`` where the system does not say (off Linux).

    >>> own, _, process, _, _ = cpu_sample()
    >>> 0 <= own <= process
    True
    """
    own, process = time.thread_time(), time.process_time()
    waited: float | None = None
    busy: int | None = None
    total: int | None = None
    with contextlib.suppress(OSError, IndexError, ValueError):
        waited = int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    with contextlib.suppress(OSError, IndexError, ValueError):
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        total = sum(ticks)
        busy = total - ticks[3] - ticks[4]
    return own, waited, process, busy, total


@dataclass(frozen=True)
class CpuShares:
    """Where the loop's thread spent the paced run (fractions of ``seconds``)."""

    seconds: float
    running: float
    """On a core (its own CPU time)."""
    waiting: float | None
    """Runnable but waiting for a core (``None``: not known on this system)."""
    other_threads: float
    """The worker's other threads' CPU time, in cores (0.1: a tenth of one core)."""
    machine_busy: float | None
    """Share of all the machine's cores busy, whoever ran on them."""
    cores: int
    loop_us_per_record: float
    """The loop thread's CPU time per record polled in those seconds."""

    @property
    def blocked(self) -> float | None:
        """Neither running nor waiting for a core: a fetch or flush round trip, the
        GIL held by another thread, an idle poll."""
        return None if self.waiting is None else max(0.0, 1.0 - self.running - self.waiting)


def cpu_shares(trace: list[list[Any]], start: float, cores: int) -> CpuShares | None:
    """:class:`CpuShares` between the first ``cpu`` sample at or after ``start`` and
    the last one; ``None`` with fewer than two such samples."""
    samples = [e for e in trace if e[0] == "cpu" and e[1] >= start]
    if len(samples) < 2:
        return None
    first, last = samples[0], samples[-1]
    seconds = last[1] - first[1]
    if seconds <= 0:
        return None
    own = last[2] - first[2]
    waited = None if first[3] is None or last[3] is None else (last[3] - first[3]) / seconds
    busy = None
    if first[5] is not None and last[5] is not None and last[6] > first[6]:
        busy = (last[5] - first[5]) / (last[6] - first[6])
    records = sum(_polled(e[3]) for e in trace if e[0] == "poll" and first[1] <= e[2] <= last[1])
    return CpuShares(
        seconds=seconds,
        running=own / seconds,
        waiting=waited,
        other_threads=(last[4] - first[4] - own) / seconds,
        machine_busy=busy,
        cores=cores,
        loop_us_per_record=1e6 * own / records if records else 0.0,
    )


def _ranges(records: list[Any]) -> list[tuple[int, int, int]] | None:
    """(partition, first offset, last offset) of a poll's records."""
    if not records:
        return None
    spans: dict[int, list[int]] = {}
    for record in records:
        span = spans.setdefault(record.partition, [record.offset, record.offset])
        span[0], span[1] = min(span[0], record.offset), max(span[1], record.offset)
    return [(p, lo, hi) for p, (lo, hi) in sorted(spans.items())]


def _polled(ranges: list[tuple[int, int, int]] | None) -> int:
    """How many records a poll brought, from its :func:`_ranges`."""
    return sum(hi - lo + 1 for _, lo, hi in ranges or ())


@dataclass(frozen=True)
class Breakdown:
    """Milliseconds per prediction (arrays in the same order) and the run's events."""

    waited: np.ndarray
    fetch: np.ndarray
    process: np.ndarray
    flush: np.ndarray
    batch: np.ndarray
    after_stall: np.ndarray
    batches: int
    longest_batch_ms: float
    poll_ms: float
    """Median time of a poll that returned records."""
    poll_cpu_ms: float | None
    """Median CPU time of the loop's thread in such a poll (None: not traced); the
    rest of the poll waited for the fetch's round trip or for the GIL."""
    flush_ms: float
    """Median time of a batch's flush."""
    fixed_ms: float
    per_record_us: float
    """A least-squares line through the paced batches: processing a batch of n records
    took about ``fixed_ms + n * per_record_us / 1000``."""
    checkpoints: list[float]
    full_gcs: list[float]
    cpu: CpuShares | None = None

    @property
    def to_produced(self) -> np.ndarray:
        return np.asarray(self.waited + self.fetch + self.process)

    @property
    def to_acknowledged(self) -> np.ndarray:
        return np.asarray(self.to_produced + self.flush)


def analyse(
    trace: list[list[Any]],
    sent_at: dict[str, float],
    produced_at: dict[str, float],
    counted: set[str],
    cores: int = 1,
) -> Breakdown:
    """Take every counted prediction apart (module docstring); times in seconds;
    ``cores``: the machine's, for :class:`CpuShares`."""
    polls: list[list[Any]] = []  # the polls whose records were processed, in order
    processes: list[list[Any]] = []
    flushes: list[list[Any]] = []  # each batch's own flush (a checkpoint's comes later)
    acks: list[list[Any]] = []
    last_poll: list[Any] | None = None
    for event in trace:
        if event[0] == "poll":
            last_poll = event
        elif event[0] == "process" and last_poll is not None and last_poll[3]:
            polls.append(last_poll)
            processes.append(event)
        elif event[0] == "flush" and len(flushes) < len(processes):
            flushes.append(event)
        elif event[0] == "ack":
            acks.append(event)
    if not len(acks) == len(flushes) == len(polls):
        raise RuntimeError(f"{len(polls)} batches processed but {len(acks)} acknowledged")
    where: dict[tuple[int, int], int] = {}
    for batch, poll in enumerate(polls):
        for partition, first, last in poll[3]:
            for offset in range(first, last + 1):
                where[(partition, offset)] = batch
    rows = []
    first_counted = min(sent_at[s] for s in counted)
    stalls = _stalls(trace)
    for source in counted:
        _, partition_text, offset_text = source.rsplit(":", 2)
        batch = where[(int(partition_text), int(offset_text))]
        started, returned = polls[batch][1], polls[batch][2]
        arrived, produced, acked = sent_at[source], produced_at[source], acks[batch][2]
        rows.append(
            (
                max(0.0, started - arrived),
                returned - max(started, arrived),
                produced - returned,
                acked - produced,
                _polled(polls[batch][3]),
                any(start <= arrived <= end + AFTER_STALL_S for start, end in stalls),
            )
        )
    table = np.array(rows) * np.array([1000, 1000, 1000, 1000, 1, 1])
    paced = [i for i, poll in enumerate(polls) if poll[2] >= first_counted]
    sizes = np.array([_polled(polls[i][3]) for i in paced])
    took = np.array([1000 * (processes[i][2] - processes[i][1]) for i in paced])
    per_record, fixed = np.polyfit(sizes, took, 1) if len(paced) > 1 else (0.0, 0.0)
    gc_starts = [e for e in trace if e[0] == "gc-start" and e[1] >= first_counted]
    gc_stops = [e for e in trace if e[0] == "gc-stop" and e[1] >= first_counted]
    full = [
        1000 * (stop[1] - start[1])
        for start, stop in zip(gc_starts, gc_stops, strict=False)
        if start[2] == 2
    ]
    return Breakdown(
        waited=table[:, 0],
        fetch=table[:, 1],
        process=table[:, 2],
        flush=table[:, 3],
        batch=table[:, 4],
        after_stall=table[:, 5] > 0,
        batches=len(paced),
        longest_batch_ms=float(took.max()) if len(took) else 0.0,
        poll_ms=float(np.median([1000 * (polls[i][2] - polls[i][1]) for i in paced])),
        poll_cpu_ms=_median_ms([polls[i][4] for i in paced if len(polls[i]) > 4]),
        flush_ms=float(np.median([1000 * (flushes[i][2] - flushes[i][1]) for i in paced])),
        fixed_ms=float(fixed),
        per_record_us=float(1000 * per_record),
        checkpoints=[
            1000 * (e[2] - e[1])
            for e in trace
            if e[0] == "checkpoint" and e[2] >= first_counted and e[3]
        ],
        full_gcs=full,
        cpu=cpu_shares(trace, first_counted, cores),
    )


def _stalls(trace: list[list[Any]]) -> list[tuple[float, float]]:
    """(start, end) of every checkpoint that wrote something and every full
    garbage collection: the pauses of the loop that are not a batch's own work."""
    found = [(e[1], e[2]) for e in trace if e[0] == "checkpoint" and e[3]]
    started: float | None = None
    for event in trace:
        if event[0] == "gc-start" and event[2] == 2:
            started = event[1]
        elif event[0] == "gc-stop" and started is not None:
            found.append((started, event[1]))
            started = None
    return found


def run(
    config: Path | None,
    rate: float,
    seconds: float,
    dataset: str,
    keys: int | None,
    env: dict[str, str],
    keep: Path | None = None,
    partitions: int = 3,
) -> Breakdown:
    """One traced paced run (module docstring)."""
    base = load_settings(config, env={})
    pairs = repeated_history(dataset, base.schema_, WARM_UP + int(rate * seconds))
    if keys is not None:
        pairs = spread(pairs, keys)
    trace_path = Path(f"/tmp/forecastd-trace-{uuid.uuid4().hex[:8]}.json")  # noqa: S108
    os.environ[TRACE_ENV] = str(trace_path)
    with EmbeddedBroker() as broker:
        topic, output = f"lat-{uuid.uuid4().hex[:6]}", f"lat-out-{uuid.uuid4().hex[:6]}"
        broker.create_topics([topic], partitions=partitions)
        broker.create_topics([output, f"{topic}.dlq"])
        settings = _daemon_settings(config, broker.bootstrap, topic, output, "kafka-python", env)
        warm, paced = pairs[:WARM_UP], pairs[WARM_UP:]
        with running_pod(settings, 1, target=traced_worker) as pod:
            replay.to_kafka(warm, topic, broker.bootstrap, show_progress=False)
            wait_done(pod, settings, len(warm), 0.1)
            replay.to_kafka(paced, topic, broker.bootstrap, rate=rate, show_progress=False)
            wait_done(pod, settings, len(pairs))
        inputs = _read(broker.bootstrap, topic, len(pairs))
        outputs = _read(broker.bootstrap, output, len(pairs))
    trace = orjson.loads(trace_path.read_bytes())
    if keep is not None:
        trace_path.replace(keep)
    else:
        trace_path.unlink()
    sent_at = {f"{r.topic}:{r.partition}:{r.offset}": r.timestamp / 1000 for r in inputs}
    warm_sources = set(sorted(sent_at, key=sent_at.__getitem__)[: len(warm)])
    produced_at: dict[str, float] = {}
    for record in outputs:
        prediction = orjson.loads(record.value)
        produced_at.setdefault(prediction["source"], prediction["produced_at"] / 1000)
    counted = set(produced_at) - warm_sources
    return analyse(trace, sent_at, produced_at, counted, os.cpu_count() or 1)


def report(result: Breakdown, title: str, console: Console) -> None:
    parts = {
        "waited: loop busy": result.waited,
        "fetch": result.fetch,
        "poll to produced_at": result.process,
        "produced_at to ack": result.flush,
        "total to produced_at": result.to_produced,
        "total to acknowledged": result.to_acknowledged,
    }
    slowest = result.to_acknowledged >= np.percentile(result.to_acknowledged, 99)
    table = Table(title=title)
    for column in ("ms", "p50", "p99", "mean of the slowest 1%"):
        table.add_column(column, justify="right")
    for name, values in parts.items():
        p50, p99 = np.percentile(values, [50, 99])
        table.add_row(name, f"{p50:.1f}", f"{p99:.1f}", f"{values[slowest].mean():.1f}")
    console.print(table)
    sizes = np.percentile(result.batch, [50, 99])
    console.print(
        f"{len(result.batch):,} predictions in {result.batches} batches; records per batch"
        f" (as each prediction saw it) p50 {sizes[0]:.0f}, p99 {sizes[1]:.0f}, max"
        f" {result.batch.max():.0f}; slowest 1% in batches of {result.batch[slowest].mean():.0f}"
        f" on average; longest batch {result.longest_batch_ms:.0f} ms to process;"
        f" checkpoints {len(result.checkpoints)} ({_list(result.checkpoints)} ms);"
        f" full GCs {len(result.full_gcs)} ({_list(result.full_gcs)} ms)"
    )
    console.print(
        f"a batch: poll (with records) p50 {result.poll_ms:.1f} ms{_poll_cpu(result)};"
        " processing about"
        f" {result.fixed_ms:.1f} ms + {result.per_record_us:.0f} µs per record (least"
        f" squares over the paced batches); flush p50 {result.flush_ms:.1f} ms"
    )
    calm = result.to_acknowledged[~result.after_stall]
    console.print(
        f"{result.after_stall.mean():.0%} of all predictions and"
        f" {result.after_stall[slowest].mean():.0%} of the slowest 1% arrived during a"
        f" checkpoint or a full collection or within {AFTER_STALL_S} s after one; p99 to"
        f" acknowledged without those: {np.percentile(calm, 99) if len(calm) else 0:.1f} ms"
    )
    if result.cpu is not None:
        console.print(_cpu_line(result.cpu))


def _cpu_line(cpu: CpuShares) -> str:
    """One sentence on :class:`CpuShares`.

    >>> _cpu_line(CpuShares(10.0, 0.6, 0.15, 0.1, 0.8, 2, 450.0))  # doctest: +NORMALIZE_WHITESPACE
    "the loop's thread over 10 s of the paced run: on a core 60%, waiting for one 15%,
    blocked 25% (round trips, the GIL, idle polls); 450 µs of its CPU per record; the
    worker's other threads 0.10 cores; the machine's 2 cores 80% busy"
    """
    waiting = "not known" if cpu.waiting is None else f"{cpu.waiting:.0%}"
    blocked = "" if cpu.blocked is None else f", blocked {cpu.blocked:.0%}"
    busy = "not known" if cpu.machine_busy is None else f"{cpu.machine_busy:.0%} busy"
    return (
        f"the loop's thread over {cpu.seconds:.0f} s of the paced run: on a core"
        f" {cpu.running:.0%}, waiting for one {waiting}{blocked} (round trips, the GIL,"
        f" idle polls); {cpu.loop_us_per_record:.0f} µs of its CPU per record; the"
        f" worker's other threads {cpu.other_threads:.2f} cores; the machine's"
        f" {cpu.cores} cores {busy}"
    )


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values) or "-"


def _median_ms(seconds: list[float]) -> float | None:
    return float(1000 * np.median(seconds)) if seconds else None


def _poll_cpu(result: Breakdown) -> str:
    if result.poll_cpu_ms is None:
        return ""
    return f" ({result.poll_cpu_ms:.1f} ms of it on the loop's CPU)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, required=True, help="events/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="paced seconds")
    add_stream_options(parser)
    add_set_option(parser, "the daemon")
    parser.add_argument("--trace", type=Path, default=None, help="keep the raw trace here")
    parser.add_argument("--partitions", type=int, default=3, help="input partitions")
    args = parser.parse_args()
    env = set_overrides(parser, args.set)
    stream = (args.config, args.rate, args.seconds, args.dataset, args.keys)
    result = run(*stream, env, args.trace, args.partitions)
    name = args.config.name if args.config else "built-in defaults"
    title = f"{args.rate:,.0f} events/s, {name}" + (f", {args.keys:,} keys" if args.keys else "")
    title += f", {args.partitions} partitions"
    report(result, title, Console())


if __name__ == "__main__":
    multiprocessing.freeze_support()
    main()
