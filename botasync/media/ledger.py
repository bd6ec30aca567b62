"""What became of each download, written down: on its media row, as an event, in the stats.

A file that landed is recorded (`local_path`, `sha256`, `downloaded_at`) with its
`media.downloaded` event in one transaction. A failure is recorded on the row
(`download_attempts`, `download_error`, `download_next_at`): retried with backoff, given
up after `max_attempts` (an error with no next attempt), which is how the queue learns
when an item comes due again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import structlog

from botasync.backoff import backoff_delay
from botasync.envelope import MEDIA_DOWNLOADED, EventFactory, EventIds, iso
from botasync.errors import BotasyncError
from botasync.jsoncodec import loads
from botasync.media import files as fs
from botasync.media.queue import JOIN_SQL, Clock, Job
from botasync.store.base import Database
from botasync.store.sqlite import insert_events


@dataclass
class DownloadStats:
    """What this downloader did since it started (for progress bars and logs)."""

    files: int = 0  # landed
    bytes: int = 0  # received (a resumed part's earlier bytes are not counted again)
    failures: int = 0  # failed attempts recorded
    gave_up: int = 0
    in_flight: int = 0
    disk_blocked: int = 0  # queued items held back by min_free_bytes at the last look


class Failure(Exception):
    """A download that did not land: recorded on the row, retried later.

    `count=False` defers it without spending an attempt (no disk space yet).
    """

    def __init__(self, reason: str, *, discard_part: bool = False, count: bool = True,
                 retry_in: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.discard_part = discard_part
        self.count = count
        self.retry_in = retry_in


@dataclass(frozen=True)
class Retry:
    """How the downloads of one downloader back off: attempts, then base and cap seconds."""

    max_attempts: int
    base_s: float
    cap_s: float


class Ledger:
    """One project's download outcomes: rows, events, stats and their log lines."""

    def __init__(
        self, store: Database, project: str, stats: DownloadStats, *, clock: Clock,
        rand: Callable[[], float], retry: Retry,
        on_progress: Callable[[DownloadStats], None] | None,
    ) -> None:
        self._store = store
        self._project = project
        self._stats = stats
        self._clock = clock
        self._rand = rand
        self._retry = retry
        self._on_progress = on_progress
        self._ids = EventIds()
        # the lines of the downloader's logger, bound lazily (see `Downloader._log`)
        self._log = structlog.get_logger("botasync.media", project=project)

    def received(self, size: int) -> None:
        """Bytes written to a part file."""
        self._stats.bytes += size
        self._progress()

    async def landed(self, job: Job, final: Path, sha256: str, size: int) -> bool:
        """Record the file and emit `media.downloaded` in one transaction; whether the item
        was still there (if not, its file goes too).

        Shielded: a shutdown while it runs still records a file already in place.
        """
        landed = await asyncio.shield(self._record(job, final, sha256, size))
        if not landed:  # the item was removed while it downloaded: so goes its file
            await asyncio.to_thread(fs.remove, final)
            self._log.info("media.file_removed", media_id=job.media_id, reason="media removed")
            return False
        self._stats.files += 1
        self._progress()
        self._log.info("media.downloaded", media_id=job.media_id, recording_id=job.recording_id,
                       bytes=size, path=str(final))
        return True

    async def _record(self, job: Job, final: Path, sha256: str, size: int) -> bool:
        now_dt = self._clock()
        now = iso(now_dt)
        async with self._store.transaction() as conn:
            cur = await conn.execute(
                "UPDATE media SET local_path = ?, local_size_bytes = ?, sha256 = ?, "
                "downloaded_at = ?, download_attempts = 0, download_error = NULL, "
                "download_next_at = NULL WHERE project = ? AND id = ? AND recording_id = ?",
                (str(final), size, sha256, now, self._project, job.media_id, job.recording_id),
            )
            if cur.rowcount == 0:
                return False
            async with conn.execute(
                f"SELECT r.raw, m.raw FROM {JOIN_SQL} WHERE m.project = ? AND m.id = ?",  # noqa: S608
                (self._project, job.media_id),
            ) as c:
                row = await c.fetchone()
            assert row is not None
            item = {**loads(row[1]), "local_path": str(final), "sha256": sha256}
            make = EventFactory(lambda: self._ids.new(now_dt), now, self._project)
            event = make.make(MEDIA_DOWNLOADED, loads(row[0]), {}, media=item)
            await insert_events(conn, [event])
        return True

    async def failed(self, job: Job, f: Failure) -> None:
        """Write the failure on the row: retry later with backoff, or give up."""
        attempts = job.attempts + (1 if f.count else 0)
        gave_up = f.count and attempts >= self._retry.max_attempts
        delay = f.retry_in if f.retry_in is not None else backoff_delay(
            attempts - 1, base=self._retry.base_s, cap=self._retry.cap_s, rand=self._rand)
        next_at = None if gave_up else iso(self._clock() + timedelta(seconds=delay))
        try:
            async with self._store.transaction() as conn:
                await conn.execute(
                    "UPDATE media SET download_attempts = ?, download_error = ?, "
                    "download_next_at = ? WHERE project = ? AND id = ?",
                    (attempts, f.reason, next_at, self._project, job.media_id),
                )
        except BotasyncError as e:
            self._log.error("media.bookkeeping_failed", media_id=job.media_id, error=str(e))
        self._stats.failures += 1
        self._stats.gave_up += int(gave_up)
        if gave_up:
            self._log.error("media.download_gave_up", media_id=job.media_id, attempts=attempts,
                            error=f.reason)
            return
        self._log.warning("media.download_failed", media_id=job.media_id,
                          recording_id=job.recording_id, attempt=attempts, error=f.reason,
                          retry_in_s=round(delay, 1))

    def _progress(self) -> None:
        if self._on_progress:
            self._on_progress(self._stats)
