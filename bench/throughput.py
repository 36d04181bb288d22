"""End-to-end throughput and latency through the real (embedded Tansu) broker.

Prints, in one run on the same records:

* raw: kafka-python consume -> JSON decode -> JSON encode -> produce (acks=all) ->
  commit per poll of the config's ``max_poll_records``, the transport ceiling for this
  client on this machine; run with this process's start-up heap (torch, River)
  frozen, as the daemon runs, so neither pays the garbage collector for modules a
  bare consumer would not load;
* daemon: forecastd with a config (default ``configs/demo.yaml``) from first record
  consumed to last offset committed, and the ratio daemon / raw;
* latency p50/p99 of the daemon at a paced input rate of half the daemon's maximum,
  and at 1,000 events/s, from the input record's broker timestamp to the
  prediction's ``produced_at``. The maximum is measured on a backlog (large
  micro-batches); a paced stream arrives in small ones, which cost more per event,
  so at half the maximum the daemon may already queue.

Usage: ``python bench/throughput.py [--records 20000] [--config configs/demo.yaml]``.
Timings on a shared 2-core machine are noisy: raw and daemon each report their best
of ``--repeats`` runs (interleaved); compare the ratio, not absolutes.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import Counter
from rich.console import Console
from rich.table import Table

from bench.history import repeated_history
from service.config import Settings, load_settings
from service.runtime.app import Daemon, frozen_heap
from service.tools import replay
from service.tools.broker import EmbeddedBroker, free_port

ROOT = Path(__file__).resolve().parents[1]


def bench_raw(bootstrap: str, topic: str, records: int, batch: int) -> float:
    """Events/s of a plain kafka-python consume-decode-produce-commit loop."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        max_poll_records=batch,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    done = 0
    started = None
    while done < records:
        batches = consumer.poll(timeout_ms=200, max_records=batch)
        if not batches:
            continue
        started = started or time.perf_counter()
        for messages in batches.values():
            for message in messages:
                event = orjson.loads(message.value)
                out = {"key": event["key"], "y_hat": event["y"], "source": message.offset}
                producer.send("raw-out", key=message.key, value=orjson.dumps(out))
                done += 1
        producer.flush()
        consumer.commit()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    producer.close()
    return records / elapsed


def bench_raw_confluent(bootstrap: str, topic: str, records: int, batch: int) -> float:
    """Events/s of the same loop on confluent-kafka (librdkafka)."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    done = 0
    started = None
    while done < records:
        messages = consumer.consume(num_messages=batch, timeout=0.2)
        if not messages:
            continue
        started = started or time.perf_counter()
        for message in messages:
            if message.error() is not None:
                continue
            event = orjson.loads(message.value() or b"")
            out = {"key": event["key"], "y_hat": event["y"], "source": message.offset()}
            producer.produce("raw-out", orjson.dumps(out), message.key())
            done += 1
        producer.flush()
        consumer.commit(asynchronous=False)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return records / elapsed


RAW = {"kafka-python": bench_raw, "confluent": bench_raw_confluent}


def _daemon_settings(
    config: Path, bootstrap: str, topic: str, output: str, client: str
) -> Settings:
    env = {
        "FORECASTD_KAFKA__CLIENT": client,
        "FORECASTD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "FORECASTD_KAFKA__INPUT_TOPIC": topic,
        "FORECASTD_KAFKA__OUTPUT_TOPIC": output,
        "FORECASTD_KAFKA__DEAD_LETTER_TOPIC": f"{topic}.dlq",
        "FORECASTD_KAFKA__GROUP_ID": f"bench-{uuid.uuid4().hex[:6]}",
        "FORECASTD_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "FORECASTD_METRICS__HOST": "127.0.0.1",
        "FORECASTD_METRICS__PORT": str(free_port()),
    }
    return load_settings(config, env=env)


def bench_daemon(settings: Settings, records: int) -> float:
    """Events/s of the daemon on an input topic already holding ``records`` records."""
    daemon = Daemon(settings)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    # Watch cheaply: reading the registry collects every metric (scores pooled over
    # the tasks), which, done every few ms, would slow the daemon it measures.
    while daemon.processor.assignments == 0 or not daemon.processor.tasks:
        time.sleep(0.005)
    while _count(daemon.metrics.batches) == 0:
        time.sleep(0.002)
    started, already = time.perf_counter(), _count(daemon.metrics.consumed)
    while sum(daemon.source.committed.values()) < records:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    daemon.stop()
    thread.join(timeout=30)
    return (records - already) / elapsed


def _count(counter: Counter) -> float:
    """One unlabelled counter's value, without collecting the whole registry."""
    return float(next(iter(counter.collect())).samples[0].value)


