"""Memory per key: what one more live series costs the process, by key count.

    python -m bench.keys                # 1k, 10k and 50k keys, 10 events each

Feeds the default config (the ensemble and its members) events of N distinct keys, 10
per key, in polls of 1,000 through the offline pipeline, and reports the Python heap
(``tracemalloc``) growth per key, and the cost per event. Not a test: the numbers
depend on the machine and the Python build.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import orjson
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from service.config import Settings
from service.metrics import Metrics
from service.processor import Processor
from service.records import Headers, RawRecord

EVENTS_PER_KEY = 10
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


def _records(keys: int) -> list[RawRecord]:
    return [
        RawRecord(
            "ticks",
            0,
            step * keys + k,
            f"key-{k}".encode(),
            orjson.dumps({"ts": step * 60_000, "y": float(k % 97 + step)}),
        )
        for step in range(EVENTS_PER_KEY)
        for k in range(keys)
    ]


def _run(keys: int, records: list[RawRecord], traced: bool) -> float:
    """Heap growth per key (traced) or microseconds per event (untraced)."""
    settings = Settings.model_validate({"forecast": {"max_keys": max(keys, 1)}})
    processor = Processor(settings, _Discard(), Metrics(CollectorRegistry(), settings))
    processor.process(records[:POLL])  # models and the heap settle first
    if traced:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if traced else 0
    started = time.perf_counter()
    for start in range(POLL, len(records), POLL):
        processor.process(records[start : start + POLL])
    elapsed = time.perf_counter() - started
    if not traced:
        return elapsed / (len(records) - POLL) * 1e6
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return grown / keys


def measure(keys: int) -> tuple[float, float]:
    """Heap bytes per key and microseconds per event for ``keys`` live keys."""
    records = _records(keys)
    return _run(keys, records, traced=True), _run(keys, records, traced=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="1000,10000,50000")
    args = parser.parse_args()
    table = Table(title=f"default config, {EVENTS_PER_KEY} events per key, polls of {POLL}")
    for column in ("live keys", "heap bytes / key", "µs / event"):
        table.add_column(column, justify="right")
    for keys in (int(k) for k in args.keys.split(",")):
        per_key, per_event = measure(keys)
        table.add_row(f"{keys:,}", f"{per_key:,.0f}", f"{per_event:,.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
