"""``forecastd check --broker``: whether the cluster holds what a config names, before
a deployment finds out.

The daemon waits, not ready, for a missing input topic, warns at start-up of a missing
output topic, and stops at start-up on a state topic with fewer partitions than the
input (:mod:`service.runtime.app`, :mod:`service.runtime.state`): each is cheaper to
see from a workstation or a CI job than from a pod's logs. One metadata request for
every topic (which creates nothing, unlike one that names a missing topic on a broker
with ``auto.create.topics.enable``) and the group's committed offsets, with the
daemon's own client settings (credentials included), so a connection that works here
works for the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kafka.structs import TopicPartition

from service.config import Settings
from service.runtime.lag import lag_client

__all__ = ["TopicCheck", "preflight", "topic_checks"]


@dataclass(frozen=True, slots=True)
class TopicCheck:
    """One topic the config names: its role (the setting), whether and with how many
    partitions it exists, what that means, and whether it stops the daemon."""

    setting: str
    topic: str
    partitions: int | None  # None: the topic does not exist
    note: str
    problem: bool


def topic_checks(settings: Settings, partitions: dict[str, int]) -> list[TopicCheck]:
    """The config's topics judged against ``partitions`` (the cluster's topics and
    their partition counts)."""
    kafka = settings.kafka
    inputs = partitions.get(kafka.input_topic)
    checks = [
        TopicCheck(
            "kafka.input_topic",
            kafka.input_topic,
            inputs,
            "read" if inputs is not None else "missing: the daemon waits for it, not ready",
            inputs is None,
        )
    ]
    for setting, topic in settings.written_topics.items():
        count = partitions.get(topic)
        note = (
            "written"
            if count is not None
            else "missing: created on first write only by a broker that allows it"
            " (auto.create.topics.enable)"
        )
        checks.append(TopicCheck(setting, topic, count, note, False))
    if settings.state.enabled:
        topic = settings.state_topic
        count = partitions.get(topic)
        if count is None:
            note, problem = "missing: made at start-up, compacted, one partition per input", False
        elif inputs is not None and count < inputs:
            note = f"fewer partitions than the input's {inputs}: the daemon stops at start-up"
            problem = True
        else:
            note, problem = "checkpoints", False
        checks.append(TopicCheck("state.topic", topic, count, note, problem))
    return checks


def preflight(settings: Settings) -> tuple[str, bool]:
    """What the broker holds of this config's topics and group, as lines to print, and
    whether the daemon can start on it (False: the input topic is missing, or the state
    topic is too small).

    Raises:
        kafka.errors.KafkaError: no broker answered within ``kafka.connect_timeout_s``.
    """
    kafka = settings.kafka
    client = lag_client(kafka, kafka.connect_timeout_s)
    try:
        partitions = _partitions(client)
        checks = topic_checks(settings, partitions)
        committed = _committed(client, kafka.input_topic, partitions.get(kafka.input_topic))
    finally:
        client.close()
    rows = [("broker", f"{kafka.bootstrap_servers}: {len(partitions)} topics")]
    for check in checks:
        count = "-" if check.partitions is None else _partitions_text(check.partitions)
        mark = "PROBLEM  " if check.problem else ""
        rows.append((check.setting, f"{check.topic}  {count}  {mark}{check.note}"))
    if committed is not None:
        rows.append(
            (
                "kafka.group_id",
                f"{kafka.group_id}: committed offsets for {committed} of"
                f" {partitions[kafka.input_topic]} input partitions"
                + (" (a new group starts at auto_offset_reset)" if committed == 0 else ""),
            )
        )
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {text}" for label, text in rows]
    ok = not any(check.problem for check in checks)
    lines.append("ready to run" if ok else "not ready to run: see PROBLEM above")
    return "\n".join(lines) + "\n", ok


def _partitions_text(count: int) -> str:
    return f"{count} partition" + ("" if count == 1 else "s")


def _partitions(client: Any) -> dict[str, int]:
    """Every topic the client may describe and its partition count, from one metadata
    request for all topics (which names none, so creates none)."""
    names = client.topics()
    out: dict[str, int] = {}
    for name in sorted(names):
        known = client.partitions_for_topic(name)  # from that answer: no request
        out[name] = len(known or ())
    return out


def _committed(client: Any, topic: str, partitions: int | None) -> int | None:
    """How many of the input topic's partitions the group has a committed offset for
    (None: no input topic)."""
    if partitions is None:
        return None
    found = 0
    for partition in range(partitions):
        if client.committed(TopicPartition(topic, partition)) is not None:
            found += 1
    return found
