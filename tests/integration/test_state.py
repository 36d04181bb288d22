"""Learned state survives kill -9: restored warm, nothing lost, nothing learned twice.

The daemon runs as a real process on the real broker; checkpoints go to the state
topic every half second, in 4 KiB chunks, so a checkpoint is several records. The
reference for "as if nothing happened" is the same input run through the same code
offline without interruption (the processing is deterministic for these models).
With ``kafka.exactly_once`` the predictions are read as a ``read_committed`` consumer
sees them (:func:`~tests.integration.kafka_helpers.committed_records`), and each
input record must have exactly one.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.config import Settings
from service.io.sinks import KafkaTransactionalSink, ListSink
from service.io.sources import ListSource
from service.pipeline.processor import Processor
from service.records import RawRecord
from service.runtime.app import run_loop
from service.runtime.metrics import Metrics
from service.runtime.snapshot import FORMAT_VERSION, decode, encode
from service.runtime.state import OFFSET_HEADER, StateTopic
from service.tools.broker import EmbeddedBroker, free_port
from service.tools.inspect_state import summary, table
from tests.integration.kafka_helpers import (
    PIPELINE_CONFIG,
    Topics,
    committed_offsets,
    committed_records,
    consume_all,
    fresh_topics,
    make_settings,
    produce,
    reaped,
    running_daemon,
    scrape,
    settings_env,
    start_daemon,
    wait_for,
)
from tests.integration.streams import Record, sine_waves

pytestmark = pytest.mark.integration

CONFIG = PIPELINE_CONFIG
PRIMARY = "linear"
SAMPLE = 600


class _Paced(threading.Thread):
    """Produces the stream at a steady pace, so that the daemon is mid-stream when
    it is killed."""

    def __init__(self, bootstrap: str, topic: str, records: list[Record]) -> None:
        super().__init__(daemon=True)
        self.servers, self.topic, self.records = bootstrap, topic, records

    def run(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.servers, acks="all", linger_ms=5)
        for start in range(0, len(self.records), 30):
            for key, value, headers in self.records[start : start + 30]:
                producer.send(self.topic, key=key, value=value, headers=headers)
            producer.flush()
            time.sleep(0.02)
        producer.close()


def _read_outputs(bootstrap: str, topic: str, expected: int = 10**9) -> list[dict[str, Any]]:
    """The predictions on ``topic`` (one partition: in the order produced), once
    ``expected`` arrived or after a few seconds."""
    found = consume_all(bootstrap, topic, expected, 3.0)
    return [orjson.loads(r.value) for r in sorted(found, key=lambda r: r.offset)]


def _committed_outputs(bootstrap: str, topic: str, expected: int = 0) -> list[dict[str, Any]]:
    """The predictions on ``topic`` that a read_committed consumer sees now, in the order
    produced (``expected`` is not waited for: a committed transaction is all there)."""
    return [orjson.loads(r.value or b"") for r in committed_records(bootstrap, topic)]


def _offline(settings: Settings, records: list[RawRecord]) -> list[dict[str, Any]]:
    """The same records through the same processing, in one uninterrupted run."""
    sink = ListSink()
    metrics = Metrics(CollectorRegistry(), settings)
    processor = Processor(settings, sink, metrics)
    run_loop(settings, ListSource(records, processor), sink, processor, metrics, lambda: False)
    return [orjson.loads(r.value) for r in sink.on(settings.kafka.output_topic)]


def _truths(records: list[RawRecord]) -> dict[tuple[str, int], float]:
    """(key, ts) of each event -> the next value of its key (horizon 1)."""
    by_key: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        value = orjson.loads(record.value or b"")
        by_key.setdefault(value["key"], []).append((value["ts"], value["y"]))
    out = {}
    for key, points in by_key.items():
        points.sort()
        for (ts, _), (_, following) in itertools.pairwise(points):
            out[(key, ts)] = following
    return out


def _mae(predictions: list[dict[str, Any]], truths: dict[tuple[str, int], float]) -> float:
    errors = [abs(float(p["y_hat"]) - truths[(p["key"], p["ts"])]) for p in predictions]
    return sum(errors) / len(errors)


def _primary(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in outputs if p["model"] == PRIMARY]


def _inputs(broker: EmbeddedBroker, topics: Topics, count: int) -> list[RawRecord]:
    return [
        RawRecord(r.topic, r.partition, r.offset, r.key, r.value, (), r.timestamp)
        for r in sorted(
            consume_all(broker.bootstrap, topics.input, count),
            key=lambda r: (r.partition, r.offset),
        )
    ]


# Each client in one delivery mode, not all four pairs, so that the suite keeps within
# its time: the restore path is the clients' common code, and each client's other mode
# is checked elsewhere (kafka-python's transactions in the scale-out and the
# aborted-transaction tests below, confluent's commits in test_shutdown and test_stall).
@pytest.mark.parametrize(
    ("client", "exactly_once"),
    [("kafka-python", False), ("confluent", True)],
    ids=["kafka-python-at-least-once", "confluent-exactly-once"],
)
def test_kill_9_mid_stream_then_restart_resumes_warm_and_loses_nothing(
    broker: EmbeddedBroker, client: str, exactly_once: bool
) -> None:
    """At-least-once: every record predicted, some twice. Exactly-once: a
    read_committed reader sees each record's prediction once."""
    topics = fresh_topics(broker)
    stream = sine_waves(events_per_key=600, copies=3)  # 9 keys: 600 predictions, ~67 each
    env = settings_env(
        broker,
        topics,
        client,
        FORECASTD_KAFKA__MAX_POLL_RECORDS="50",
        FORECASTD_KAFKA__EXACTLY_ONCE=str(exactly_once).lower(),
        FORECASTD_STATE__INTERVAL_S="0.5",
        FORECASTD_STATE__CHUNK_BYTES="4096",
    )
    _outputs = _committed_outputs if exactly_once else _read_outputs
    feeder = _Paced(broker.bootstrap, topics.input, stream)
    port = int(env["FORECASTD_METRICS__PORT"])
    with reaped(start_daemon(env)) as daemon:
        _wait_ready(port)
        feeder.start()
        wait_for(
            lambda: sum(committed_offsets(broker.bootstrap, topics.group).values()) >= 3000,
            90,
            "checkpoints",
        )
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
    killed_at = sum(committed_offsets(broker.bootstrap, topics.group).values())
    before = _outputs(broker.bootstrap, topics.output)
    feeder.join(timeout=60)
    assert killed_at < len(stream), "the kill came after the whole stream: not mid-stream"
    every_source = _all_sources(broker, topics, len(stream))

    assert not every_source <= {p["source"] for p in before}, "killed after the last record"

    with reaped(start_daemon(env)) as daemon:
        _wait_ready(port)
        wait_for(
            lambda: (
                {
                    p["source"]
                    for p in _primary(_outputs(broker.bootstrap, topics.output, len(stream)))
                }
                >= every_source
            ),
            120,
            "a prediction for every input record",
        )
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, output.decode()[-2000:]
    assert b"restored" in output, output.decode()[-2000:]
    after = _outputs(broker.bootstrap, topics.output)[len(before) :]

    inputs = _inputs(broker, topics, len(stream))
    settings = make_settings(CONFIG, env)
    reference = {p["source"]: p for p in _primary(_offline(settings, inputs))}
    # The shutdown checkpoint covers every record, as `forecastd state ls` shows.
    rows = [line.split() for line in table(settings)[2:]]
    used = sorted({r.partition for r in inputs})
    assert sorted(int(row[0]) for row in rows) == used
    assert sum(int(row[1]) for row in rows) == len(stream)
    assert {row[4] for row in rows} == {str(FORMAT_VERSION)}
    assert any(line.startswith("model linear (") for line in summary(settings, used[0]))
    # Nothing lost: every record predicted (primary model), by one run or the other;
    # with exactly-once, each once (the killed run's open transaction was aborted).
    predicted = Counter(p["source"] for p in _primary(before + after))
    assert set(predicted) == set(reference)
    if exactly_once:
        assert max(predicted.values()) == 1, predicted.most_common(3)
        written = len(_read_outputs(broker.bootstrap, topics.output))
        print(f"{written - len(before + after)} predictions in aborted transactions")
    # Every prediction of either run, the re-read records' included, is the one an
    # uninterrupted run makes (test-then-train gives the same values whatever the
    # polls, up to the feature scaler's per-poll update: far below the noise, 0.1),
    # so the restored state is the state that was saved.
    resumed = _primary(after)
    assert resumed
    for p in _primary(before + after):
        expected = reference[p["source"]]["y_hat"]
        assert p["y_hat"] == pytest.approx(expected, rel=0, abs=0.01), p["source"]
    # model_version (rows learned, as of the end of the poll) continues, and ends at
    # the uninterrupted run's count: no record was learned twice, none skipped.
    assert min(p["model_version"] for p in resumed) > 0
    assert _final_versions(before + after) == _final_versions(list(reference.values()))

    _assert_warm(_primary(before), resumed, inputs, settings)


