"""Row blocks: the same reads and writes as one plain matrix, across blocks and growth."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.pipeline.blocks import RowBlocks

WIDTH = 3


@given(
    st.sampled_from([1, 2, 4, 8]),
    st.integers(1, 5),
    st.lists(st.tuples(st.integers(1, 40), st.integers(0, 2**32 - 1)), max_size=12),
)
def test_blocks_read_back_what_a_plain_matrix_holds(
    block_rows: int, initial: int, steps: list[tuple[int, int]]
) -> None:
    blocks = RowBlocks(WIDTH, initial, block_rows)
    plain = np.full((initial, WIDTH), np.nan)
    blocks.put(np.arange(initial), np.nan)
    for capacity, seed in steps:
        rng = np.random.default_rng(seed)
        if capacity > blocks.capacity:
            blocks.grow(capacity)
            assert blocks.capacity >= capacity
            new = blocks.capacity - len(plain)
            plain = np.vstack([plain, np.full((new, WIDTH), np.nan)])
            blocks.put(np.arange(len(plain) - new, len(plain)), np.nan)
        rows = rng.choice(len(plain), size=min(len(plain), 5), replace=False)
        values = rng.normal(size=(len(rows), WIDTH))
        blocks.put(rows, values)
        plain[rows] = values
        columns = rng.integers(0, WIDTH, size=len(rows))
        cells = rng.normal(size=len(rows))
        blocks.put_cells(rows, columns, cells)
        plain[rows, columns] = cells
        order = rng.permutation(len(plain))
        np.testing.assert_array_equal(blocks.take(order), plain[order])
        np.testing.assert_array_equal(blocks.cells(rows, columns), plain[rows, columns])
        for row in rows.tolist():
            np.testing.assert_array_equal(blocks.row(row), plain[row])


def test_growing_beyond_a_block_keeps_the_rows_where_they_are() -> None:
    """No copy: the first block's array is the same object after the growth."""
    blocks = RowBlocks(WIDTH, 4, block_rows=4)
    first = blocks.blocks[0]
    blocks.grow(13)
    assert blocks.blocks[0] is first
    assert [len(b) for b in blocks.blocks] == [4, 4, 4, 4]


def test_block_rows_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        RowBlocks(WIDTH, 4, block_rows=3)
