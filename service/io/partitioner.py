"""kafka-python's default key partitioning, without hashing the same key twice.

Kafka assigns a keyed record to ``murmur2(key) & 0x7fffffff % partitions`` (the Java
client's rule, which kafka-python and, configured so, librdkafka follow); consumers of
the output topic rely on it to find a key's predictions in one partition. kafka-python
computes murmur2 in pure Python on every ``send``: a few microseconds per prediction,
for keys that repeat millions of times. :class:`CachedHashPartitioner` keeps the rule
and caches the hash per key (bounded, least recently used).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.default import murmur2

_CACHED_KEYS = 1 << 16


@lru_cache(maxsize=_CACHED_KEYS)
def positive_murmur2(key: bytes) -> int:
    """Java's ``Utils.toPositive(Utils.murmur2(key))``.

    >>> positive_murmur2(b"AAPL") % 3, positive_murmur2(b"AAPL") == murmur2(b"AAPL") & 0x7FFFFFFF
    (0, True)
    """
    return int(murmur2(key)) & 0x7FFFFFFF


class CachedHashPartitioner(DefaultPartitioner):  # type: ignore[misc]
    """:class:`kafka.partitioner.DefaultPartitioner` with the key hash cached."""

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        partitions = cluster.partitions_for_topic(topic) if serialized_key is not None else None
        if not partitions:  # no key, or unknown topic: the default's behaviour and errors
            chosen: int = super().partition(
                topic, key, serialized_key, value, serialized_value, cluster
            )
            return chosen
        ordered: list[int] = sorted(partitions)
        return ordered[positive_murmur2(serialized_key) % len(ordered)]
