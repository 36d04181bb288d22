"""The checkpoint format: one partition task's learned state as versioned bytes.

Layout (all integers big-endian)::

    b"FDCP"  u16 format version  u32 header length  header (JSON)  body

The header is JSON so that an operator's tool (``forecastd state ls``) and any future
forecastd can read it without touching the body: format version, input topic and
partition, the covered input offset (the next offset to read: every record below it
was learned, none at or above it), creation time, key and pending-prediction counts,
the exogenous feature names, a fingerprint of the settings that shape state, and the
body's codec and length.

The body is the task's state (:meth:`service.pipeline.tasks.PartitionTask.state`: windows,
seasons, scaler, pending predictions, strikes, and per model its model, scores,
drift detectors, ensemble weights and intervals) pickled (protocol 5) and
zlib-compressed (level 1: the arrays are mostly doubles, higher levels bought little
and cost several times the time). Pickle because River models serialise no other way,
torch tensors and NumPy arrays pickle without copies through Python objects, and one
call covers every class a task holds, so a new piece of state cannot be forgotten.

**Trust boundary.** Unpickling runs code: whoever can write the state topic (or the
state directory) can run code as forecastd. That is the same trust as the input topic
(whoever writes it can already poison every model), but stronger: give produce rights
on the state topic to forecastd's principal only (a Kafka ACL, ``WRITE`` on
``<group_id>.state`` for that user alone) and read rights to forecastd and operators.

**Versions.** :data:`FORMAT_VERSION` changes whenever the body's meaning changes (a
class's attributes, the state dict's layout). A checkpoint of another version fails
with :class:`SnapshotFormatError`, naming both versions and what to do, never a silent
cold start: throwing away a fleet's learned state must be an operator's decision.
A checkpoint of the current version whose settings fingerprint differs (models,
forecast or scoring settings changed) cannot be restored into the new models; the
task starts cold from the checkpoint's offset, with a warning (see
:mod:`service.runtime.state`): changing the models is a decision to retrain.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import time
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from service.config import Settings
from service.errors import ForecastdError

MAGIC = b"FDCP"
FORMAT_VERSION = 1
"""The version this forecastd writes and the only one it reads."""
_PREFIX = struct.Struct(">4sHI")
_CODEC = "pickle5+zlib"


class SnapshotFormatError(ForecastdError):
    """A checkpoint this forecastd cannot read (foreign bytes, another version)."""


@dataclass(frozen=True, slots=True)
class Header:
    """What a checkpoint says about itself, readable without its body."""

    version: int
    topic: str
    partition: int
    offset: int
    created_ms: int
    keys: int
    pending: int
    features: list[str]
    fingerprint: str
    codec: str
    body_bytes: int


def fingerprint(settings: Settings) -> str:
    """A digest of the settings that shape a task's state: the same digest means the
    checkpoint's models, windows and scorers fit the ones these settings build."""
    shaping = {
        "forecast": settings.forecast.model_dump(mode="json"),
        "models": [m.model_dump(mode="json") for m in settings.models],
        "scoring": settings.scoring.model_dump(mode="json"),
        "drift": settings.drift.model_dump(mode="json"),
        "seed": settings.processing.seed,
    }
    return hashlib.sha256(orjson.dumps(shaping, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def encode(
    state: dict[str, Any],
    *,
    topic: str,
    partition: int,
    offset: int,
    keys: int,
    pending: int,
    features: tuple[str, ...],
    settings_fingerprint: str,
) -> bytes:
    """One checkpoint's bytes."""
    body = zlib.compress(pickle.dumps(state, protocol=5), 1)
    header = Header(
        FORMAT_VERSION,
        topic,
        partition,
        offset,
        time.time_ns() // 1_000_000,
        keys,
        pending,
        list(features),
        settings_fingerprint,
        _CODEC,
        len(body),
    )
    meta = orjson.dumps(asdict(header))
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(meta)) + meta + body


def read_header(blob: bytes) -> Header:
    """The header of a checkpoint, checked for magic and version.

    Raises:
        SnapshotFormatError: not a checkpoint, or one of another format version.
    """
    if len(blob) < _PREFIX.size:
        raise SnapshotFormatError(f"not a forecastd checkpoint ({len(blob)} bytes)")
    magic, version, length = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise SnapshotFormatError("not a forecastd checkpoint (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise SnapshotFormatError(
            f"checkpoint format version {version}, but this forecastd reads version "
            f"{FORMAT_VERSION} only: run the forecastd that wrote it (or a newer one), or "
            "start cold on purpose by deleting the state topic (state.topic) or setting "
            "state.enabled: false"
        )
    try:
        fields = orjson.loads(blob[_PREFIX.size : _PREFIX.size + length])
        return Header(**fields)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise SnapshotFormatError(f"checkpoint header unreadable: {type(exc).__name__}") from exc


def decode(blob: bytes) -> tuple[Header, dict[str, Any]]:
    """A checkpoint's header and state (see the module docstring on trust).

    Raises:
        SnapshotFormatError: as :func:`read_header`, or a body that does not unpack.
    """
    header = read_header(blob)
    _, _, length = _PREFIX.unpack_from(blob)
    body = blob[_PREFIX.size + length :]
    if header.codec != _CODEC or len(body) != header.body_bytes:
        raise SnapshotFormatError(
            f"checkpoint body of partition {header.partition} is damaged or of an unknown "
            f"codec ({header.codec}, {len(body)} of {header.body_bytes} bytes)"
        )
    try:
        state = pickle.loads(zlib.decompress(body))  # noqa: S301 - see "Trust boundary"
    except Exception as exc:
        raise SnapshotFormatError(
            f"checkpoint body of partition {header.partition} does not unpack: {type(exc).__name__}"
        ) from exc
    if not isinstance(state, dict):
        raise SnapshotFormatError("checkpoint body is not a task state")
    return header, state
