"""``processing.workers: 2``: one pod, two members of the group, one /metrics.

Runs ``forecastd run`` as a real process (the supervisor and its two spawned workers)
against the real broker, on a 4-partition topic, and checks by counting, never by
time: every input record is predicted exactly once; the pod's ``/metrics`` totals are
the sums of what each worker's own endpoint reports; a worker killed with SIGKILL is
restarted, and the pod's counters do not go backwards; SIGTERM drains both workers
(exit 0, every offset committed). kafka-python only: the supervisor does not touch
the client, and each worker is the single-process daemon that the other integration
tests run on both clients.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.tools.broker import EmbeddedBroker, free_port
from tests.deploy.metric_names import POD_ONLY, check_names, exported_names, metric_names_used
from tests.deploy.support import DASHBOARD, RULES
from tests.integration.kafka_helpers import (
    committed_offsets,
    consume_all,
    fresh_topics,
    produce,
    reaped,
    scrape,
    settings_env,
    start_daemon,
    wait_for,
)
from tests.integration.streams import START_MS, Record

pytestmark = pytest.mark.integration

KEYS, STEPS = 40, 25
STARTED = re.compile(r"worker (\d+) started \(pid (\d+), metrics on 127\.0\.0\.1:(\d+)\)")
TOTALS = (
    ("forecastd_messages_consumed_total", ()),
    ("forecastd_batches_total", ()),
    ("forecastd_predictions_total", (("model", "linear"),)),
    ("forecastd_predictions_produced_total", (("model", "linear"),)),
    ("forecastd_scored_total", (("model", "ewma"),)),
    ("forecastd_processing_latency_seconds_count", ()),
    ("forecastd_processing_latency_seconds_bucket", (("le", "+Inf"),)),
)


def _stream(first_step: int = 0) -> list[Record]:
    return [
        (
            f"sensor-{k}".encode(),
            orjson.dumps({"ts": START_MS + step * 1000, "y": float(k + step % 5)}),
            [],
        )
        for step in range(first_step, first_step + STEPS)
        for k in range(KEYS)
    ]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(port: int, name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
    status, text = scrape(port)
    assert status == 200
    return _samples(text).get((name, labels), 0.0)


def _status(port: int, path: str) -> int:
    """The HTTP status of ``path`` on ``port``; 0 while nothing listens yet."""
    try:
        return scrape(port, path)[0]
    except OSError:
        return 0


class _Output:
    """The pod's merged stdout/stderr, read as it comes (worker ports are logged)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.decode(errors="replace"))

    def workers(self) -> dict[int, tuple[int, int]]:
        """Worker index -> (pid, port), the latest start of each."""
        found = {}
        for line in list(self.lines):
            if match := STARTED.search(line):
                found[int(match[1])] = (int(match[2]), int(match[3]))
        return found

    def tail(self) -> str:
        return "".join(self.lines[-60:])

    def text(self) -> str:
        return "".join(self.lines)

    def done(self) -> None:
        """Wait until the process's output is read to its end (after it exited)."""
        self._thread.join(timeout=10)


