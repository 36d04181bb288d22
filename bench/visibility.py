"""How long until a prediction is visible to a ``read_committed`` consumer, per mode.

    python -m bench.visibility                        # at-least-once, exactly-once at 1 s and 5 s
    python -m bench.visibility --intervals 1,2,10 --rate 200 --seconds 30

A paced stream (``--rate`` records a second, 9 keys, 3 partitions) goes through the
daemon (the demo config) on an embedded broker (Tansu), while a ``read_committed``
kafka-python consumer polls the output topic. The delay of a prediction is the
moment that consumer received it minus its input record's timestamp (set by the
feeding producer when it sent the record): what a downstream reader waits. With
``kafka.exactly_once`` a prediction becomes visible only when its transaction
commits, at the next checkpoint (``state.interval_s``), so the delay grows with the
interval; at-least-once, it is visible once its batch is flushed. The first
``--warm-up`` seconds are not counted (model building, the group join). Not a test:
the numbers depend on the machine and on the broker.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer
from rich.console import Console
from rich.table import Table

from service.config import Settings, load_settings
from service.runtime.app import Daemon
from service.tools.broker import EmbeddedBroker, free_port

ROOT = Path(__file__).resolve().parent.parent
KEYS = 9


def _settings(
    config: Path, broker: EmbeddedBroker, exactly_once: bool, interval_s: float
) -> Settings:
    tag = uuid.uuid4().hex[:8]
    topics = {"input": f"vis-in-{tag}", "output": f"vis-out-{tag}", "dlq": f"vis-dlq-{tag}"}
    broker.create_topics([topics["input"]], partitions=3)
    broker.create_topics([topics["output"], topics["dlq"]])
    env = {
        "FORECASTD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
        "FORECASTD_KAFKA__INPUT_TOPIC": topics["input"],
        "FORECASTD_KAFKA__OUTPUT_TOPIC": topics["output"],
        "FORECASTD_KAFKA__DEAD_LETTER_TOPIC": topics["dlq"],
        "FORECASTD_KAFKA__GROUP_ID": f"vis-{tag}",
        "FORECASTD_KAFKA__EXACTLY_ONCE": str(exactly_once).lower(),
        "FORECASTD_KAFKA__TRANSACTIONAL_ID": f"vis-{tag}",
        "FORECASTD_STATE__INTERVAL_S": str(interval_s),
        "FORECASTD_METRICS__HOST": "127.0.0.1",
        "FORECASTD_METRICS__PORT": str(free_port()),
    }
    return load_settings(config, env=env)


def _feed(bootstrap: str, topic: str, rate: float, seconds: float) -> None:
    """``rate`` records a second for ``seconds``: KEYS sine waves, one value each per
    round."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            key = f"k{sent % KEYS}"
            step = sent // KEYS
            y = 100 + 10 * math.sin(2 * math.pi * step / 40) + (sent % KEYS)
            value = {"key": key, "ts": 1_700_000_000_000 + step * 1000, "y": y}
            producer.send(topic, key=key.encode(), value=orjson.dumps(value))
            sent += 1
        producer.flush()
        time.sleep(0.005)
    producer.flush()
    producer.close()


def measure(
    broker: EmbeddedBroker,
    config: Path,
    exactly_once: bool,
    interval_s: float,
    rate: float,
    seconds: float,
    warm_up_s: float,
) -> list[float]:
    """The visibility delays (ms) of the predictions made after the warm-up."""
    settings = _settings(config, broker, exactly_once, interval_s)
    kafka = settings.kafka
    daemon = Daemon(settings)
    runner = threading.Thread(target=daemon.run, name="daemon", daemon=True)
    runner.start()
    reader = KafkaConsumer(
        kafka.output_topic,
        bootstrap_servers=broker.bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        enable_auto_commit=False,
    )
    seen: dict[str, int] = {}  # source -> ms it became visible
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            for batch in reader.poll(timeout_ms=50).values():
                now = time.time_ns() // 1_000_000
                for record in batch:
                    seen.setdefault(orjson.loads(record.value)["source"], now)

    reading = threading.Thread(target=read, name="reader", daemon=True)
    reading.start()
    try:
        time.sleep(2.0)  # the daemon joins its group
        _feed(broker.bootstrap, kafka.input_topic, rate, seconds)
        time.sleep(2 * interval_s + 2.0)  # the last commit point
    finally:
        daemon.stop()
        runner.join(timeout=60)
        done.set()
        reading.join(timeout=5)
        reader.close()
    sent_at = _timestamps(broker.bootstrap, kafka.input_topic)
    start = min(sent_at.values()) + int(warm_up_s * 1000)
    return [seen[s] - t for s, t in sent_at.items() if t >= start and s in seen]


def _timestamps(bootstrap: str, topic: str) -> dict[str, int]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=3000
    )
    found = {f"{r.topic}:{r.partition}:{r.offset}": int(r.timestamp) for r in consumer}
    consumer.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--intervals", default="1,5", help="state.interval_s for exactly-once")
    parser.add_argument("--rate", type=float, default=100.0, help="records a second")
    parser.add_argument("--seconds", type=float, default=20.0, help="of paced input per run")
    parser.add_argument("--warm-up", type=float, default=5.0, help="seconds not counted")
    args = parser.parse_args()
    runs = [(False, 1.0)] + [(True, float(i)) for i in args.intervals.split(",")]
    table = Table(title=f"visibility to a read_committed reader, {args.rate:g} records/s")
    for column in ("mode", "state.interval_s", "predictions", "p50 ms", "p95 ms", "max ms"):
        table.add_column(column, justify="right")
    with EmbeddedBroker() as broker:
        for exactly_once, interval in runs:
            delays = measure(
                broker, args.config, exactly_once, interval, args.rate, args.seconds, args.warm_up
            )
            p50, p95 = np.percentile(delays, [50, 95]) if delays else (math.nan, math.nan)
            table.add_row(
                "exactly-once" if exactly_once else "at-least-once",
                f"{interval:g}" if exactly_once else "-",
                f"{len(delays):,}",
                f"{p50:.0f}",
                f"{p95:.0f}",
                f"{max(delays, default=math.nan):.0f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
