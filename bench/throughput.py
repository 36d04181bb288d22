"""End-to-end throughput and latency through the real (embedded Tansu) broker.

Prints, in one run on the same records:

* raw: kafka-python consume -> JSON decode -> JSON encode -> produce (acks=all) ->
  commit per poll of the config's ``max_poll_records``, the transport ceiling for this
  client on this machine; run with this process's start-up heap (torch, River)
  frozen, as the daemon runs, so neither pays the garbage collector for modules a
  bare consumer would not load;
* daemon: forecastd with a config (default ``configs/demo.yaml``), as a pod of 1 and
  of 2 worker processes (``processing.workers``, :mod:`service.runtime.workers`), from the
  moment the pod is ready (every worker joined the group) to the last prediction's
  ``produced_at``; the ratio daemon (1 worker) / raw, and 2 workers / 1 worker; and
  the pod's resident memory once it finished (``process_resident_memory_bytes`` on
  its own ``/metrics``, its workers' summed), the largest of the repeats;
* latency p50/p99 of a 1-worker pod at a paced input rate of 1,000 events/s and of
  ``--fractions`` (default 50% and 90%) of its backlog rate, from the input record's
  broker timestamp to the prediction's ``produced_at``, after a warm-up (models built,
  first batch done) that is not counted. The daemon runs in its own process, not
  beside the producer. ``bench.latency`` takes one such run apart.

Usage: ``python -m bench.throughput [--records 20000] [--config configs/demo.yaml |
default] [--keys N] [--clients kafka-python confluent] [--workers 1 2] [--partitions 3]
[--fractions 0.5 0.9] [--max-rate EVENTS_PER_S]``. ``--keys`` spreads the dataset's
records over N keys (each in turn); ``--partitions`` sets the input topic's (3 by
default: 2 workers then split them 2:1, and the worker with two has two thirds of the
records); ``--max-rate`` skips the backlog runs and paces at fractions of the rate
given (one measured before, on the same keys).
Timings on a shared 2-core machine are noisy: raw and daemon each report their best
of ``--repeats`` runs (interleaved); compare the ratio, not absolutes.
"""

from __future__ import annotations

import argparse
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import orjson
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from rich.console import Console
from rich.table import Table

from bench.history import repeated_history, spread
from service.config import SchemaSettings, Settings, load_settings
from service.runtime.app import frozen_heap
from service.runtime.workers import Pod, WorkerTarget, run_worker
from service.tools import replay
from service.tools.broker import EmbeddedBroker, free_port

ROOT = Path(__file__).resolve().parents[1]
Pair = tuple[bytes, bytes]
WARM_UP = 500
"""Records sent before a latency run, not counted: the first batch builds the models."""


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
    config: Path | None,
    bootstrap: str,
    topic: str,
    output: str,
    client: str,
    extra: dict[str, str] | None = None,
) -> Settings:
    """The daemon's settings for a run; ``extra``: more FORECASTD_* overrides."""
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
        "FORECASTD_PROCESSING__LOG_LEVEL": "WARNING",
        **(extra or {}),
    }
    return load_settings(config, env=env)


def done(pod: Pod, settings: Settings) -> int:
    """Records the pod has finished, from its ``/metrics``: the primary model's
    predictions the broker acknowledged plus the records dead-lettered. (Not the
    group's committed offsets: with learned state on, the default, offsets are
    committed only with a checkpoint, every ``state.interval_s``, so a backlog of a
    few seconds was all committed at once and its rate could not be timed.)"""
    primary = next(m.name for m in settings.models if m.primary)
    total = 0.0
    for sample in _samples(pod):
        if sample.name == "forecastd_predictions_produced_total":
            total += sample.value if sample.labels.get("model") == primary else 0.0
        elif sample.name == "forecastd_invalid_messages_total":
            total += sample.value
    return int(total)


def _samples(pod: Pod) -> Iterator[Sample]:
    """Every sample of one scrape of the pod's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{pod.port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        yield from family.samples


def wait_done(pod: Pod, settings: Settings, count: int, interval_s: float = 0.25) -> None:
    """Until the pod finished ``count`` records (:func:`done`), scraping every
    ``interval_s``: each scrape of the pod scrapes every worker, so not too often."""
    deadline = time.monotonic() + 600
    while done(pod, settings) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pod did not finish {count} records in 600 s")
        time.sleep(interval_s)


@contextmanager
def running_pod(
    settings: Settings, workers: int, target: WorkerTarget = run_worker
) -> Iterator[Pod]:
    """A pod of ``workers`` worker processes, ready (every worker in the group);
    ``target``: what each worker runs (``bench.latency`` traces it)."""
    pod = Pod(settings, workers, target=target)
    thread = threading.Thread(target=pod.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 180
        while not _ready(pod.port):
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the pod did not become ready in 180 s")
            time.sleep(0.05)
        yield pod
    finally:
        pod.stop_event.set()
        thread.join(timeout=120)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            return int(reply.status) == 200
    except OSError:
        return False


def resident_bytes(pod: Pod) -> float:
    """The pod's resident memory now, as its ``/metrics`` says (workers summed)."""
    return sum(s.value for s in _samples(pod) if s.name == "process_resident_memory_bytes")


