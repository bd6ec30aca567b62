"""A progress bar for `botasync transcripts download`, on a terminal only.

Recordings fetched of those queued, transcripts and segments stored, and the time
left at the slower of the budget's pace (10 a minute, one or two requests a
recording) and the pace measured so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from botasync.transcripts.admin import eta_seconds, human_duration
from botasync.transcripts.fetcher import FetchStats


def time_left(left: int, done: int, elapsed_s: float, requests_per_minute: int,
              summaries: bool) -> float:
    """Seconds left: the slower of the budget's pace and the measured one (pure)."""
    budget = eta_seconds(left, requests_per_minute, summaries)
    measured = elapsed_s / done * left if done else 0.0
    return max(budget, measured)


class FetchProgress:
    """The `on_progress` of a `TranscriptFetcher`; `begin` gives it the queue's size."""

    def __init__(self, progress: Progress, requests_per_minute: int, summaries: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.progress = progress
        self.rpm = requests_per_minute
        self.summaries = summaries
        self.clock = clock
        self.total = 0
        self.started = clock()
        self.task: TaskID | None = None

    def begin(self, status: dict[str, Any] | Sequence[dict[str, Any]],
              limit: int | None = None) -> None:
        """Size the bar from `transcripts_status` (one project's, or a list of several
        projects' fetched side by side): the recordings due now (up to `limit` each)."""
        dues = [int(s["queued"]["due"]) for s in ([status] if isinstance(status, dict)
                                                  else status)]
        self.total = sum(min(due, limit) if limit is not None else due for due in dues)
        self.started = self.clock()
        self.task = self.progress.add_task("transcripts", total=max(self.total, 1), eta="")
        self(FetchStats())

    def __call__(self, stats: FetchStats) -> None:
        if self.task is None:
            return
        handled = stats.recordings + stats.failures
        left = max(0, self.total - handled)
        eta = time_left(left, handled, self.clock() - self.started, self.rpm, self.summaries)
        self.progress.update(
            self.task, completed=min(handled, self.total),
            description=(f"recordings {handled:,}/{self.total:,}, {stats.transcriptions:,} "
                         f"transcripts, {stats.segments:,} segments"
                         + (f", {stats.failures} failed" if stats.failures else "")),
            eta=f"about {human_duration(eta)} left" if left else "",
        )


@contextmanager
def fetch_progress(
    console: Console, requests_per_minute: int, summaries: bool, *, enabled: bool = True
) -> Iterator[FetchProgress | None]:
    """A live bar on a terminal; None elsewhere (the log says what happens instead)."""
    if not enabled or not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[eta]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        yield FetchProgress(progress, requests_per_minute, summaries)
