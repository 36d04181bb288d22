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
drift detectors, ensemble weights and intervals) pickled (protocol 5) with the
arrays' memory *out of band* (PEP 574: the pickle holds the object graph, each
array's bytes follow it as a separate segment, read straight from the array, never
copied into the pickle stream), the whole LZ4-compressed as one frame (codec
``pickle5-oob+lz4``; layout in :func:`_pack`). A checkpoint is taken between polls,
so its time is latency: copying a hundred megabytes of arrays through the pickle
stream, and zlib (which spent twenty times LZ4's time on doubles, which no general
codec shrinks much, for a few percent of size), were most of it. A restore builds
each array over its own copy of its segment.
Bodies of the earlier codec, ``pickle5+zlib``, are still read. Pickle because River
models serialise no other way, torch tensors and NumPy arrays pickle without copies
through Python objects, and one call covers every class a task holds, so a new piece
of state cannot be forgotten.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lz4.frame
import orjson

from models.registry import UnknownModelKind, get_spec
from service.config import ModelSettings, Settings
from service.errors import ForecastdError

MAGIC = b"FDCP"
FORMAT_VERSION = 1
"""The version this forecastd writes and the only one it reads."""
_PREFIX = struct.Struct(">4sHI")
_CODEC = "pickle5-oob+lz4"
_OLD_CODEC = "pickle5+zlib"
_COUNT = struct.Struct(">I")


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
        "models": [_shaping(m) for m in settings.models],
        "scoring": settings.scoring.model_dump(mode="json"),
        "drift": settings.drift.model_dump(mode="json"),
        "seed": settings.processing.seed,
    }
    return hashlib.sha256(orjson.dumps(shaping, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _shaping(model: ModelSettings) -> dict[str, Any]:
    """A model's settings without the params its kind declares state-neutral
    (:attr:`models.registry.ModelParams.state_neutral`)."""
    entry = model.model_dump(mode="json")
    try:
        neutral: frozenset[str] = getattr(get_spec(model.kind).params, "state_neutral", frozenset())
    except UnknownModelKind:  # refused when the models are built, with a better message
        neutral = frozenset()
    entry["params"] = {k: v for k, v in entry["params"].items() if k not in neutral}
    return entry


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
    body = _pack(state)
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
    if header.codec not in (_CODEC, _OLD_CODEC) or len(body) != header.body_bytes:
        raise SnapshotFormatError(
            f"checkpoint body of partition {header.partition} is damaged or of an unknown "
            f"codec ({header.codec}, {len(body)} of {header.body_bytes} bytes)"
        )
    try:
        state = _unpack(body) if header.codec == _CODEC else _unpickle(zlib.decompress(body))
    except Exception as exc:
        raise SnapshotFormatError(
            f"checkpoint body of partition {header.partition} does not unpack: {type(exc).__name__}"
        ) from exc
    if not isinstance(state, dict):
        raise SnapshotFormatError("checkpoint body is not a task state")
    return header, state


def _pack(state: dict[str, Any]) -> bytes:
    """The body: one LZ4 frame of ``u32 n``, ``n`` u64 segment lengths, then the
    segments (the pickle, then each out-of-band buffer)."""
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(state, protocol=5, buffer_callback=buffers.append)
    segments = [memoryview(stream), *(buffer.raw() for buffer in buffers)]
    lengths = struct.pack(f">{len(segments)}Q", *(segment.nbytes for segment in segments))
    compressor = lz4.frame.LZ4FrameCompressor()
    parts = [compressor.begin(), compressor.compress(_COUNT.pack(len(segments)) + lengths)]
    parts += [compressor.compress(segment) for segment in segments]
    parts.append(compressor.flush())
    return b"".join(parts)


def _unpack(body: bytes) -> Any:
    data = memoryview(lz4.frame.decompress(body))
    (count,) = _COUNT.unpack_from(data)
    lengths = struct.unpack_from(f">{count}Q", data, _COUNT.size)
    position = _COUNT.size + 8 * count
    segments = []
    for length in lengths:
        segments.append(data[position : position + length])
        position += length
    if not segments or position != len(data):
        raise ValueError("segment lengths do not add up to the body")
    # each array gets its own (writable) copy: arrays over the one decompressed body
    # would keep all of it alive while any of them lives, windows the store has
    # already copied into its own rows included
    return _unpickle(segments[0], [bytearray(segment) for segment in segments[1:]])


def _unpickle(stream: bytes | memoryview, buffers: Sequence[bytearray] = ()) -> Any:
    return pickle.loads(stream, buffers=buffers)  # noqa: S301 - see "Trust boundary"