def bench_daemon(settings: Settings, records: int, workers: int) -> tuple[float, float]:
    """Events/s of a pod of ``workers`` on an input topic already holding ``records``
    records, from the moment every worker joined (model building and the rebalance
    that the second worker's join causes are not counted) to the last prediction, by
    the predictions' own ``produced_at``: nothing polls the pod while it works; and
    the pod's resident bytes once it finished (:func:`resident_bytes`)."""
    with running_pod(settings, workers) as pod:
        ready_ms = time.time() * 1000
        wait_done(pod, settings, records)
        rss = resident_bytes(pod)
    produced = {
        prediction["source"]: prediction["produced_at"]
        for prediction in (
            orjson.loads(r.value)
            for r in _read(settings.kafka.bootstrap_servers, settings.kafka.output_topic, records)
        )
    }
    after = [at for at in produced.values() if at >= ready_ms]
    if len(after) < 2:
        raise RuntimeError("the pod finished before it was ready: give it more --records")
    return float(len(after) / ((max(after) - ready_ms) / 1000)), rss


def bench_latency(
    broker: EmbeddedBroker,
    config: Path | None,
    pairs: list[tuple[bytes, bytes]],
    rate: float,
    client: str,
    partitions: int = 3,
) -> tuple[float, float]:
    """p50 and p99 milliseconds from input broker timestamp to prediction produced_at
    of ``pairs`` paced at ``rate``, after a warm-up of :data:`WARM_UP` records."""
    topic, output = f"lat-{uuid.uuid4().hex[:6]}", f"lat-out-{uuid.uuid4().hex[:6]}"
    broker.create_topics([topic], partitions=partitions)
    broker.create_topics([output, f"{topic}.dlq"])
    settings = _daemon_settings(config, broker.bootstrap, topic, output, client)
    warm, paced = pairs[:WARM_UP], pairs[WARM_UP:]
    with running_pod(settings, 1) as pod:
        replay.to_kafka(warm, topic, broker.bootstrap, show_progress=False)
        wait_done(pod, settings, len(warm), 0.1)
        replay.to_kafka(paced, topic, broker.bootstrap, rate=rate, show_progress=False)
        wait_done(pod, settings, len(pairs))
    inputs = _read(broker.bootstrap, topic, len(pairs))
    sent_at = {f"{r.topic}:{r.partition}:{r.offset}": r.timestamp for r in inputs}
    warm_sources = set(sorted(sent_at, key=sent_at.__getitem__)[: len(warm)])
    latencies = []
    for record in _read(broker.bootstrap, output, len(pairs)):
        prediction = orjson.loads(record.value)
        if prediction["source"] not in warm_sources:
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


