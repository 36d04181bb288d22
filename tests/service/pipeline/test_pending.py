"""Pending predictions: packing the queues for a checkpoint and back."""

from __future__ import annotations

import pickle
from collections import deque

import numpy as np

from service.pipeline.pending import Ref, Rows, pack, unpack


def _rows(keys: list[str]) -> Rows:
    n = len(keys)
    return Rows(keys=keys, slots=np.arange(n, dtype=np.intp), offset=np.arange(n, dtype=float))


def test_packed_queues_unpack_in_order_sharing_each_polls_rows() -> None:
    first, second = _rows(["a", "b", "a"]), _rows(["b", "c"])
    pending: dict[str, deque[Ref]] = {
        "a": deque([(first, 0), (first, 2)]),
        "b": deque([(first, 1), (second, 0)]),
        "quiet": deque(),
        "c": deque([(second, 1)]),
    }
    blob = pickle.dumps(pack(pending), protocol=5)
    copy = unpack(pickle.loads(blob))  # noqa: S301 - our own bytes
    assert list(copy) == list(pending)
    for key, queue in pending.items():
        assert [(rows.keys, row) for rows, row in copy[key]] == [
            (rows.keys, row) for rows, row in queue
        ]
    # one Rows per poll, as in the live structure: a poll's arrays are stored once
    assert copy["a"][0][0] is copy["b"][0][0]
    assert copy["b"][1][0] is copy["c"][0][0]
    assert copy["a"][0][0] is not copy["c"][0][0]


def test_nothing_pending_packs_to_nothing() -> None:
    assert unpack(pack({})) == {}
    assert unpack(pack({"a": deque()})) == {"a": deque()}
