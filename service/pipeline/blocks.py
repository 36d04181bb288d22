"""A float64 matrix of rows that grows without copying the rows it has.

The window store keeps every key's history in one ``(capacity, width)`` matrix, and
with a long history (720 values) and many keys that matrix is hundreds of megabytes.
Doubling a single array copies all of it at once, in the middle of a poll: a stall
of tenths of a second that every event queued behind it waits out (the p99 of a
stream spread over 100k keys). So the rows live in blocks of :data:`BLOCK_ROWS`: a
small matrix doubles within its first block (a copy of at most half a block), and
beyond that it grows by adding a block, which the allocator maps lazily. Reading or
writing rows costs one fancy index per block the rows fall in, and while there is one
block (up to :data:`BLOCK_ROWS` keys per task) exactly what a single array costs.

New rows hold garbage until written: their owner fills a row when it hands it out.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

BLOCK_ROWS = 4096
"""Rows per block (a power of two): at a width of 720, 24 MB."""


class RowBlocks:
    """``(capacity, width)`` float64 rows addressed by row number.

    >>> rows = RowBlocks(width=2, capacity=2, block_rows=2)
    >>> rows.put(np.array([0, 1]), np.array([[1.0, 2.0], [3.0, 4.0]]))
    >>> rows.grow(5)
    >>> rows.capacity, len(rows.blocks)
    (6, 3)
    >>> rows.put(np.array([4]), np.array([[5.0, 6.0]]))
    >>> rows.take(np.array([4, 0])).tolist()
    [[5.0, 6.0], [1.0, 2.0]]
    """

    def __init__(self, width: int, capacity: int, block_rows: int = BLOCK_ROWS) -> None:
        if block_rows & (block_rows - 1):
            raise ValueError(f"block_rows must be a power of two, not {block_rows}")
        self.width = width
        self._block_rows = block_rows
        self._shift = block_rows.bit_length() - 1
        self.blocks: list[FloatArray] = [np.empty((min(capacity, block_rows), width))]
        self.grow(capacity)

    @property
    def capacity(self) -> int:
        return sum(len(block) for block in self.blocks)

    def grow(self, capacity: int) -> None:
        """Room for at least ``capacity`` rows (the new ones unwritten)."""
        first = self.blocks[0]
        if len(self.blocks) == 1 and len(first) < min(capacity, self._block_rows):
            size = len(first)
            while size < min(capacity, self._block_rows):
                size *= 2
            bigger = np.empty((min(size, self._block_rows), self.width))
            bigger[: len(first)] = first
            self.blocks[0] = bigger
        while self.capacity < capacity:
            self.blocks.append(np.empty((self._block_rows, self.width)))

    def take(self, rows: IntArray) -> FloatArray:
        """A copy of ``rows``, in their order."""
        if len(self.blocks) == 1:
            out: FloatArray = self.blocks[0][rows]
            return out
        taken = np.empty((len(rows), self.width))
        for block, within, where in self._split(rows):
            taken[where] = self.blocks[block][within]
        return taken

    def put(self, rows: IntArray, values: FloatArray | float) -> None:
        """Write ``values`` (one row per row, or one number for all) into ``rows``."""
        if len(self.blocks) == 1:
            self.blocks[0][rows] = values
            return
        array = np.asarray(values, dtype=np.float64)
        for block, within, where in self._split(rows):
            self.blocks[block][within] = array if array.ndim == 0 else array[where]

    def cells(self, rows: IntArray, columns: IntArray) -> FloatArray:
        """The values at (``rows[i]``, ``columns[i]``)."""
        if len(self.blocks) == 1:
            out: FloatArray = self.blocks[0][rows, columns]
            return out
        values = np.empty(len(rows))
        for block, within, where in self._split(rows):
            values[where] = self.blocks[block][within, columns[where]]
        return values

    def put_cells(self, rows: IntArray, columns: IntArray, values: FloatArray) -> None:
        """Write ``values[i]`` at (``rows[i]``, ``columns[i]``)."""
        if len(self.blocks) == 1:
            self.blocks[0][rows, columns] = values
            return
        for block, within, where in self._split(rows):
            self.blocks[block][within, columns[where]] = values[where]

    def row(self, row: int) -> FloatArray:
        """Row ``row`` itself (a view: write through it, or copy it)."""
        out: FloatArray = self.blocks[row >> self._shift][row & (self._block_rows - 1)]
        return out

    def _split(self, rows: IntArray) -> list[tuple[int, IntArray, IntArray]]:
        """(block, rows within it, positions in ``rows``) for each block ``rows`` touch."""
        rows = np.asarray(rows, dtype=np.intp)
        if not len(rows):
            return []
        of = rows >> self._shift
        order = np.argsort(of, kind="stable")
        blocks, starts = np.unique(of[order], return_index=True)
        ends = [*starts[1:].tolist(), len(rows)]
        mask = self._block_rows - 1
        out = []
        for block, start, end in zip(blocks.tolist(), starts.tolist(), ends, strict=True):
            where = order[start:end]
            out.append((block, rows[where] & mask, where))
        return out
