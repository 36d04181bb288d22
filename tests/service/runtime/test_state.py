"""Choosing the checkpoint to restore among the records of a state partition."""

from __future__ import annotations

from collections.abc import Iterator

from service.runtime.state import _Chunk, _newest_complete


def _chunks(*checkpoints: tuple[bytes, int, list[int]]) -> Iterator[tuple[bytes, _Chunk]]:
    """(id, count, the indexes present) per checkpoint, in the order written."""
    offset = 0
    for ident, count, present in checkpoints:
        for index in present:
            yield ident, _Chunk(offset, index, count, ident + b"/" + str(index).encode())
            offset += 1


def test_the_newest_complete_checkpoint_is_chosen_and_reassembled_in_order() -> None:
    found = _newest_complete(_chunks((b"1.100", 2, [0, 1]), (b"2.200", 3, [0, 2, 1])))
    assert found is not None
    assert (found.seq, found.created_ms, found.chunks) == (2, 200, 3)
    assert found.blob == b"2.200/02.200/12.200/2"


def test_a_half_written_checkpoint_leaves_the_previous_one_in_force() -> None:
    found = _newest_complete(_chunks((b"1.100", 2, [0, 1]), (b"2.200", 3, [0, 1])))
    assert found is not None
    assert found.seq == 1


def test_no_complete_checkpoint_means_none() -> None:
    assert _newest_complete(_chunks((b"5.100", 2, [1]))) is None
    assert _newest_complete(iter(())) is None