def _assert_warm(
    before: list[dict[str, Any]],
    resumed: list[dict[str, Any]],
    inputs: list[RawRecord],
    settings: Settings,
) -> None:
    """The first predictions after a restore (up to 600) score like as many just before
    it (the same keys as many times each: keys differ in difficulty), while a cold
    daemon making the same predictions (from the same offsets on) is clearly worse.

    Where the kill lands decides how many predictions a key had before it, and the
    restarted daemon may drain one partition's backlog first; a key contributes as
    many predictions on each side as the shorter side has."""
    truths = _truths(inputs)
    restart: dict[int, int] = {}
    for p in resumed:
        restart[_partition(p)] = min(restart.get(_partition(p), 10**12), _offset(p))
    scored = _scored(resumed, truths)
    earlier = [p for p in before if _offset(p) < restart.get(_partition(p), 10**12)]
    first_after: list[dict[str, Any]] = []
    last_before: list[dict[str, Any]] = []
    for key in dict.fromkeys(p["key"] for p in scored):
        after_key = [p for p in scored if p["key"] == key]
        before_key = [p for p in earlier if p["key"] == key]
        count = min(len(after_key), len(before_key))
        first_after += after_key[:count]
        last_before += before_key[len(before_key) - count :]
    cold_inputs = [r for r in inputs if r.offset >= restart.get(r.partition, 10**12)]
    cold_run = {p["source"]: p for p in _primary(_offline(settings, cold_inputs))}
    cold = [cold_run[p["source"]] for p in first_after]  # the very same predictions, cold
    mae_before, mae_after, mae_cold = (
        _mae(group, truths) for group in (last_before, first_after, cold)
    )
    print(f"MAE before {mae_before:.4f}, after restore {mae_after:.4f}, cold {mae_cold:.4f}")
    assert len(last_before) == len(first_after) >= SAMPLE // 2, (len(first_after), SAMPLE)
    assert mae_after <= 1.2 * mae_before
    # A cold daemon is worse by a margin that depends on where the kill lands, and
    # that shrank once keys were learned from their second value (a cold start wastes
    # one value per key, not three); a restore that lost the state would be ~1x.
    assert mae_cold >= 1.15 * mae_after


