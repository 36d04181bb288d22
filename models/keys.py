"""Stable hash buckets of series keys, for models that keep state per group of keys."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = ["key_bucket", "key_hash"]


@lru_cache(maxsize=1 << 16)
def key_hash(key: str) -> int:
    """CRC-32 of the UTF-8 key: a stable hash, taken modulo a bucket count by callers."""
    return zlib.crc32(key.encode("utf-8"))


def key_bucket(keys: Sequence[str], buckets: int) -> npt.NDArray[np.int64]:
    """Stable bucket of each key: ``crc32(utf-8 key) % buckets``.

    Python's ``hash`` is salted per process, so it would give each replica (and each
    restart) a different bucket for the same key.

    >>> key_bucket(["AAPL", "MSFT", "AAPL"], 1024).tolist()
    [860, 635, 860]
    """
    crc = np.fromiter((key_hash(key) for key in keys), dtype=np.int64, count=len(keys))
    out: npt.NDArray[np.int64] = crc % buckets
    return out
