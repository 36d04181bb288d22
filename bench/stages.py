"""Where a partition task's turn goes: wall time per stage, per task and turn, offline.

    python -m bench.stages                              # built-in defaults, 16 partitions
    python -m bench.stages --partitions 3 --turn 160    # fewer tasks, more rows each
    python -m bench.stages --keys 100000 --turn 54      # mostly new keys

A live stream spread thinly over many partitions pays each partition task's fixed
cost on every turn of the loop (README, "Many partitions per worker"). This says
what that cost is made of. It runs the daemon's :class:`~service.pipeline.processor.Processor`
on ``--dataset`` records spread over ``--keys`` keys in ``--partitions`` partitions (as
a keyed produce places them), warms it up on the first half in polls of 500, then
feeds the rest in polls of ``--turn`` records with a timer around each stage of
:meth:`~service.pipeline.tasks.PartitionTask.process` and each member's call. Printed:
per stage, the wall time and calls per *task-turn* (a task's share of a poll that
brought it records). Stages nest (``_run`` holds the members, the ensemble, drift,
scores and intervals), so the rows do not add up; the timers cost about a
microsecond a call, so compare rows of one run, not with ``bench.pipeline``.

The split that matters for a redesign of the turn: stages over per-key stores
(features, windows, the pending book, outlier screening) could run once over every
task's rows of a turn if those stores were shared; the members, the ensemble's pool,
drift, scores and intervals hold state per task and model. Not a test: the numbers
depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from bench.pipeline import records_for
from bench.specs import add_set_option, set_overrides
from models.ensemble import Hedge
from service.config import Settings, load_settings
from service.io.sinks import ListSink
from service.pipeline import tasks
from service.pipeline.intervals import Intervals
from service.pipeline.pending import PendingBook
from service.pipeline.processor import Processor
from service.pipeline.tasks import PartitionTask
from service.pipeline.windows import WindowStore
from service.records import RawRecord
from service.runtime.app import set_torch_threads
from service.runtime.metrics import Metrics

WARM_POLL = 500
"""Records per poll while warming up (untimed): every key has a history by then."""

TASK_STAGES = (
    "process",
    "_run",
    "_fill",
    "_suspects",
    "_observe_gaps",
    "_periods",
    "_drift",
    "_score",
    "_cover",
    "_publishable",
    "_grow",
    "_evict",
)
"""The methods of :class:`PartitionTask` timed, ``process`` being the whole task-turn."""

OTHER_STAGES: tuple[tuple[type, str], ...] = (
    (WindowStore, "push_many"),
    (PendingBook, "add"),
    (PendingBook, "live"),
    (PendingBook, "gather"),
    (PendingBook, "release"),
    (Hedge, "run"),
    (Intervals, "run"),
)


class StageTimer:
    """Wall time and calls per stage, while :meth:`installed` holds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def _timed(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        seconds, calls, clock = self.seconds, self.calls, time.perf_counter

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[label] += clock() - started
                calls[label] += 1

        return timed

    def _member(self, run_plan: Callable[..., Any]) -> Callable[..., Any]:
        """``run_plan`` timed per model class (a pass-through wrapper's inner one)."""
        seconds, calls, clock = self.seconds, self.calls, time.perf_counter

        @functools.wraps(run_plan)
        def timed(model: Any, plan: Any) -> Any:
            started = clock()
            try:
                return run_plan(model, plan)
            finally:
                label = f"member {type(getattr(model, 'inner', model)).__name__}"
                seconds[label] += clock() - started
                calls[label] += 1

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[StageTimer]:
        """The timers in place of the stages; the originals back afterwards."""
        with contextlib.ExitStack() as restore:
            for name in TASK_STAGES:
                self._swap(restore, PartitionTask, name, f"task {name}")
            for owner, name in OTHER_STAGES:
                self._swap(restore, owner, name, f"{owner.__name__}.{name}")
            namespace = vars(tasks)  # the name the task calls, not models.base's
            run_plan = namespace["run_plan"]
            restore.callback(namespace.__setitem__, "run_plan", run_plan)
            namespace["run_plan"] = self._member(run_plan)
            yield self

    def _swap(self, restore: contextlib.ExitStack, owner: type, name: str, label: str) -> None:
        original = getattr(owner, name)
        restore.callback(setattr, owner, name, original)
        setattr(owner, name, self._timed(label, original))

    def per_task_turn(self) -> list[tuple[str, float, float]]:
        """(stage, µs per task-turn, calls per task-turn), slowest first."""
        turns = self.calls["task process"] or 1
        return [
            (label, seconds / turns * 1e6, self.calls[label] / turns)
            for label, seconds in sorted(self.seconds.items(), key=lambda item: -item[1])
        ]


def timed_turns(
    settings: Settings, records: list[RawRecord], turn: int
) -> tuple[StageTimer, float]:
    """The stages of the second half of ``records``, fed in polls of ``turn``; and
    the wall time per poll in ms (with the timers in)."""
    processor = Processor(settings, ListSink(), Metrics(CollectorRegistry(), settings))
    processor.on_assigned(sorted({(r.topic, r.partition) for r in records}))
    half = len(records) // 2
    for start in range(0, half, WARM_POLL):
        processor.acknowledged(processor.process(records[start : min(start + WARM_POLL, half)]))
    rest = records[half:]
    timer = StageTimer()
    with timer.installed():
        started = time.perf_counter()
        for start in range(0, len(rest), turn):
            processor.acknowledged(processor.process(rest[start : start + turn]))
        elapsed = time.perf_counter() - started
    polls = max(1, -(-len(rest) // turn))
    return timer, elapsed / polls * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="default: the built-in settings")
    parser.add_argument("--dataset", default="sp500")
    parser.add_argument("--events", type=int, default=12_500)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--turn", type=int, default=16, help="records per timed poll")
    add_set_option(parser, "the config")
    args = parser.parse_args(argv)
    settings = load_settings(args.config, env=set_overrides(parser, args.set))
    set_torch_threads(settings.processing.torch_threads)
    records = records_for(settings, args.dataset, args.events, args.partitions, args.keys)
    timer, per_poll_ms = timed_turns(settings, records, args.turn)
    turns = timer.calls["task process"]
    polls = max(1, -(-(len(records) - len(records) // 2) // args.turn))
    table = Table(
        title=(
            f"{args.keys:,} keys over {args.partitions} partitions, polls of {args.turn}:"
            f" {turns / polls:.1f} tasks a poll, {per_poll_ms:.2f} ms a poll"
        )
    )
    table.add_column("stage")
    table.add_column("µs per task-turn", justify="right")
    table.add_column("calls per task-turn", justify="right")
    for label, micros, calls in timer.per_task_turn():
        table.add_row(label, f"{micros:,.1f}", f"{calls:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