def config_path(value: str) -> Path | None:
    """``--config``: a file, or ``default`` for the built-in settings (no file)."""
    return None if value == "default" else Path(value)


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--dataset`` and ``--keys``: what the daemon runs and on what
    (this benchmark's and ``bench.latency``'s)."""
    parser.add_argument(
        "--config",
        type=config_path,
        default=ROOT / "configs" / "demo.yaml",
        help="a config file, or 'default' for the built-in settings",
    )
    parser.add_argument("--dataset", default="sp500")
    parser.add_argument("--keys", type=int, default=None, help="spread over this many keys")


def history(args: argparse.Namespace, schema: SchemaSettings, count: int) -> list[Pair]:
    """``count`` records of ``--dataset``, spread over ``--keys`` keys if given."""
    pairs = repeated_history(args.dataset, schema, count)
    return spread(pairs, args.keys) if args.keys else pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    add_stream_options(parser)
    parser.add_argument("--clients", nargs="*", default=list(RAW), choices=list(RAW))
    parser.add_argument("--workers", nargs="*", type=int, default=[1, 2])
    parser.add_argument(
        "--partitions",
        type=int,
        default=3,
        help="of the input topic: the unit a pod's workers split between them",
    )
    parser.add_argument("--repeats", type=int, default=2, help="best of, raw and daemon")
    parser.add_argument("--latency-s", type=float, default=8.0, help="seconds per paced run")
    parser.add_argument(
        "--fractions",
        nargs="*",
        type=float,
        default=[0.5, 0.9],
        help="paced latency runs at these fractions of the 1-worker rate (and at 1,000/s)",
    )
    parser.add_argument(
        "--max-rate",
        type=float,
        default=None,
        help="skip the backlog runs and take this as the 1-worker rate (latency only)",
    )
    args = parser.parse_args()
    console = Console()
    base = load_settings(args.config, env={})
    name = args.config.name if args.config else "built-in defaults"
    if args.keys:
        name += f", {args.keys:,} keys"
    rates = Table(title=f"forecastd throughput, {args.records:,} records, {name}")
    for column in ("client", "raw events/s", *(f"{w} worker(s) events/s" for w in args.workers)):
        rates.add_column(column, justify="right")
    rates.add_column("daemon / raw", justify="right")
    if len(args.workers) > 1:
        rates.add_column(f"{args.workers[-1]} / {args.workers[0]} workers", justify="right")
    for w in args.workers:
        rates.add_column(f"{w} worker(s) RSS at end", justify="right")
    latency = Table(title=f"latency, 1 worker, {name}: input broker timestamp to produced_at")
    for column in ("client", "paced at", "events/s", "p50 ms", "p99 ms"):
        latency.add_column(column, justify="right")
    with EmbeddedBroker() as broker:
        for client in args.clients:
            if args.max_rate is None:
                one = _backlog_rates(args, base, broker, client, rates, console)
            else:
                one = args.max_rate
            points = [("1,000/s", 1000.0)]
            points += [(f"{f:.0%} of max", one * f) for f in args.fractions]
            for label, rate in points:
                count = WARM_UP + int(rate * args.latency_s)
                p50, p99 = bench_latency(
                    broker,
                    args.config,
                    history(args, base.schema_, count),
                    rate,
                    client,
                    args.partitions,
                )
                latency.add_row(client, label, f"{rate:,.0f}", f"{p50:.0f}", f"{p99:.0f}")
                console.print(f"{client} at {rate:,.0f}/s: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    if args.max_rate is None:
        console.print(rates)
    console.print(latency)


def _backlog_rates(
    args: argparse.Namespace,
    base: Settings,
    broker: EmbeddedBroker,
    client: str,
    rates: Table,
    console: Console,
) -> float:
    """The raw loop's and the pods' backlog rates (a row of ``rates``); returns the
    first worker count's."""
    pairs = history(args, base.schema_, args.records)
    topic = f"bench-{uuid.uuid4().hex[:6]}"
    broker.create_topics([topic], partitions=args.partitions)
    broker.create_topics(["raw-out", f"{topic}.dlq"])
    replay.to_kafka(pairs, topic, broker.bootstrap, show_progress=False)
    batch = base.kafka.max_poll_records  # the raw loop polls as much as the daemon
    raws: list[float] = []
    daemons: dict[int, list[float]] = {w: [] for w in args.workers}
    resident: dict[int, float] = dict.fromkeys(args.workers, 0.0)
    for _ in range(args.repeats):  # interleaved: a slow spell hits every side
        with frozen_heap():  # as the daemon runs: torch's heap is not the transport's
            raws.append(RAW[client](broker.bootstrap, topic, len(pairs), batch))
        for workers in args.workers:
            output = f"bench-out-{uuid.uuid4().hex[:6]}"  # the run's own: read back by it
            broker.create_topics([output])
            settings = _daemon_settings(args.config, broker.bootstrap, topic, output, client)
            rate, rss = bench_daemon(settings, len(pairs), workers)
            daemons[workers].append(rate)
            resident[workers] = max(resident[workers], rss)
    raw = max(raws)
    best = {w: max(rates_) for w, rates_ in daemons.items()}
    one = best[args.workers[0]]
    row = [client, f"{raw:,.0f}", *(f"{best[w]:,.0f}" for w in args.workers)]
    row.append(f"{one / raw:.0%}")
    if len(args.workers) > 1:
        row.append(f"{best[args.workers[-1]] / one:.2f}x")
    memory = {w: f"{resident[w] / 2**20:,.0f} MiB" for w in args.workers}
    row += memory.values()
    rates.add_row(*row)
    console.print(f"{client}: raw {raw:,.0f}/s, daemon {best}, RSS at end {memory}")
    return one


if __name__ == "__main__":
    main()
