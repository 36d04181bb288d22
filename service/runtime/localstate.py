"""A local copy of each partition task's newest checkpoint (``state.local_dir``).

The state topic is the authority (:mod:`service.runtime.state`); this directory is a
cache of it on the pod's own volume, so that a process restarted on the same volume
(a container restart in the same pod, a StatefulSet's pod with its volume) restores
without reading its checkpoints back from the broker.

Writing. A checkpoint is copied to ``<dir>/<input topic>-<partition>.ckpt`` only once
it is durable in the state topic (after the flush, or the transaction's commit,
:mod:`service.runtime.checkpoint`), so the file never holds a checkpoint the topic
lacks: a temporary file in the same directory is written, flushed and fsynced, then
renamed over the old one (atomic on POSIX), and the directory is fsynced so that
the rename survives a crash. A failed write is logged and counted
(``forecastd_local_state_errors_total{op="write"}``); processing goes on, since the
topic holds the checkpoint.

Reading (:meth:`LocalState.load`). The file is used only when it is a readable
checkpoint of this format version, of that topic and partition, and covers at least
the offset of the newest checkpoint in the state topic (the caller compares). Any
problem with the file (unreadable, damaged, another format version, another
partition's) is logged with the reason and counted
(``forecastd_local_state_errors_total{op="read"}``), and the state topic is read
instead: a cache is never a reason to stop, and the topic's own checkpoint is then
judged by the usual rules (another format version there does stop the daemon).

One directory serves one consumer group: two groups reading the same input topic
must not share it. The files are pickles, as the topic's records are: whoever can
write the directory can run code as forecastd (:mod:`service.runtime.snapshot`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.io.sources import TopicPartition
from service.runtime.metrics import Metrics
from service.runtime.snapshot import Header, SnapshotFormatError, decode, read_header

log = logging.getLogger(__name__)

SUFFIX = ".ckpt"


@dataclass(frozen=True, slots=True)
class LocalCheckpoint:
    """A checkpoint read from the state directory, its header already checked."""

    header: Header
    blob: bytes
    path: Path

    def decode(self) -> dict[str, Any]:
        """The task state (raises :class:`SnapshotFormatError` for a damaged body)."""
        return decode(self.blob)[1]


class LocalState:
    """The ``<topic>-<partition>.ckpt`` files of one state directory."""

    def __init__(self, directory: str | Path, metrics: Metrics) -> None:
        self.directory = Path(directory)
        self._metrics = metrics

    def path(self, tp: TopicPartition) -> Path:
        topic, partition = tp
        return self.directory / f"{topic}-{partition}{SUFFIX}"

    def save(self, tp: TopicPartition, blob: bytes) -> bool:
        """Replace ``tp``'s file with ``blob`` atomically; False (logged, counted) if
        that failed."""
        target = self.path(tp)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=self.directory)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(blob)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            _fsync_directory(self.directory)
        except OSError as exc:
            self._metrics.local_state_errors.labels("write").inc()
            log.warning(
                "state.local_dir: cannot write %s (%s); the state topic holds the checkpoint",
                target,
                exc.strerror or type(exc).__name__,
            )
            return False
        return True

    def load(self, tp: TopicPartition) -> LocalCheckpoint | None:
        """``tp``'s local checkpoint with a good header, or None: no file, or one that
        cannot be used (logged with the reason and counted)."""
        target = self.path(tp)
        try:
            blob = target.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._reject(target, exc.strerror or type(exc).__name__)
            return None
        try:
            header = read_header(blob)
        except SnapshotFormatError as exc:
            self._reject(target, str(exc))
            return None
        if (header.topic, header.partition) != tuple(tp):
            self._reject(target, f"it holds partition {header.topic}:{header.partition}'s")
            return None
        return LocalCheckpoint(header, blob, target)

    def reject(self, checkpoint: LocalCheckpoint, reason: str) -> None:
        """Report a local checkpoint found unusable after :meth:`load` (its body)."""
        self._reject(checkpoint.path, reason)

    def _reject(self, target: Path, reason: str) -> None:
        self._metrics.local_state_errors.labels("read").inc()
        log.warning("state.local_dir: not using %s: %s; reading the state topic", target, reason)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be
    opened, as on some network file systems)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
