"""``forecastd check -c CONFIG``: validate a config and show it resolved; with
``--record JSON`` (or ``--records FILE`` of them, a line each), what the daemon
reads from them under it.

The resolved config is every setting with its default filled in and the ``FORECASTD_*``
environment overrides applied, exactly what ``forecastd run`` would start with
(:func:`service.config.load_settings` does the work for both). Values that are
credentials (everything under ``kafka.security``, and any key whose name says
password, secret, token...: :func:`service.config.is_secret_key`) print as ``***``,
so the output can be pasted into a ticket. Keys set by the environment are listed
by name, never with their value.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from service.config import (
    ENV_PREFIX,
    MASK,
    SchemaSettings,
    Settings,
    is_secret_key,
    load_settings,
)
from service.io.decode import Decoder, features_of, iso_text, parse_json
from service.pipeline.processor import discover_features
from service.records import Invalid, RawRecord


def resolved(settings: Settings) -> dict[str, Any]:
    """The settings as plain data (YAML/JSON types), secrets masked."""
    data: dict[str, Any] = settings.model_dump(mode="json", by_alias=True)
    masked: dict[str, Any] = _mask(data, ())
    return masked


def _mask(node: Any, path: tuple[str, ...]) -> Any:
    if isinstance(node, dict):
        return {k: _mask(v, (*path, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask(v, path) for v in node]
    inside_security = path[:2] == ("kafka", "security") and len(path) > 2
    if node is not None and (inside_security or (path and is_secret_key(path[-1]))):
        return MASK
    return node


def overridden(env: Mapping[str, str]) -> list[str]:
    """The dotted key paths the environment sets (names only: values may be secrets)."""
    names = []
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name != ENV_PREFIX:
            names.append(".".join(p.lower() for p in name[len(ENV_PREFIX) :].split("__")))
    return names


def render(path: str | Path | None, env: Mapping[str, str] | None = None) -> str:
    """The text ``forecastd check`` prints; raises ConfigError on an invalid config."""
    env = os.environ if env is None else env
    settings = load_settings(path, env=env)
    lines = [f"# {path or '(no file: built-in defaults)'}: valid"]
    keys = overridden(env)
    if keys:
        lines.append("# set by the environment: " + ", ".join(keys))
    text = yaml.safe_dump(resolved(settings), sort_keys=False, default_flow_style=False)
    return "\n".join(lines) + "\n" + text


def read_record(settings: Settings, value: str, key: str | None = None) -> tuple[str, bool]:
    """What the daemon reads from one input record under ``settings`` (``forecastd
    check --record``): its key, time, target and features, or the reason it would be
    dead-lettered; and whether it is read. With ``schema.features: auto`` the
    features are discovered from this record alone, as from a first poll of it. A
    record without a time takes now as its broker timestamp, as a produce would."""
    schema = settings.schema_
    raw = _raw(settings, 0, value, key)
    decoder, names = _decoder(settings, [raw])
    decoded = decoder.decode(raw)
    if isinstance(decoded, Invalid):
        return f"# record: dead-lettered as {decoded.reason}: {decoded.detail}\n", False
    stamp = iso_text(decoded.ts_ms)
    features = ", ".join(
        f"{name} {number!r}" if math.isfinite(number) else f"{name} imputed"
        for name, number in zip(names, decoded.x.tolist(), strict=True)
    )
    ignored = sorted(_ignored(raw, schema, names))
    lines = [
        "# record: read",
        f"key       {decoded.key!r}"
        + (" (the record key)" if key and schema.key_source == "record" else ""),
        f"time      {stamp} ({decoded.ts_ms} ms)",
        f"target    {decoded.y!r}",
        f"features  {features or '(none)'}"
        + (" (discovered: auto)" if schema.features == "auto" and names else ""),
        f"ignored   {', '.join(ignored) or '(none)'}",
    ]
    return "\n".join(lines) + "\n", True


def read_records(settings: Settings, values: Iterable[str]) -> tuple[str, bool]:
    """:func:`read_record` over many records, one JSON value a line (``forecastd check
    --records FILE``, ``-`` for standard input: what ``kafka-console-consumer`` prints):
    how many are read and how many dead-lettered, by reason with the first example of
    each; the keys and times read, and how many records are older than an earlier one
    of their key (``out_of_order`` for the daemon's tasks, which judge that); the
    features (under ``auto``, discovered from the first ``kafka.max_poll_records``
    records, as the daemon's first poll would) and the names ignored. Whether every
    record is read."""
    schema = settings.schema_
    raws = [
        _raw(settings, number, line.rstrip("\r\n"))
        for number, line in enumerate(values, start=1)
        if line.strip()
    ]
    first = raws[: settings.kafka.max_poll_records]
    decoder, names = _decoder(settings, first)
    reasons: Counter[str] = Counter()
    examples: dict[str, str] = {}
    ignored: Counter[str] = Counter()
    newest: dict[str, int] = {}  # each key's, for what the tasks would find late
    late = 0
    times: list[int] = []
    for raw in raws:
        decoded = decoder.decode(raw)
        if isinstance(decoded, Invalid):
            reasons[decoded.reason] += 1
            examples.setdefault(decoded.reason, f"{decoded.detail} (line {raw.offset})")
            continue
        before = newest.get(decoded.key)
        if before is not None and decoded.ts_ms < before:
            late += 1
        else:
            newest[decoded.key] = decoded.ts_ms
        times.append(decoded.ts_ms)
        ignored.update(_ignored(raw, schema, names))
    read = len(raws) - sum(reasons.values())
    lines = [f"# records: {read} read, {sum(reasons.values())} dead-lettered"]
    if times:
        lines.append(f"keys       {len(newest)}")
        lines.append(f"time       {iso_text(min(times))} to {iso_text(max(times))}")
    if late and settings.forecast.out_of_order == "dlq":
        lines.append(f"late       {late}, older than an earlier record of their key: out_of_order")
    auto = f" (discovered: auto, from the first {len(first)})" if schema.features == "auto" else ""
    lines.append(f"features   {', '.join(names) or '(none)'}{auto}")
    named = ", ".join(f"{name} ({count})" for name, count in sorted(ignored.items()))
    lines.append(f"ignored    {named or '(none)'}")
    if reasons:
        lines.append("dead-lettered")
        width = max(map(len, reasons))
        for reason, count in reasons.most_common():
            lines.append(f"  {reason:<{width}}  {count}  e.g. {examples[reason]}")
    refused = sum(reasons.values()) + (late if settings.forecast.out_of_order == "dlq" else 0)
    return "\n".join(lines) + "\n", not refused and bool(raws)


def _ignored(raw: RawRecord, schema: SchemaSettings, names: tuple[str, ...]) -> set[str]:
    """The feature names of a record the decoder read that are not among ``names``
    (the decoder counts them; this names them)."""
    found = features_of(parse_json(raw.value or b""), schema)
    return set(found) - set(names) if isinstance(found, dict) else set()


def _raw(settings: Settings, offset: int, value: str, key: str | None = None) -> RawRecord:
    """A record as the consumer would hand it over, stamped now by its broker. Text
    from the command line or a file goes back to its bytes as they were (argv and
    ``errors="surrogateescape"`` keep bytes that are not UTF-8 as surrogates), so a
    record that is not UTF-8 is judged as the daemon would judge it."""
    now_ms = time.time_ns() // 1_000_000

    def raw_bytes(text: str) -> bytes:
        return text.encode("utf-8", "surrogateescape")

    topic = settings.kafka.input_topic
    return RawRecord(
        topic, 0, offset, raw_bytes(key) if key else None, raw_bytes(value), (), now_ms
    )


def _decoder(settings: Settings, first: list[RawRecord]) -> tuple[Decoder, tuple[str, ...]]:
    """The decoder the daemon would build after a first poll of ``first``, and its
    features (discovered from them under ``auto``)."""
    schema = settings.schema_
    names = discover_features(first, schema) if schema.features == "auto" else schema.features
    decoder = Decoder(
        schema.model_copy(update={"features": names}), settings.forecast.max_future_skew_s
    )
    return decoder, names
