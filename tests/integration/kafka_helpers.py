"""Produce, consume and run a daemon against the real test broker."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from service.config import Settings, load_settings
from service.runtime.app import Daemon
from service.tools.broker import EmbeddedBroker, free_port

PIPELINE_CONFIG = str(Path(__file__).with_name("pipeline.yaml"))
"""The config the integration tests start from; topics and ports come from FORECASTD_*."""


def start_daemon(env: dict[str, str], config: str = PIPELINE_CONFIG) -> subprocess.Popen[bytes]:
    """``forecastd run`` as a real process, with ``env`` over this environment; its
    output (stdout and stderr together) on ``stdout``."""
    return subprocess.Popen(
        [sys.executable, "-m", "service", "run", "-c", config],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def committed_offsets(bootstrap: str, group: str) -> dict[int, int]:
    """The group's committed offset per input partition (those it committed)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    dlq: str
    group: str


def fresh_topics(broker: EmbeddedBroker, partitions: int = 3, output_partitions: int = 1) -> Topics:
    tag = uuid.uuid4().hex[:8]
    topics = Topics(f"in-{tag}", f"out-{tag}", f"dlq-{tag}", f"group-{tag}")
    broker.create_topics([topics.input], partitions=partitions)
    broker.create_topics([topics.output], partitions=output_partitions)
    broker.create_topics([topics.dlq])
    return topics


def settings_env(
    broker: EmbeddedBroker, topics: Topics, client: str = "kafka-python", **extra: str
) -> dict[str, str]:
    """FORECASTD_* variables that point a daemon at the test broker and topics."""
    env = {
        "FORECASTD_KAFKA__CLIENT": client,
        "FORECASTD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
        "FORECASTD_KAFKA__INPUT_TOPIC": topics.input,
        "FORECASTD_KAFKA__OUTPUT_TOPIC": topics.output,
        "FORECASTD_KAFKA__DEAD_LETTER_TOPIC": topics.dlq,
        "FORECASTD_KAFKA__GROUP_ID": topics.group,
        "FORECASTD_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "FORECASTD_KAFKA__POLL_TIMEOUT_MS": "100",
        "FORECASTD_METRICS__HOST": "127.0.0.1",
        "FORECASTD_METRICS__PORT": str(free_port()),
    }
    env.update(extra)
    return env


def make_settings(config: str, env: dict[str, str]) -> Settings:
    return load_settings(config, env=env)


def produce(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for key, value, headers in records:
        producer.send(topic, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[Any]:
    """Read ``topic`` from the beginning until ``expected`` records or the timeout."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partitions = [
        TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
    ]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    found: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(found) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            found.extend(batch)
    # A short extra read shows whether more than expected arrived.
    for batch in consumer.poll(timeout_ms=500).values():
        found.extend(batch)
    consumer.close()
    return found


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@contextmanager
def running_daemon(settings: Settings) -> Iterator[Daemon]:
    """A daemon in a thread of this process; stopped (gracefully) on exit."""
    daemon = Daemon(settings)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            daemon.run()
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=target, name="daemon-under-test", daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        thread.join(timeout=30)
    if errors:
        raise errors[0]
    assert not thread.is_alive(), "daemon did not stop within 30s"