def _partition(p: dict[str, Any]) -> int:
    return int(p["source"].rsplit(":", 2)[1])


def _offset(p: dict[str, Any]) -> int:
    return int(p["source"].rsplit(":", 2)[2])


def _scored(
    predictions: list[dict[str, Any]], truths: dict[tuple[str, int], float]
) -> list[dict[str, Any]]:
    """The first 600 of ``predictions`` whose true value is known."""
    out = [p for p in predictions if (p["key"], p["ts"]) in truths][:SAMPLE]
    assert len(out) == SAMPLE, f"only {len(out)} predictions to score"
    return out


def _final_versions(predictions: list[dict[str, Any]]) -> dict[str, int]:
    """Per input partition, the primary model's highest ``model_version``."""
    out: dict[str, int] = {}
    for p in _primary(predictions):
        partition = p["source"].rsplit(":", 2)[1]
        out[partition] = max(out.get(partition, 0), p["model_version"])
    return out


def _wait_ready(port: int) -> None:
    def ready() -> bool:
        try:
            return scrape(port, "/readyz")[0] == 200
        except OSError:
            return False

    wait_for(ready, 60, "/readyz")


def _all_sources(broker: EmbeddedBroker, topics: Topics, count: int) -> set[str]:
    found = consume_all(broker.bootstrap, topics.input, count, 10.0)
    return {f"{r.topic}:{r.partition}:{r.offset}" for r in found}


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_scale_out_and_back_moves_state_with_the_partitions(
    broker: EmbeddedBroker, exactly_once: bool
) -> None:
    """Two daemons in one group on six partitions: the second takes half of the
    first's partitions with their state; stopped gracefully, it hands them back. With
    exactly-once each revocation commits the open transaction from inside the
    rebalance callback, and a read_committed reader sees every prediction once."""
    topics = fresh_topics(broker, partitions=6)
    stream = sine_waves(events_per_key=600, copies=3)
    env = settings_env(
        broker,
        topics,
        FORECASTD_STATE__INTERVAL_S="0.5",
        FORECASTD_KAFKA__EXACTLY_ONCE=str(exactly_once).lower(),
        FORECASTD_KAFKA__TRANSACTIONAL_ID=f"{topics.group}-one",  # two on one host
    )
    first = make_settings(CONFIG, env)
    second = make_settings(
        CONFIG,
        {
            **env,
            "FORECASTD_METRICS__PORT": str(free_port()),
            "FORECASTD_KAFKA__TRANSACTIONAL_ID": f"{topics.group}-two",
        },
    )
    read = _committed_outputs if exactly_once else _read_outputs
    third = len(stream) // 3
    with running_daemon(first) as one:
        wait_for(lambda: len(one.processor.owned) == 6, 60, "the first daemon owns all")
        produce(broker.bootstrap, topics.input, stream[:third])
        wait_for(
            lambda: _sources(broker, topics, third, read) >= third, 60, "the first third predicted"
        )
        with running_daemon(second) as two:
            wait_for(
                lambda: (
                    len(two.processor.tasks) > 0
                    and len(one.processor.owned) + len(two.processor.owned) == 6
                ),
                60,
                "the partitions are split",
            )
            moved = set(two.processor.owned)
            produce(broker.bootstrap, topics.input, stream[third : 2 * third])
            wait_for(
                lambda: _sources(broker, topics, 2 * third, read) >= 2 * third,
                60,
                "two thirds predicted",
            )
        handed_back = len(read(broker.bootstrap, topics.output))
        wait_for(lambda: len(one.processor.tasks) == 6, 60, "the first daemon owns all again")
        produce(broker.bootstrap, topics.input, stream[2 * third :])
        wait_for(
            lambda: _sources(broker, topics, len(stream), read) >= len(stream),
            60,
            "every record predicted",
        )
        restored = _restored(int(env["FORECASTD_METRICS__PORT"]))
    assert moved
    assert restored >= len(moved)  # handed back with their checkpoints

    outputs = read(broker.bootstrap, topics.output)
    inputs = _inputs(broker, topics, len(stream))
    reference = {p["source"]: p for p in _primary(_offline(first, inputs))}
    predicted = Counter(p["source"] for p in outputs)
    assert set(predicted) == set(reference)  # none left without one
    if exactly_once:
        assert max(predicted.values()) == 1, predicted.most_common(3)
    for p in outputs:
        expected = reference[p["source"]]["y_hat"]
        assert p["y_hat"] == pytest.approx(expected, rel=0, abs=0.01), p["source"]
    assert _final_versions(outputs) == _final_versions(list(reference.values()))
    back = [p for p in outputs[handed_back:] if (topics.input, _partition(p)) in moved]
    _assert_warm(
        [p for p in outputs[:handed_back] if (topics.input, _partition(p)) in moved],
        back,
        [r for r in inputs if (r.topic, r.partition) in moved],
        first,
    )


