"""A progress bar for the download queue, on a terminal only: files, bytes, an honest ETA.

Every file costs one download-url call, so the queue can go no faster than the
download budget allows (25 a minute by default), however fast the network is; the
ETA is the slower of that pace and the byte rate measured so far. Projects download
side by side, each at its own budget: the pace is that of the projects with files queued.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from botasync.humanize import human_bytes, human_seconds
from botasync.media.ledger import DownloadStats


def eta_seconds(
    files_left: int, bytes_left: int, elapsed_s: float, bytes_done: int, requests_per_minute: int
) -> float:
    """Seconds left: the slower of one URL per file at the budget's pace and the byte rate."""
    budget = max(0, files_left) * 60.0 / requests_per_minute
    rate = bytes_done / elapsed_s if elapsed_s > 0 and bytes_done > 0 else 0.0
    transfer = max(0, bytes_left) / rate if rate else 0.0
    return max(budget, transfer)


class DownloadProgress:
    """The `on_progress` of a `Downloader`; `begin` gives it the queue's size first."""

    def __init__(self, progress: Progress, requests_per_minute: int) -> None:
        self.progress = progress
        self.per_project_rpm = requests_per_minute
        self.rpm = requests_per_minute
        self.files_total = 0
        self.bytes_total = 0
        self.started = time.monotonic()
        self.task: TaskID | None = None

    def begin(self, status: dict[str, Any]) -> None:
        """Size the bar from `files_status` (the queue as it stands)."""
        self.files_total = int(status["queued"]["files"])
        self.bytes_total = int(status["queued"]["bytes"])
        busy = sum(1 for p in status.get("projects", {}).values() if p["queued"]["files"])
        self.rpm = self.per_project_rpm * max(busy, 1)
        self.started = time.monotonic()
        self.task = self.progress.add_task("files", total=max(self.bytes_total, 1), eta="")
        self._show(DownloadStats())

    def __call__(self, stats: DownloadStats) -> None:
        self._show(stats)

    def _show(self, stats: DownloadStats) -> None:
        if self.task is None:
            return
        left = eta_seconds(self.files_total - stats.files, self.bytes_total - stats.bytes,
                           time.monotonic() - self.started, stats.bytes, self.rpm)
        self.progress.update(
            self.task, completed=min(stats.bytes, self.bytes_total),
            description=(f"files {stats.files}/{self.files_total}, "
                         f"{human_bytes(stats.bytes)} of {human_bytes(self.bytes_total)}"),
            eta=f"{human_seconds(left)} left" if self.files_total > stats.files else "",
        )


@contextmanager
def download_progress(
    console: Console, requests_per_minute: int, *, enabled: bool = True
) -> Iterator[DownloadProgress | None]:
    """A live bar on a terminal; None elsewhere (logs say what happens instead)."""
    if not enabled or not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[eta]}"))
    with Progress(*columns, console=console, transient=True) as progress:
        yield DownloadProgress(progress, requests_per_minute)
