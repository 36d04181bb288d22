"""The cached partitioner must place every key exactly where kafka-python's default does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner

from service.io.partitioner import CachedHashPartitioner, positive_murmur2


class _Cluster:
    """The three metadata lookups a partitioner makes, for one topic."""

    def __init__(self, topic: str, partitions: int) -> None:
        self._topic, self._partitions = topic, set(range(partitions))

    def topics(self) -> set[str]:
        return {self._topic}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._partitions if topic == self._topic else None

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions if topic == self._topic else set()


@given(key=st.binary(max_size=64), partitions=st.integers(1, 64))
def test_same_partition_as_kafka_python_default(key: bytes, partitions: int) -> None:
    cluster = _Cluster("out", partitions)
    expected = DefaultPartitioner().partition("out", None, key, None, b"v", cluster)
    assert CachedHashPartitioner().partition("out", None, key, None, b"v", cluster) == expected


def test_hash_matches_the_java_client() -> None:
    """``Utils.murmur2("21".getBytes()) == -973932308`` in Kafka's own UtilsTest."""
    assert positive_murmur2(b"21") == -973932308 & 0x7FFFFFFF


def test_unknown_topic_fails_like_the_default() -> None:
    with pytest.raises(ValueError, match="not found"):
        CachedHashPartitioner().partition("nope", None, b"k", None, b"v", _Cluster("out", 3))


def test_keyless_records_go_to_some_partition() -> None:
    chosen = CachedHashPartitioner().partition("out", None, None, None, b"v", _Cluster("out", 3))
    assert chosen in {0, 1, 2}