def _sources(
    broker: EmbeddedBroker,
    topics: Topics,
    expected: int,
    read: Callable[[str, str, int], list[dict[str, Any]]] = _read_outputs,
) -> int:
    return len({p["source"] for p in read(broker.bootstrap, topics.output, expected)})


def _restored(port: int) -> float:
    return _metric(port, 'forecastd_restores_total{outcome="restored"}')


def _metric(port: int, sample: str) -> float:
    """The value of ``sample`` (name and labels, as scraped) on the daemon's /metrics."""
    _, text = scrape(port)
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {sample} on /metrics")


def test_a_checkpoint_of_an_aborted_transaction_is_never_restored(
    broker: EmbeddedBroker, client: str
) -> None:
    """With exactly-once, a checkpoint that sits in the state topic but whose
    transaction was aborted (what a process killed between writing its checkpoint and
    committing leaves, once its successor fenced it) is never restored, even where the
    broker hands aborted records to read_committed readers (Tansu 0.6 does): here it
    is the same task's state claiming 100 more records, and restoring it would skip
    them."""
    topics = fresh_topics(broker, partitions=1)
    stream = sine_waves(events_per_key=200)  # 3 keys, 600 records
    env = settings_env(
        broker,
        topics,
        client,
        FORECASTD_KAFKA__EXACTLY_ONCE="true",
        FORECASTD_STATE__INTERVAL_S="0.5",
    )
    settings = make_settings(CONFIG, env)
    tp, half = (topics.input, 0), len(stream) // 2
    produce(broker.bootstrap, topics.input, stream[:half])
    with running_daemon(settings):
        wait_for(
            lambda: committed_offsets(broker.bootstrap, topics.group).get(0) == half,
            60,
            "the first half committed",
        )
    reader = StateTopic(settings)
    try:
        stored = reader.newest(tp)
    finally:
        reader.close()
    assert stored is not None
    header, state = decode(stored.blob)
    assert header.offset == half

    ahead = half + 100
    aborted = encode(
        state,
        topic=tp[0],
        partition=tp[1],
        offset=ahead,
        keys=header.keys,
        pending=header.pending,
        features=tuple(header.features),
        settings_fingerprint=header.fingerprint,
    )
    sink = KafkaTransactionalSink(settings.kafka, f"{topics.group}-aborted")
    writer = StateTopic(settings, sink)
    try:
        writer.write(tp, aborted, 0, ahead)
        sink.flush()  # in the log, in a transaction still open ...
    finally:
        sink.close()  # ... which this aborts
        writer.close()
    in_log = consume_all(broker.bootstrap, settings.state_topic, 10**9, 3.0)
    assert any((OFFSET_HEADER, str(ahead).encode()) in r.headers for r in in_log)
    assert committed_offsets(broker.bootstrap, topics.group) == {0: half}

    produce(broker.bootstrap, topics.input, stream[half:])
    port = int(env["FORECASTD_METRICS__PORT"])
    with running_daemon(settings):
        wait_for(
            lambda: len(_committed_outputs(broker.bootstrap, topics.output)) >= len(stream),
            60,
            "every record predicted",
        )
        restored = _restored(port)
    outputs = _committed_outputs(broker.bootstrap, topics.output)
    sources = Counter(p["source"] for p in outputs)
    assert set(sources) == {f"{topics.input}:0:{offset}" for offset in range(len(stream))}
    assert max(sources.values()) == 1
    assert restored == 1  # the committed checkpoint: warm from the first record on
    assert min(p["model_version"] for p in outputs if _offset(p) >= half) > 0