def bench_latency(
    broker: EmbeddedBroker,
    config: Path,
    pairs: list[tuple[bytes, bytes]],
    rate: float,
    client: str,
) -> tuple[float, float]:
    """p50 and p99 milliseconds from input broker timestamp to prediction produced_at."""
    topic, output = f"lat-{uuid.uuid4().hex[:6]}", f"lat-out-{uuid.uuid4().hex[:6]}"
    broker.create_topics([topic], partitions=3)
    broker.create_topics([output, f"{topic}.dlq"])
    settings = _daemon_settings(config, broker.bootstrap, topic, output, client)
    daemon = Daemon(settings)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    while daemon.processor.assignments == 0:
        time.sleep(0.05)
    replay.to_kafka(pairs, topic, broker.bootstrap, rate=rate, show_progress=False)
    while sum(daemon.source.committed.values()) < len(pairs):
        time.sleep(0.05)
    daemon.stop()
    thread.join(timeout=30)
    sent_at = _timestamps(broker.bootstrap, topic, len(pairs))
    latencies = []
    for record in _read(broker.bootstrap, output, len(pairs)):
        prediction = orjson.loads(record.value)
        latencies.append(prediction["produced_at"] - sent_at[prediction["source"]])
    p50, p99 = np.percentile(latencies, [50, 99])
    return float(p50), float(p99)


def _read(bootstrap: str, topic: str, count: int) -> list:  # type: ignore[type-arg]
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000
    )
    found = []
    for record in consumer:
        found.append(record)
        if len(found) >= count:
            break
    consumer.close()
    return found


def _timestamps(bootstrap: str, topic: str, count: int) -> dict[str, int]:
    return {
        f"{r.topic}:{r.partition}:{r.offset}": r.timestamp for r in _read(bootstrap, topic, count)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--dataset", default="sp500")
    parser.add_argument("--clients", nargs="*", default=list(RAW), choices=list(RAW))
    parser.add_argument("--repeats", type=int, default=2, help="best of, raw and daemon")
    args = parser.parse_args()
    console = Console()
    base = load_settings(args.config, env={})
    pairs = repeated_history(args.dataset, base.schema_, args.records)
    table = Table(title=f"forecastd throughput, {len(pairs):,} records, {args.config.name}")
    for column in ("client", "raw events/s", "daemon events/s", "daemon / raw", "p50 ms"):
        table.add_column(column, justify="right")
    table.add_column("p99 ms", justify="right")
    table.add_column("latency at", justify="right")
    table.add_column("p50/p99 ms at 1,000/s", justify="right")
    with EmbeddedBroker() as broker:
        for client in args.clients:
            topic = f"bench-{uuid.uuid4().hex[:6]}"
            broker.create_topics([topic], partitions=3)
            broker.create_topics(["raw-out", "bench-out", f"{topic}.dlq"])
            replay.to_kafka(pairs, topic, broker.bootstrap, show_progress=False)
            batch = base.kafka.max_poll_records  # the raw loop polls as much as the daemon
            raws, daemons = [], []
            for _ in range(args.repeats):  # interleaved: a slow spell hits both sides
                with frozen_heap():  # as the daemon runs: torch's heap is not the transport's
                    raws.append(RAW[client](broker.bootstrap, topic, len(pairs), batch))
                settings = _daemon_settings(
                    args.config, broker.bootstrap, topic, "bench-out", client
                )
                daemons.append(bench_daemon(settings, len(pairs)))
            raw, daemon = max(raws), max(daemons)
            latency_pairs = pairs[: min(len(pairs), int(daemon * 10))]
            p50, p99 = bench_latency(broker, args.config, latency_pairs, daemon / 2, client)
            low50, low99 = bench_latency(broker, args.config, pairs[:5000], 1000.0, client)
            table.add_row(
                client,
                f"{raw:,.0f}",
                f"{daemon:,.0f}",
                f"{daemon / raw:.0%}",
                f"{p50:.0f}",
                f"{p99:.0f}",
                f"{daemon / 2:,.0f}/s",
                f"{low50:.0f} / {low99:.0f}",
            )
            console.print(f"{client}: raw {raw:,.0f}/s, daemon {daemon:,.0f}/s")
    console.print(table)


if __name__ == "__main__":
    main()
