"""The media downloader: mirror uploaded files to disk, patiently, resumably, verified.

A downloader serves one project (the Config view it is built with): its queue, its
rows, its files (under `files.project_root`) and its learned download-url form are that
project's, and its client holds it to that project's budgets. One runner task picks due
items from the `queue` (newest recordings first) and keeps up to `concurrency` downloads
in flight, within the disk space `min_free_bytes` leaves. Each download gets a
pre-signed URL (`urls`: the client holds it to the download budget and the project's
overall one), has its bytes fetched and checked (`transfer`), fsynced and renamed into
place, and its outcome recorded (`ledger`): `local_path`, `sha256` and `downloaded_at`
with a `media.downloaded` event (of the project) in one transaction, or the failure and
its next attempt. After a sync commit it sweeps out the files no item owns (`orphans`).
Downloads never touch the metadata sync: they run after the rows that name them are
committed, from their own task, and only read the mirror.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from botasync.api.client import BotaClient
from botasync.config import DEFAULT_PROJECT, Config, MediaConfig
from botasync.envelope import utc_now
from botasync.errors import BotasyncError
from botasync.lifecycle import AsyncClosing, wait_set
from botasync.media import files as fs
from botasync.media import orphans as orphan_files
from botasync.media.ledger import DownloadStats, Failure, Ledger, Retry
from botasync.media.orphans import orphans
from botasync.media.queue import (
    GAVE_UP,
    JOIN_SQL,
    NEEDS,
    Clock,
    Job,
    Queue,
    expected_sha256,
    queue_query,
    queued_sql,
    wanted_sql,
)
from botasync.media.transfer import SHA256_DIFFERS, Transfer, _reason, published
from botasync.media.urls import FORM_KEY, Form, Urls, first_form, learned_form, try_other
from botasync.store.base import Database
from botasync.store.sqlite import Mirror

# importable from here, where they were before the downloader was split
__all__ = [
    "FORM_KEY", "GAVE_UP", "JOIN_SQL", "NEEDS", "SHA256_DIFFERS", "DownloadStats",
    "Downloader", "Form", "Job", "_reason", "expected_sha256", "first_form", "learned_form",
    "orphans", "queue_query", "queued_sql", "try_other", "wanted_sql",
]

log = structlog.get_logger("botasync.media")

MAX_ATTEMPTS = 10  # failed attempts before an item is given up (shown by `files status`)
RETRY_BASE_S = 30.0
RETRY_MAX_S = 3600.0
SWEEP_EVERY_S = 60.0  # at most this often, after a sync commit, look for orphaned files
IDLE_RECHECK_S = 60.0  # with nothing due, look again this often even without a notify
DISK_RECHECK_S = 30.0  # downloads held back for disk space are reconsidered this often
ERROR_PAUSE_S = 1.0  # after an unexpected error (the database), before trying again

OnCommit = Callable[[], None]

# bytes that downloads in flight may still write, by files_dir, shared by the downloaders
# of one process (one per project) since their projects' files share the disk:
# files_dir -> (project, media id) -> bytes; an entry stays (one small dict per files_dir)
_RESERVED: dict[Path, dict[tuple[str, str], int]] = {}


class Downloader(AsyncClosing):
    """Mirrors one project's media files: `start()`, `notify()` after a sync commit,
    `drain()`, `aclose()`.

    Built with the project's Config view (`cfg`), it serves `cfg.project` with
    `cfg.media`; built with a `MediaConfig` alone, it serves `project` (`default`
    unless given). With `[media] download = false` it does nothing (every method
    returns at once), so it can be wired in unconditionally.
    """

    def __init__(
        self,
        store: Database,
        client: BotaClient,
        media: MediaConfig | Config,
        *,
        project: str | None = None,
        on_commit: OnCommit | None = None,
        clock: Clock = utc_now,
        rand: Callable[[], float] = random.random,
        on_progress: Callable[[DownloadStats], None] | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        retry_base_s: float = RETRY_BASE_S,
        retry_max_s: float = RETRY_MAX_S,
        sweep_every_s: float = SWEEP_EVERY_S,
    ) -> None:
        if isinstance(media, Config):
            project = project if project is not None else media.project
            media = media.media
        self.store = store
        self.client = client
        self.media = media
        self.project = project if project is not None else DEFAULT_PROJECT
        self.mirror = Mirror(store, self.project)
        self.files_dir = Path(media.files_dir)  # made absolute in start(), off the loop
        # this project's files: files_dir itself for `default`; a bad name fails here
        self.root = fs.project_root(self.files_dir, self.project)
        self.on_commit = on_commit or (lambda: None)
        self.on_progress = on_progress
        self.stats = DownloadStats()
        self._clock = clock
        self._sweep_every_s = sweep_every_s
        self._queue = Queue(store, self.project, media.types, clock)
        self._urls = Urls(client, self.mirror, self.project, clock)
        self._ledger = Ledger(store, self.project, self.stats, clock=clock, rand=rand,
                              retry=Retry(max_attempts, retry_base_s, retry_max_s),
                              on_progress=on_progress)
        self._transfer = Transfer(self._urls, self.project, self._ledger.received)
        self._lock = fs.DirLock(self.root)
        self._runner: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._reserved: dict[tuple[str, str], int] = {}  # see `_RESERVED` (set in start())
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = asyncio.Event()
        self._dirty = True  # a sync committed since the last orphan sweep
        self._last_sweep = -math.inf
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Lock the files directory, sweep it, and start the queue runner."""
        if not self.media.download or self._runner is not None:
            return
        if self._closed:
            raise BotasyncError("the downloader is closed")
        self.files_dir = await asyncio.to_thread(self.files_dir.resolve)
        self.root = fs.project_root(self.files_dir, self.project)
        self._reserved = _RESERVED.setdefault(self.files_dir, {})
        self._lock = fs.DirLock(self.root)  # one per project: projects never share a file
        await asyncio.to_thread(self._lock.acquire)
        await self._urls.load()
        await self.sweep()
        self._transfer.open()
        self._idle.clear()
        self._runner = asyncio.create_task(self._run(), name="botasync-media")
        self._log.info("media.started", files_dir=str(self.root), types=list(self.media.types),
                       concurrency=self.media.concurrency)

    @property
    def _log(self) -> Any:
        """The module's logger with this downloader's project on every line (bound at each
        call, so a logging configuration made after the constructor applies)."""
        return log.bind(project=self.project)

    def notify(self) -> None:
        """The sync committed: uploaded media (or removed media) may be waiting."""
        self._dirty = True
        if self._runner is None or self._stop.is_set():
            return
        self._idle.clear()
        self._wake.set()

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - the daemon's API
        """Wait until nothing is in flight and nothing is due now; False on timeout."""
        if self._runner is None or self._stop.is_set():
            return not self._inflight
        self.notify()
        return await wait_set(self._idle, timeout)

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Stop: downloads in flight get `grace_s` to land, the rest resume next time."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
        tasks = list(self._inflight.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._transfer.aclose()
        self._lock.release()
        self._idle.set()

    # --- the runner ------------------------------------------------------------------

    async def _run(self) -> None:
        """Start what is due, then sleep until a notify, a finished download or a retry."""
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a notify from now on is not lost
            try:
                started, wait = await self._tick()
            except Exception as e:  # the database; keep the runner alive and look again
                self._log.error("media.queue_error", error=str(e) or type(e).__name__)
                started, wait = 0, ERROR_PAUSE_S
            if self._wake.is_set() or self._stop.is_set():
                continue
            if not started and not self._inflight:
                self._idle.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _tick(self) -> tuple[int, float]:
        """Sweep if due, start downloads into free slots; (started, seconds to sleep)."""
        if self._dirty and time.monotonic() - self._last_sweep >= self._sweep_every_s:
            await self.sweep()
        free_slots = self.media.concurrency - len(self._inflight)
        if free_slots <= 0 or self._stop.is_set():
            return 0, IDLE_RECHECK_S
        room = await self._room()
        jobs = await self._queue.due(free_slots, room, list(self._inflight))
        for job in jobs:
            self._spawn(job)
        if len(jobs) < free_slots:
            await self._check_blocked(room)
        if self.stats.disk_blocked:
            return len(jobs), DISK_RECHECK_S
        return len(jobs), await self._next_retry_in()

    async def _room(self) -> int:
        """Bytes downloads may still take: free space less the floor and what is in flight
        (this project's and those of the other projects' downloaders in this process)."""
        free = await asyncio.to_thread(fs.disk_free, self.root)
        return free - self.media.min_free_bytes - sum(self._reserved.values())

    async def _check_blocked(self, room: int) -> None:
        """Count the due items that do not fit; say so once when that starts and ends."""
        blocked, smallest = await self._queue.too_big(room)
        if blocked and not self.stats.disk_blocked:
            self._log.warning(
                "media.disk_low", waiting=blocked, files_dir=str(self.root),
                free_bytes=room + self.media.min_free_bytes, next_needs=smallest,
                min_free_bytes=self.media.min_free_bytes,
                detail="downloads that would leave less than min_free_bytes free are not started",
            )
        elif not blocked and self.stats.disk_blocked:
            self._log.info("media.disk_ok", files_dir=str(self.root))
        self.stats.disk_blocked = blocked

    async def _next_retry_in(self) -> float:
        """Seconds until the earliest retry comes due (capped: a notify may come first)."""
        due = await self._queue.next_due()
        if due is None:
            return IDLE_RECHECK_S
        wait = (due - self._clock()).total_seconds()
        return min(max(wait, 0.01), IDLE_RECHECK_S)

    def _spawn(self, job: Job) -> None:
        task = asyncio.create_task(self._job(job), name=f"botasync-media-{job.media_id}")
        self._inflight[job.media_id] = task
        self._reserved[(self.project, job.media_id)] = job.size or 0
        self.stats.in_flight = len(self._inflight)
        task.add_done_callback(lambda _t: self._done(job.media_id))

    def _done(self, media_id: str) -> None:
        self._inflight.pop(media_id, None)
        self._reserved.pop((self.project, media_id), None)
        self.stats.in_flight = len(self._inflight)
        self._wake.set()

    # --- one download ----------------------------------------------------------------

    async def _job(self, job: Job) -> None:
        """Fetch one item; any failure is recorded on its row, never raised."""
        try:
            await self._fetch(job)
        except Failure as f:
            await self._fail(job, f)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug or the database: record it, keep the queue going
            self._log.exception("media.download_error", media_id=job.media_id)
            await self._fail(job, Failure(f"unexpected {type(e).__name__}: {e}"))

    async def _fetch(self, job: Job) -> None:
        """Adopt a finished file, or download, verify, publish and record it."""
        found = await published(self.root, job)
        if found is not None:
            await self._commit(job, *found)
            return
        part = fs.part_path(self.root, job.recording_id, job.media_id)
        digest, size, content_type = await self._transfer.fetch(job, part)
        # the mirror's type names the file; the answer's where the mirror has none (a
        # recording's own file): `.bin` when neither says, or says something unknown
        final = fs.final_path(self.root, job.recording_id, job.media_id,
                              job.mime_type or content_type)
        await asyncio.to_thread(fs.publish, part, final)
        await self._commit(job, final, digest, size)

    async def _commit(self, job: Job, final: Path, sha256: str, size: int) -> None:
        """Record the file (see `Ledger.landed`), then tell whoever waits for commits."""
        landed = await self._ledger.landed(job, final, sha256, size)
        self._urls.forget(job.media_id)
        if landed:
            self.on_commit()

    async def _fail(self, job: Job, f: Failure) -> None:
        """Throw the part away when it cannot be resumed, and record the failure."""
        if f.discard_part:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(
                    fs.remove, fs.part_path(self.root, job.recording_id, job.media_id))
        await self._ledger.failed(job, f)

    # --- orphans ---------------------------------------------------------------------

    async def sweep(self) -> int:
        """Remove files whose media item is gone, and stale partial files; how many."""
        self._dirty = False
        self._last_sweep = time.monotonic()
        return await orphan_files.sweep(self.store, self.project, self.root,
                                        busy=set(self._inflight))
