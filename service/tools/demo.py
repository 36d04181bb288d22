"""``forecastd demo``: the whole system on one machine, with live progress.

Starts the embedded Tansu broker on a free loopback port, creates the topics, replays
a bundled real dataset (default ``sp500``, River's ``SP500Stocks``) at ``rate`` records
per second with a malformed record every ``bad_every`` (to show the dead-letter path),
runs the daemon in this process, and shows a live table of per-model scores, drift
detections and throughput. Ends when every record was processed or after ``duration``
seconds, with a summary. Ctrl-C stops everything cleanly, broker last.

Ctrl-C is a handler that sets an event (:class:`_CtrlC`), not Python's
``KeyboardInterrupt``, an exception raised wherever the main thread happens to be: a
Ctrl-C while the broker started ended the demo with a traceback, and one while the
daemon was being built was once swallowed on the way (the demo went on, and never
said it was interrupted). The event is checked by the live loop, so a Ctrl-C at any
moment ends in the same clean stop; a second one raises ``KeyboardInterrupt`` as
usual, for a demo that does not stop.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from service.config import Settings, load_settings
from service.runtime.app import Daemon
from service.tools import replay
from service.tools.broker import EmbeddedBroker, free_port

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


class _CtrlC:
    """SIGINT sets :attr:`pressed` (the first time) while in use; the handler before is
    put back on exit (module docstring)."""

    def __init__(self) -> None:
        self.pressed = threading.Event()
        self._before: Any = None

    def __enter__(self) -> _CtrlC:
        self._before = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        signal.signal(signal.SIGINT, self._before)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed.is_set():
            signal.default_int_handler(signum, frame)
        self.pressed.set()


def run_demo(config: str | None, dataset: str, duration: float, rate: float, bad_every: int) -> int:
    with _CtrlC() as ctrl_c:
        return _run(config, dataset, duration, rate, bad_every, ctrl_c.pressed)


def _run(
    config: str | None,
    dataset: str,
    duration: float,
    rate: float,
    bad_every: int,
    interrupted: threading.Event,
) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # logs and CI: don't squeeze the table to 80 columns
    base = load_settings(config or DEMO_CONFIG)
    pairs = _with_malformed(
        replay.encode(replay.load_input(dataset), replay.Columns(), base.schema_), bad_every
    )
    console.print(
        f"[bold]forecastd demo[/]: {len(pairs)} records of [cyan]{dataset}[/] at {rate:g}/s"
    )
    with EmbeddedBroker() as broker:
        settings = _demo_settings(base, broker.bootstrap)
        broker.create_topics([settings.kafka.input_topic], partitions=3)
        broker.create_topics([settings.kafka.output_topic, settings.kafka.dead_letter_topic])
        console.print(
            f"broker {broker.bootstrap}; metrics http://127.0.0.1:{settings.metrics.port}/metrics"
        )
        daemon = Daemon(settings)
        stop = threading.Event()
        worker = threading.Thread(target=daemon.run, name="daemon", daemon=True)
        sent: list[int] = []
        producer = threading.Thread(
            target=lambda: sent.append(
                replay.to_kafka(
                    pairs,
                    settings.kafka.input_topic,
                    broker.bootstrap,
                    rate,
                    False,
                    None,
                    stop.is_set,
                )
            ),
            name="replay",
            daemon=True,
        )
        worker.start()
        producer.start()
        started = time.monotonic()
        console.print(f"daemon up, replaying {dataset}: Ctrl-C stops it cleanly")
        try:
            _watch(console, daemon, len(pairs), started, duration, sent, interrupted)
            if interrupted.is_set():
                console.print("[yellow]interrupted: stopping cleanly[/]")
        finally:
            # Scores live in partition tasks, which leave with the partitions on close.
            summary = _table(daemon, len(pairs), time.monotonic() - started, title="summary")
            stop.set()
            daemon.stop()
            worker.join(timeout=30)
            producer.join(timeout=10)
        console.print(summary)
    console.print("stopped: daemon committed and closed, broker stopped")
    return 0


def _demo_settings(base: Settings, bootstrap: str) -> Settings:
    kafka = base.kafka.model_copy(
        update={"bootstrap_servers": bootstrap, "session_timeout_ms": 6000}
    )
    metrics = base.metrics.model_copy(update={"host": "127.0.0.1", "port": free_port()})
    return base.model_copy(update={"kafka": kafka, "metrics": metrics})


def _with_malformed(pairs: list[tuple[bytes, bytes]], every: int) -> list[tuple[bytes, bytes]]:
    if every <= 0:
        return pairs
    bad = [
        b"not json",
        b'{"key": "X", "y": "n/a"}',
        b"[1, 2]",
        b'{"key": "X", "ts": 1}',
        b'{"key": "X", "y": NaN}',
    ]
    out = []
    for index, pair in enumerate(pairs):
        out.append(pair)
        if index % every == every - 1:
            out.append((b"bad", bad[(index // every) % len(bad)]))
    return out


def _watch(
    console: Console,
    daemon: Daemon,
    total: int,
    started: float,
    duration: float,
    sent: list[int],
    interrupted: threading.Event,
) -> None:
    with Live(console=console, refresh_per_second=4) as live:
        while time.monotonic() - started < duration and not interrupted.is_set():
            elapsed = time.monotonic() - started
            live.update(_table(daemon, total, elapsed, title="live"))
            # Done when every record sent was processed to the end (its predictions
            # and dead letters counted), not merely consumed: the summary must not
            # race the last batch. Offsets start at 0, so the next positions add up to
            # the records processed.
            processed = sum(daemon.processor.positions.values())
            if sent and processed >= sent[0]:
                break
            interrupted.wait(0.25)
        live.update(_table(daemon, total, time.monotonic() - started, title="live"))


def _value(daemon: Daemon, name: str, **labels: str) -> float:
    return daemon.registry.get_sample_value(name, labels) or 0.0


def _table(daemon: Daemon, total: int, elapsed: float, title: str) -> Group:
    scores = daemon.processor.pooled_scores()
    table = Table(title=f"forecastd {title}: prequential scores per model (since start)")
    columns = ("model", "kind", "scored", "MAE", "RMSE", "R²", "rolling MAE", "drift", "led")
    for column in columns:
        text_column = column in {"model", "kind"}
        table.add_column(column, justify="left" if text_column else "right", no_wrap=True)
    led = _leads(daemon)
    coverage = daemon.processor.pooled_coverage()
    for model in daemon.settings.models:
        total_stats, rolling = scores[model.name]
        drift = sum(
            _value(daemon, "forecastd_drift_detections_total", model=model.name, detector=d)
            for d in daemon.settings.drift.detectors
        )
        name = f"[bold]{model.name}*[/]" if model.primary else model.name
        table.add_row(
            name,
            model.kind,
            f"{total_stats.n}",
            f"{total_stats.mae:.4f}",
            f"{total_stats.rmse:.4f}",
            f"{total_stats.r2:.4f}",
            f"{rolling.mae:.4f}",
            f"{drift:.0f}",
            led.get(model.name, ""),
        )
    consumed = _value(daemon, "forecastd_messages_consumed_total")
    produced = sum(
        _value(daemon, "forecastd_predictions_produced_total", model=m.name)
        for m in daemon.settings.models
    )
    invalid = _invalid_by_reason(daemon)
    stats = Table.grid(padding=(0, 2))
    stats.add_row(
        f"* primary (published)   consumed {consumed:.0f}/{total}",
        f"published {produced:.0f}",
        f"{consumed / max(elapsed, 1e-9):.0f} events/s",
        f"keys {daemon.processor.active_series}",
        f"{elapsed:.0f}s",
    )
    for name, (total_cover, _) in coverage.items():
        stats.add_row(
            f"{name}: {total_cover.coverage:.1%} of {total_cover.n} inside their interval"
            f" (nominal {daemon.settings.scoring.interval_coverage:.0%}),"
            f" mean width {total_cover.mean_width:.4g}"
        )
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(invalid.items()))
    dead = Table.grid()
    dead.add_row(f"dead-lettered {sum(invalid.values())}" + (f" ({reasons})" if reasons else ""))
    return Group(table, stats, dead)


def _leads(daemon: Daemon) -> dict[str, str]:
    """Per ensemble member: the share of the ensemble's predictions it led."""
    counts: dict[str, float] = {}
    for metric in daemon.registry.collect():
        if metric.name == "forecastd_ensemble_leader":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    member = sample.labels["member"]
                    counts[member] = counts.get(member, 0.0) + sample.value
    total = sum(counts.values())
    if not total:
        return {}
    return {member: f"{count / total:.0%}" for member, count in counts.items()}


def _invalid_by_reason(daemon: Daemon) -> dict[str, int]:
    found: dict[str, Any] = {}
    for metric in daemon.registry.collect():
        if metric.name == "forecastd_invalid_messages":
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    found[sample.labels["reason"]] = int(sample.value)
    return found
