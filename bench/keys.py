"""Cost and memory by number of live keys, at an equal number of events.

    python -m bench.keys                          # 10, 1k, 10k, 100k keys; 200,000 events
    python -m bench.keys --keys 20,60000 --events 120000 --max-keys default
    python -m bench.keys --mode hot --events 50000   # 10 busy keys beside N-10 idle ones

Feeds a config (default: the built-in one, the ensemble and its members) the same
number of events spread over N distinct keys (each key's events in turn: key 0..N-1,
then again), in polls of 1,000, through the offline pipeline (decode, partition task,
encode; no broker). Each key count runs in a fresh process (``spawn``), with one
torch thread and the start-up heap frozen as in the daemon, so that neither the
heap nor the allocator of one run is inherited by the next. Reported: events/s after
the first poll, the ratio to the first key count of the same run, and the resident
memory (RSS) the run added, per key, and at its end.

``--mode hot`` isolates what the number of live keys costs every batch: first N - 10
keys get two events each (not timed), then the timed events all belong to 10 other
keys, so every run does the same work beside a different number of live keys.

``--max-keys``: ``live`` (the default) raises ``forecast.max_keys`` to N so that every
key stays live; ``default`` keeps the built-in cap, so that beyond it keys are evicted
as the daemon would evict them. Not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import random
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from service.records import Headers, RawRecord

POLL = 1000


class _Discard:
    """A sink that keeps nothing: what is measured is the daemon's state, not its
    output (a broker holds that)."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Headers = (),
        partition: int | None = None,
    ) -> None:
        """Drop the record."""

    def flush(self) -> None:
        """Nothing is pending."""

    def close(self) -> None:
        """Nothing to close."""


@dataclass(frozen=True)
class Result:
    keys: int
    events: int
    events_per_s: float
    rss_added: int
    rss_end: int
    live_keys: int


def records(keys: int, events: int) -> list[RawRecord]:
    """``events`` records of ``keys`` keys in turn, one minute apart per key: each key
    a random walk (a constant step would give keys a zero unit, a degenerate case)."""
    rng = random.Random(keys)
    level = [float(k % 97) for k in range(keys)]
    out = []
    for n in range(events):
        k = n % keys
        level[k] += rng.gauss(0.0, 1.0)
        # json, not orjson: orjson leaves a ~4 KiB malloc hole per small result, which
        # would count 4 KiB per record of this list as memory of the daemon
        value = json.dumps({"ts": n // keys * 60_000, "y": level[k]}).encode()
        out.append(RawRecord("ticks", 0, n, f"key-{k}".encode(), value))
    return out


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        import os

        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


HOT_KEYS = 10


def hot_records(keys: int, events: int) -> tuple[list[RawRecord], list[RawRecord]]:
    """(untimed: two events of each of ``keys - 10`` idle keys, timed: ``events`` of 10
    other keys, later in time)."""
    idle = keys - HOT_KEYS
    before = records(idle, 2 * idle) if idle > 0 else []
    timed = [
        r._replace(key=b"hot-" + (r.key or b""), offset=2 * idle + r.offset)
        for r in records(HOT_KEYS, events)
    ]
    return before, timed


def _measure(
    keys: int, events: int, config: str | None, max_keys: str, mode: str = "spread"
) -> Result:
    """One key count, in this (fresh) process."""
    import torch
    from prometheus_client import CollectorRegistry

    from service.config import load_settings
    from service.pipeline.processor import Processor
    from service.runtime.metrics import Metrics

    torch.set_num_threads(1)
    settings = load_settings(config, env={})
    if max_keys == "live":
        forecast = settings.forecast.model_copy(
            update={"max_keys": max(keys, settings.forecast.max_keys)}
        )
        settings = settings.model_copy(update={"forecast": forecast})
    processor = Processor(settings, _Discard(), Metrics(CollectorRegistry(), settings))
    idle, stream = hot_records(keys, events) if mode == "hot" else ([], records(keys, events))
    first = (idle or stream)[:POLL]
    processor.process(first)  # models built, features fixed
    gc.collect()
    gc.freeze()  # as the daemon serves (service.runtime.app.frozen_heap)
    before = _rss()
    for start in range(len(first), len(idle), POLL):
        processor.process(idle[start : start + POLL])
    if idle:
        processor.process(stream[:POLL])
    started = time.perf_counter()
    for start in range(POLL, len(stream), POLL):
        processor.process(stream[start : start + POLL])
    elapsed = time.perf_counter() - started
    return Result(
        keys,
        events,
        (len(stream) - POLL) / elapsed,
        _rss() - before,
        _rss(),
        processor.active_series,
    )


def measure(
    keys: int,
    events: int,
    config: str | None = None,
    max_keys: str = "live",
    mode: str = "spread",
) -> Result:
    """:func:`_measure` in a fresh process."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_measure, (keys, events, config, max_keys, mode))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="10,1000,10000,100000")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--config", type=Path, help="default: the built-in config")
    parser.add_argument("--max-keys", choices=("live", "default"), default="live")
    parser.add_argument("--mode", choices=("spread", "hot"), default="spread")
    args = parser.parse_args()
    config = str(args.config) if args.config else None
    table = Table(
        title=f"{args.events:,} events, polls of {POLL}, "
        f"{args.config or 'built-in config'}, max_keys: {args.max_keys}, mode: {args.mode}"
    )
    for column in (
        "keys",
        "events / key",
        "events/s",
        "vs first",
        "live keys at end",
        "RSS added / key",
        "RSS at end",
    ):
        table.add_column(column, justify="right")
    first: float | None = None
    for keys in (int(k) for k in args.keys.split(",")):
        result = measure(keys, args.events, config, args.max_keys, args.mode)
        first = first or result.events_per_s
        table.add_row(
            f"{keys:,}",
            f"{args.events / (HOT_KEYS if args.mode == 'hot' else keys):,.0f}",
            f"{result.events_per_s:,.0f}",
            f"{result.events_per_s / first:.2f}x",
            f"{result.live_keys:,}",
            f"{result.rss_added / keys:,.0f} B",
            f"{result.rss_end / 2**20:,.0f} MiB",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