def test_a_restart_on_the_same_volume_restores_from_the_local_directory(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """``state.local_dir``: a restarted daemon restores from its own files (the metric
    says where each checkpoint was read), warm; a damaged file is reported and its
    partition restored from the state topic instead."""
    topics = fresh_topics(broker)
    stream = sine_waves(events_per_key=200, copies=3)  # 9 keys, 1800 records
    env = settings_env(
        broker, topics, FORECASTD_STATE__INTERVAL_S="0.5", FORECASTD_STATE__LOCAL_DIR=str(tmp_path)
    )
    settings = make_settings(CONFIG, env)
    half = len(stream) // 2
    produce(broker.bootstrap, topics.input, stream[:half])
    with running_daemon(settings):
        wait_for(
            lambda: sum(committed_offsets(broker.bootstrap, topics.group).values()) == half,
            60,
            "the first half committed",
        )
    committed = committed_offsets(broker.bootstrap, topics.group)
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == [f"{topics.input}-{p}.ckpt" for p in sorted(committed)]
    (tmp_path / files[-1]).write_bytes(b"FDCP damaged")

    produce(broker.bootstrap, topics.input, stream[half:])
    port = int(env["FORECASTD_METRICS__PORT"])
    with running_daemon(settings):
        wait_for(
            lambda: _sources(broker, topics, len(stream)) >= len(stream),
            60,
            "every record predicted",
        )
        read = {
            where: _metric(port, f'forecastd_restore_source_total{{source="{where}"}}')
            for where in ("local", "changelog")
        }
        errors = _metric(port, 'forecastd_local_state_errors_total{op="read"}')
    assert read == {"local": len(committed) - 1, "changelog": 1}
    assert errors == 1
    outputs = _read_outputs(broker.bootstrap, topics.output)
    for partition, offset in committed.items():
        first = next(p for p in outputs if _partition(p) == partition and _offset(p) == offset)
        assert first["model_version"] > 0  # warm: it continues the first run's count
