"""A rich progress bar for long replays (off with ``--quiet`` or when not a terminal)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@contextmanager
def bar(total: int, label: str, disable: bool = False) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``: ``n`` more records done."""
    progress = Progress(
        TextColumn(f"{label} [bold]records"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=disable,
        transient=True,
    )
    with progress:
        task = progress.add_task(label, total=total)

        def advance(n: int) -> None:
            progress.update(task, advance=n)

        yield advance
