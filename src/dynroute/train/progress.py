"""The training progress bar: rich, on stderr, the same for every model family."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(
    enabled: bool, total: int, done: int, label: str
) -> Iterator[Callable[[int, str], None] | None]:
    """A bar of ``total`` steps starting at ``done``; yields ``update(steps_done, stats)``.

    Yields None when not ``enabled`` (the caller skips its updates).

    Example:
        >>> with progress_bar(False, 10, 0, "train") as update:
        ...     update is None
        True
    """
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with progress:
        task = progress.add_task(label, total=total, completed=done, stats="")
        yield lambda n, stats: progress.update(task, completed=n, stats=stats)