def test_two_workers_share_the_partitions_and_the_pod_reports_their_sums(
    broker: EmbeddedBroker,
) -> None:
    topics = fresh_topics(broker, partitions=4)
    env = settings_env(broker, topics, FORECASTD_PROCESSING__WORKERS="2")
    port = int(env["FORECASTD_METRICS__PORT"])
    with reaped(start_daemon(env)) as pod:
        output = _Output(pod)
        # Ready only once both workers joined: the group has settled on two members.
        wait_for(lambda: _status(port, "/readyz") == 200, 120, "the pod to be ready")
        assert scrape(port, "/healthz")[0] == 200
        first = _stream()
        produce(broker.bootstrap, topics.input, first)
        wait_for(
            lambda: (
                _value(port, "forecastd_predictions_produced_total", (("model", "linear"),))
                >= len(first)
            ),
            90,
            "every record predicted",
        )
        workers = output.workers()
        assert sorted(workers) == [0, 1], output.tail()
        own = {i: _samples(scrape(p)[1]) for i, (_, p) in workers.items()}
        pod_samples = _samples(scrape(port)[1])
        for name, labels in TOTALS:
            per_worker = [own[i].get((name, labels), 0.0) for i in own]
            assert pod_samples[(name, labels)] == sum(per_worker), (name, per_worker)
        consumed = [own[i][("forecastd_messages_consumed_total", ())] for i in own]
        assert sum(consumed) == len(first)
        assert all(c > 0 for c in consumed), f"one worker did all the work: {consumed}"
        assigned = [own[i][("forecastd_assigned_partitions", ())] for i in own]
        assert pod_samples[("forecastd_assigned_partitions", ())] == sum(assigned) == 4
        assert pod_samples[("forecastd_workers", ())] == 2
        # every metric the alert rules and the dashboard read is on the pod's page (the
        # lag gauge has samples once the workers' lag threads measured)
        used = metric_names_used(RULES, DASHBOARD)
        assert used >= POD_ONLY

        def missing() -> list[str]:
            return check_names(used, exported_names(scrape(port)[1]))

        with contextlib.suppress(AssertionError):  # the assert below names what is missing
            wait_for(lambda: not missing(), 30, "every name on the pod's page")
        assert missing() == []
        # a non-additive gauge is exported per worker
        assert {("model", "linear"), ("window", "total"), ("worker", "0")} <= {
            label for key in pod_samples if key[0] == "forecastd_model_mae" for label in key[1]
        }

        predicted = [
            orjson.loads(r.value)["source"]
            for r in consume_all(broker.bootstrap, topics.output, len(first))
        ]
        inputs = consume_all(broker.bootstrap, topics.input, len(first))
        assert len({r.partition for r in inputs}) == 4
        assert sorted(predicted) == sorted(f"{r.topic}:{r.partition}:{r.offset}" for r in inputs)

        # A worker that dies is restarted; the pod's counters keep what it had done.
        before = pod_samples[("forecastd_messages_consumed_total", ())]
        os.kill(workers[1][0], signal.SIGKILL)
        wait_for(lambda: _value(port, "forecastd_worker_restarts_total") == 1, 30, "a restart")
        wait_for(lambda: _status(port, "/readyz") == 200, 120, "the pod ready again")
        assert _value(port, "forecastd_messages_consumed_total") >= before
        second = _stream(first_step=STEPS)
        produce(broker.bootstrap, topics.input, second)
        total = len(first) + len(second)
        wait_for(
            lambda: sum(committed_offsets(broker.bootstrap, topics.group).values()) >= total,
            90,
            "every offset committed",
        )
        pod.send_signal(signal.SIGTERM)
        assert pod.wait(timeout=90) == 0, output.tail()
    assert sum(committed_offsets(broker.bootstrap, topics.group).values()) == total
    # at-least-once across the kill: every record predicted, some perhaps twice
    every = {
        orjson.loads(r.value)["source"] for r in consume_all(broker.bootstrap, topics.output, total)
    }
    inputs = consume_all(broker.bootstrap, topics.input, total)
    assert every == {f"{r.topic}:{r.partition}:{r.offset}" for r in inputs}


def test_a_pod_whose_workers_cannot_reach_the_broker_stops_with_status_1(
    broker: EmbeddedBroker,
) -> None:
    """Before, such a worker died after kafka.connect_timeout_s each time, "stayed up"
    long enough to be forgiven, and was restarted forever: a pod at no capacity that
    nothing outside it noticed."""
    topics = fresh_topics(broker)
    nowhere = f"127.0.0.1:{free_port()}"
    env = settings_env(
        broker,
        topics,
        FORECASTD_PROCESSING__WORKERS="2",
        FORECASTD_KAFKA__BOOTSTRAP_SERVERS=nowhere,
        FORECASTD_KAFKA__CONNECT_TIMEOUT_S="2",
    )
    with reaped(start_daemon(env)) as pod:
        output = _Output(pod)
        status = pod.wait(timeout=120)
    output.done()
    assert status == 1, output.tail()
    assert f"is a broker listening at kafka.bootstrap_servers {nowhere}?" in output.text()
    assert "stopping the pod with status 1" in output.text()
    starts = [int(m[1]) for m in STARTED.finditer(output.text())]
    assert sorted(starts) == [0, 1], f"a worker was restarted: {output.tail()}"


def test_a_worker_that_keeps_dying_stops_the_pod_and_the_other_drains(
    broker: EmbeddedBroker,
) -> None:
    topics = fresh_topics(broker, partitions=4)
    env = settings_env(
        broker,
        topics,
        FORECASTD_PROCESSING__WORKERS="2",
        FORECASTD_PROCESSING__WORKER_FAILURES="3",
        FORECASTD_PROCESSING__WORKER_FAILURE_WINDOW_S="600",
    )
    port = int(env["FORECASTD_METRICS__PORT"])
    with reaped(start_daemon(env)) as pod:
        output = _Output(pod)
        wait_for(lambda: _status(port, "/readyz") == 200, 120, "the pod to be ready")
        records = _stream()
        produce(broker.bootstrap, topics.input, records)
        wait_for(
            lambda: sum(committed_offsets(broker.bootstrap, topics.group).values()) >= len(records),
            90,
            "every offset committed",
        )
        for death in range(1, 4):
            pid = output.workers()[1][0]
            os.kill(pid, signal.SIGKILL)
            if death < 3:
                wait_for(lambda pid=pid: output.workers()[1][0] != pid, 30, "a restart")
                # just started, far from ready: the pod must say so
                assert _status(port, "/readyz") == 503, output.tail()
        status = pod.wait(timeout=120)
    output.done()
    assert status == 1, output.tail()
    text = output.text()
    assert "worker 1 was killed by SIGKILL: its 3rd death within 600s" in text, output.tail()
    assert "forecastd-worker-0 stopped: exited with status 0" in text, output.tail()
    assert len(STARTED.findall(text)) == 4  # two workers, worker 1 restarted twice
    assert sum(committed_offsets(broker.bootstrap, topics.group).values()) == len(records)
