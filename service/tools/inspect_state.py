"""``forecastd state ls | show``: what the state topic holds, for operators.

``ls`` reads the newest complete checkpoint of every state partition (the same
backwards scan a restore does, :mod:`service.runtime.state`; with
``kafka.exactly_once``, as the restore does, the newest that covers the group's
committed offset, so that a checkpoint of an aborted transaction is never shown) and
prints one line each; ``show``
also unpacks one (which runs the unpickler: read the trust note in
:mod:`service.runtime.snapshot`) and summarises its models. Neither writes anything or joins
the consumer group, so both are safe against a running fleet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.config import Settings
from service.runtime.snapshot import Header, SnapshotFormatError, decode, read_header
from service.runtime.state import CoversCommitted, StateTopic, Stored, group_offsets


@dataclass(frozen=True, slots=True)
class Entry:
    """The newest checkpoint of one state partition (``header`` None: unreadable)."""

    partition: int
    stored: Stored
    header: Header | None
    problem: str = ""


def entries(settings: Settings) -> list[Entry]:
    """One entry per state partition that holds a complete checkpoint."""
    store = StateTopic(settings)
    try:
        found = []
        accept = _restorable(settings)
        for partition in store.partitions():
            stored = store.newest((settings.kafka.input_topic, partition), accept(partition))
            if stored is None:
                continue
            try:
                found.append(Entry(partition, stored, read_header(stored.blob)))
            except SnapshotFormatError as exc:
                found.append(Entry(partition, stored, None, str(exc)))
        return found
    finally:
        store.close()


def table(settings: Settings) -> list[str]:
    """``state ls``: one line per checkpoint."""
    now_ms = time.time_ns() // 1_000_000
    lines = [
        f"state topic {settings.state_topic} (input {settings.kafka.input_topic})",
        f"{'partition':>9} {'offset':>10} {'bytes':>11} {'chunks':>6} {'version':>7} "
        f"{'age_s':>9} {'keys':>8} {'pending':>8}",
    ]
    for entry in entries(settings):
        stored, header = entry.stored, entry.header
        age = (now_ms - stored.created_ms) / 1000
        if header is None:
            lines.append(
                f"{entry.partition:>9} {'?':>10} {len(stored.blob):>11} {stored.chunks:>6} "
                f"{'?':>7} {age:>9.1f}  {entry.problem}"
            )
            continue
        lines.append(
            f"{entry.partition:>9} {header.offset:>10} {len(stored.blob):>11} "
            f"{stored.chunks:>6} {header.version:>7} {age:>9.1f} {header.keys:>8} "
            f"{header.pending:>8}"
        )
    if len(lines) == 2:
        lines.append("(no checkpoints)")
    return lines


def summary(settings: Settings, partition: int) -> list[str]:
    """``state show``: one checkpoint's header and, per model, what it learned.

    Raises:
        SnapshotFormatError: the checkpoint cannot be read by this forecastd.
        LookupError: no checkpoint for that partition.
    """
    store = StateTopic(settings)
    try:
        stored = store.newest(
            (settings.kafka.input_topic, partition), _restorable(settings)(partition)
        )
    finally:
        store.close()
    if stored is None:
        raise LookupError(f"no checkpoint of partition {partition} in {settings.state_topic}")
    header, state = decode(stored.blob)
    lines = [f"{name}: {value}" for name, value in _fields(header).items()]
    lines.append(f"chunks: {stored.chunks} (from state offset {stored.first_offset})")
    for model in state["models"]:
        learner = model["model"]
        kind = type(learner).__name__ if learner is not None else "ensemble"
        updates = getattr(learner, "updates", None)
        if learner is None and model["hedge"] is not None:
            updates = model["hedge"].learned
        total = model["scorer"].total
        lines.append(
            f"model {model['name']} ({kind}): learned {updates} rows; scored {total.n}, "
            f"MAE {total.mae:.6g}"
        )
    return lines


def _fields(header: Header) -> dict[str, Any]:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(header.created_ms / 1000))
    return {
        "format version": header.version,
        "input": f"{header.topic}:{header.partition}",
        "covered offset": header.offset,
        "created": created,
        "keys": header.keys,
        "pending predictions": header.pending,
        "features": ", ".join(header.features) or "(none)",
        "settings fingerprint": header.fingerprint,
        "body": f"{header.body_bytes} bytes, {header.codec}",
    }


def _restorable(settings: Settings) -> Callable[[int], Callable[[int], bool] | None]:
    """Per input partition, which checkpoints a restore would take: any (the newest)
    at-least-once; with exactly-once, the one covering the group's committed offset,
    read from the broker without joining the group.

    Raises:
        BrokerError: the group's offsets could not be read.
    """
    if not settings.kafka.exactly_once:
        return lambda partition: None
    committed = group_offsets(settings)
    return lambda partition: CoversCommitted(committed.get(partition))
