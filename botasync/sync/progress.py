"""A progress bar for long walks, on a terminal only: pages, recordings, and an honest ETA.

The ETA is the slower of the pace measured so far and the pace the request budget
allows, so a first sync under a 90-a-minute budget says "11 min", not "a few seconds".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text

from botasync.api.budget import RequestBudget
from botasync.humanize import human_seconds
from botasync.sync.syncer import PassStats

WAIT_SHOWN_S = 1.0  # a shorter wait for the budget is just the pace, not worth a word


def eta_seconds(
    done_pages: int, total_pages: int, elapsed_s: float, requests_per_minute: int
) -> float:
    """Seconds left: remaining pages at the slower of the measured and the budget's pace."""
    left = max(0, total_pages - done_pages)
    budget_pace = 60.0 / requests_per_minute
    measured_pace = elapsed_s / done_pages if done_pages else 0.0
    return left * max(budget_pace, measured_pace)




class WalkProgress:
    """The callback a `Syncer` calls after each page: `(stats, position, total_or_None)`.

    With offsets, `position` is the walk's next offset (a resumed walk starts past 0) and
    `total` the recordings expected. With cursors `total` is None and `position` the
    items walked so far: the bar shows what is done, never a guessed end. While the
    request budget holds the next request back, it says so and for how long.
    """

    def __init__(self, progress: Progress, requests_per_minute: int, page_size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.progress = progress
        self.rpm = requests_per_minute
        self.page_size = page_size
        self.clock = clock
        self.task: TaskID | None = None
        self.started = clock()
        self.budget: RequestBudget | None = None
        self.eta_s: float | None = None
        self.eta_at = self.started
        self.pages_seen = False

    def watch_budget(self, budget: RequestBudget) -> None:
        """The budget the walk's requests wait for, to say when it is what they wait for."""
        self.budget = budget

    def begin(self) -> None:
        """Show the bar before the first page: the first requests may wait for the budget."""
        if self.task is None:
            self.task = self.progress.add_task("starting", total=None)

    def __call__(self, stats: PassStats, position: int, total: int | None) -> None:
        if self.task is None or not self.pages_seen:
            self.begin()
            self.started = self.clock()
            self.pages_seen = True
        assert self.task is not None
        now = self.clock()
        if total is not None and total < position:
            total = None  # an estimate the walk already passed is no estimate: show none
        if total:
            left_pages = math.ceil(max(0, total - position) / self.page_size)
            self.eta_s = eta_seconds(0, left_pages, 0.0, self.rpm) if not stats.pages else (
                left_pages * max(60.0 / self.rpm, (now - self.started) / stats.pages))
            self.eta_at = now
            self.progress.update(self.task, total=total, completed=position)
            what = f"{stats.kind}: {position:,} of ~{total:,} recordings"
        else:
            self.eta_s = None  # no total, no time left: only what was walked
            what = f"{stats.kind}: {_plural(stats.pages, 'page')}, {position or stats.seen:,} " \
                   "recordings"
        self.progress.update(self.task, description=what)

    def status(self) -> str:
        """The right-hand text, read at each refresh: the budget's wait, or the time left."""
        wait = self.budget.queued_wait() if self.budget is not None else 0.0
        if WAIT_SHOWN_S <= wait < math.inf:
            return f"waiting for the rate limit, {human_seconds(wait)}"
        if self.eta_s is None:
            return ""
        left = max(0.0, self.eta_s - (self.clock() - self.eta_at))
        return f"{human_seconds(left)} left"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


class _StatusColumn(ProgressColumn):
    """Renders `WalkProgress.status()` at every refresh, so a wait counts down live."""

    def __init__(self, walk: Callable[[], WalkProgress | None]) -> None:
        super().__init__()
        self.walk = walk

    def render(self, task: Task) -> Text:
        walk = self.walk()
        return Text(walk.status() if walk else "")


@contextmanager
def walk_progress(
    console: Console, requests_per_minute: int, page_size: int = 100, *, enabled: bool = True
) -> Iterator[WalkProgress | None]:
    """A live bar on a terminal; None (no bar, no estimate requests) elsewhere."""
    if not enabled or not console.is_terminal:
        yield None
        return
    holder: list[WalkProgress] = []
    columns = (TextColumn("{task.description}"), BarColumn(),
               _StatusColumn(lambda: holder[0] if holder else None))
    # redirect_stderr: log lines (JSON or pretty) print above the bar, not across it
    with Progress(*columns, console=console, transient=True, redirect_stderr=True) as progress:
        holder.append(WalkProgress(progress, requests_per_minute, page_size))
        holder[0].begin()
        yield holder[0]
