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
from typing import IO, Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.net.compat import KafkaNetClient
from kafka.protocol.consumer import FetchRequest
from kafka.record import MemoryRecords

from service.config import Settings, load_settings
from service.runtime.app import Daemon
from service.tools.broker import EmbeddedBroker, free_port

PIPELINE_CONFIG = str(Path(__file__).with_name("pipeline.yaml"))
"""The config the integration tests start from; topics and ports come from FORECASTD_*."""


def start_daemon(
    env: dict[str, str], config: str = PIPELINE_CONFIG, output: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """``forecastd run`` as a real process, with ``env`` over this environment; its
    output (stdout and stderr together) on ``stdout``, or into ``output`` (a file: a
    pipe nobody reads blocks the daemon once its logs fill it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "service", "run", "-c", config],
        env={**os.environ, **env},
        stdout=subprocess.PIPE if output is None else output,
        stderr=subprocess.STDOUT,
    )


@contextmanager
def reaped(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """``process``, killed and waited for on the way out if it is still running: a
    test that fails midway must not leave a daemon behind on the shared broker."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def topic_names(bootstrap: str) -> set[str]:
    """The broker's topics, by a request that names none (so creates none)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


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


@dataclass(frozen=True)
class Committed:
    """A record a ``read_committed`` consumer sees (:func:`committed_records`)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def committed_records(bootstrap: str, topic: str) -> list[Committed]:
    """What a ``read_committed`` consumer of ``topic`` sees now, in offset order per
    partition: records written outside transactions, and those of committed
    transactions; none of an aborted transaction, none of one still open.

    It reads the raw record batches (a Fetch request of its own) and applies the
    transaction markers itself, as the Kafka protocol has consumers do with the
    aborted-transaction index a broker returns: Tansu 0.6 writes the commit and abort
    markers but returns no such index, so kafka-python's and librdkafka's
    ``read_committed`` consumers hand out the records of aborted transactions on it
    (docs/operations.md). On a broker that returns the index, this reader and theirs
    agree.
    """
    client = KafkaNetClient(bootstrap_servers=bootstrap.split(","), client_id="committed-reader")
    try:
        leaders = _leaders(client, topic)
        found: list[Committed] = []
        for partition, leader in sorted(leaders.items()):
            found.extend(_committed_in(client, leader, topic, partition))
        return found
    finally:
        client.close()


def _leaders(client: KafkaNetClient, topic: str) -> dict[int, int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        client.poll(future=client.cluster.request_update(), timeout_ms=1000)
        partitions = client.cluster.partitions_for_topic(topic) or set()
        leaders = {
            p: client.cluster.leader_for_partition(TopicPartition(topic, p)) for p in partitions
        }
        if leaders and all(leader is not None and leader >= 0 for leader in leaders.values()):
            return leaders
        time.sleep(0.1)
    raise AssertionError(f"no leaders for {topic} within 10s")


def _committed_in(
    client: KafkaNetClient, leader: int, topic: str, partition: int
) -> list[Committed]:
    committed: list[Committed] = []
    open_transactions: dict[int, list[Committed]] = {}  # producer id -> its records so far
    offset = 0
    while True:
        request = FetchRequest(
            replica_id=-1,
            max_wait_ms=100,
            min_bytes=1,
            max_bytes=1 << 19,  # under the client's receive_message_max_bytes (1 MB)
            isolation_level=0,  # everything, markers included: the filtering is ours
            session_id=0,
            session_epoch=0,
            topics=[
                FetchRequest.FetchTopic(
                    topic=topic,
                    partitions=[
                        FetchRequest.FetchTopic.FetchPartition(
                            partition=partition,
                            fetch_offset=offset,
                            partition_max_bytes=1 << 19,
                            current_leader_epoch=0,
                            log_start_offset=-1,
                            last_fetched_epoch=-1,
                        )
                    ],
                )
            ],
            forgotten_topics_data=[],
            rack_id="",
            max_version=12,  # topics by name (v13 names them by id)
        )
        response = client.send_and_receive(leader, request)
        data = response.responses[0].partitions[0]
        assert data.error_code == 0, f"fetch {topic}:{partition}: error {data.error_code}"
        batches = MemoryRecords(data.records)
        batch = batches.next_batch()
        if batch is None:  # the end; an open transaction's records stay out (the LSO)
            return sorted(committed, key=lambda r: r.offset)
        while batch is not None:
            raw = list(batch)
            records = [Committed(partition, r.offset, r.key, r.value) for r in raw]
            if batch.is_control_batch:
                ended = open_transactions.pop(batch.producer_id, [])
                if not raw[0].abort:
                    committed.extend(ended)
            elif batch.is_transactional:
                open_transactions.setdefault(batch.producer_id, []).extend(records)
            else:
                committed.extend(records)
            offset = batch.next_offset
            batch = batches.next_batch()


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
