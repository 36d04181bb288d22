"""``forecastd check --broker`` against the real broker: the config's topics, their
partitions, the group's committed offsets; exit 1 where the daemon would not run."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from kafka import KafkaConsumer
from kafka.structs import OffsetAndMetadata, TopicPartition

from service.config import Settings
from service.tools.broker import EmbeddedBroker
from service.workbench.preflight import topic_checks
from tests.integration.kafka_helpers import topic_names

pytestmark = pytest.mark.integration


def _check(broker: EmbeddedBroker, **env: str) -> tuple[int, str]:
    variables = {f"FORECASTD_{name.upper()}": value for name, value in env.items()}
    done = subprocess.run(
        [sys.executable, "-m", "service", "check", "--broker"],
        env={**os.environ, "FORECASTD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap, **variables},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def _line(text: str, setting: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(setting + " "))


def test_a_cluster_that_holds_the_config_s_topics_is_ready(broker: EmbeddedBroker) -> None:
    tag = uuid.uuid4().hex[:8]
    broker.create_topics([f"in-{tag}"], partitions=2)
    broker.create_topics([f"out-{tag}", f"dlq-{tag}"])
    group = f"group-{tag}"
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group)
    try:  # the group has committed partition 1, as a daemon that ran would have
        consumer.commit({TopicPartition(f"in-{tag}", 1): OffsetAndMetadata(5, "", -1)})
    finally:
        consumer.close()
    status, text = _check(
        broker,
        kafka__input_topic=f"in-{tag}",
        kafka__output_topic=f"out-{tag}",
        kafka__dead_letter_topic=f"dlq-{tag}",
        kafka__group_id=group,
    )
    assert status == 0, text
    assert f"in-{tag}  2 partitions  read" in _line(text, "kafka.input_topic")
    assert f"out-{tag}  1 partition  written" in _line(text, "kafka.output_topic")
    assert "missing: made at start-up" in _line(text, "state.topic")
    assert "committed offsets for 1 of 2 input partitions" in _line(text, "kafka.group_id")
    assert text.rstrip().endswith("ready to run")


def test_a_misspelt_input_topic_is_a_problem_and_is_not_created(broker: EmbeddedBroker) -> None:
    """Tansu creates a topic that a metadata request names: the check names none."""
    tag = uuid.uuid4().hex[:8]
    broker.create_topics([f"out-{tag}"])
    status, text = _check(broker, kafka__input_topic=f"in-{tag}", kafka__output_topic=f"out-{tag}")
    assert status == 1, text
    assert "PROBLEM  missing: the daemon waits for it" in _line(text, "kafka.input_topic")
    assert "kafka.group_id" not in text  # no input partitions to have offsets for
    assert f"in-{tag}" not in topic_names(broker.bootstrap)
    assert text.rstrip().endswith("not ready to run: see PROBLEM above")


def test_a_state_topic_smaller_than_the_input_is_a_problem(broker: EmbeddedBroker) -> None:
    tag = uuid.uuid4().hex[:8]
    broker.create_topics([f"in-{tag}"], partitions=3)
    broker.create_topics([f"state-{tag}"], partitions=2)
    status, text = _check(broker, kafka__input_topic=f"in-{tag}", state__topic=f"state-{tag}")
    assert status == 1, text
    assert "PROBLEM  fewer partitions than the input's 3" in _line(text, "state.topic")


def test_topics_the_config_does_not_use_are_not_judged() -> None:
    """State off: no state topic; no explanations topic unless set."""
    settings = Settings.model_validate({"state": {"enabled": False}})
    checks = topic_checks(settings, {"ticks": 1})
    assert [c.setting for c in checks] == [
        "kafka.input_topic",
        "kafka.output_topic",
        "kafka.dead_letter_topic",
    ]
    assert not any(c.problem for c in checks)
