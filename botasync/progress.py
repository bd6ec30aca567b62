"""A progress bar for long walks, on a terminal only: pages, recordings, and an honest ETA.

The ETA is the slower of the pace measured so far and the pace the request budget
allows, so a first sync under a 90-a-minute budget says "11 min", not "a few seconds".
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from botasync.sync import PassStats


def eta_seconds(
    done_pages: int, total_pages: int, elapsed_s: float, requests_per_minute: int
) -> float:
    """Seconds left: remaining pages at the slower of the measured and the budget's pace."""
    left = max(0, total_pages - done_pages)
    budget_pace = 60.0 / requests_per_minute
    measured_pace = elapsed_s / done_pages if done_pages else 0.0
    return left * max(budget_pace, measured_pace)


def human_seconds(s: float) -> str:
    """`42 s`, `11 min`, `2 h 05 min`."""
    if s < 90:
        return f"{math.ceil(s)} s"
    if s < 5400:
        return f"{round(s / 60)} min"
    return f"{int(s // 3600)} h {round((s % 3600) / 60):02d} min"


class WalkProgress:
    """The callback a `Syncer` calls after each page: `(stats, offset, total_estimate)`."""

    def __init__(self, progress: Progress, requests_per_minute: int, page_size: int) -> None:
        self.progress = progress
        self.rpm = requests_per_minute
        self.page_size = page_size
        self.task: TaskID | None = None
        self.started = time.monotonic()

    def __call__(self, stats: PassStats, offset: int, total: int | None) -> None:
        if self.task is None:
            self.task = self.progress.add_task(stats.kind, total=None, eta="")
            self.started = time.monotonic()
        eta = ""
        if total:
            total_pages = max(1, math.ceil(total / self.page_size))
            left = eta_seconds(stats.pages, total_pages, time.monotonic() - self.started, self.rpm)
            eta = f"~{total:,} recordings, {human_seconds(left)} left"
            self.progress.update(self.task, total=total_pages)
        self.progress.update(
            self.task, completed=stats.pages, eta=eta,
            description=f"{stats.kind}: {stats.pages} pages, {stats.seen:,} recordings",
        )


@contextmanager
def walk_progress(
    console: Console, requests_per_minute: int, page_size: int = 100, *, enabled: bool = True
) -> Iterator[WalkProgress | None]:
    """A live bar on a terminal; None (no bar, no estimate requests) elsewhere."""
    if not enabled or not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[eta]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        yield WalkProgress(progress, requests_per_minute, page_size)
