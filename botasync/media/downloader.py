"""The media download queue: mirror uploaded files to disk, patiently, resumably, verified.

The queue is the database itself: a media item is queued while it is `uploaded`, of
a wanted type, its recording not tombstoned, and it has no verified local file. A
downloader serves one project (the Config view it is built with): its queue, its rows,
its files (under `files.project_root`) and its learned form are that project's, and
its client holds it to that project's budgets. One runner task picks due items (newest
recordings first) and keeps up to `concurrency` downloads in flight. Each download asks
the API for a pre-signed URL (the client holds it to the download budget and the
project's overall one), streams it with a session of its own (no API key on it) into
`.<media_id>.part`, checks the size and, when the API gave one, the sha256, fsyncs,
renames into place, and records `local_path`, `sha256` and `downloaded_at` with a
`media.downloaded` event (of the project) in one transaction.
Downloads never touch the metadata sync: they run after the rows that name them are
committed, from their own task, and only read the mirror.

The URL comes in one of two forms, and the API says which by refusing the other: the
documented `POST /recordings/{id}/download-url {"media_id"}` for a media item, and the
deployed `GET /recordings/{id}/download-url` for a recording's own file (the media
row whose id is the recording's). The form that worked is kept in the project's `state`
row `download_form` and tried first from then on.

Failures are bookkeeping on the media row (`download_attempts`, `download_error`,
`download_next_at`): retried with backoff, given up after `max_attempts` (an error
with no next attempt). A refused or expired URL is asked for again at once; a cut
connection resumes with a Range request where the server allows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp
import structlog

from botasync import __version__
from botasync.api.client import BotaClient, DownloadUrl
from botasync.api.models import normalize_ts
from botasync.backoff import backoff_delay
from botasync.config import DEFAULT_PROJECT, Config, MediaConfig
from botasync.envelope import MEDIA_DOWNLOADED, EventFactory, EventIds, iso, utc_now
from botasync.errors import ApiError, AuthError, BotasyncError
from botasync.jsoncodec import loads
from botasync.lifecycle import AsyncClosing, wait_set
from botasync.media import files as fs
from botasync.store.base import Database
from botasync.store.sqlite import Mirror, insert_events

log = structlog.get_logger("botasync.media")

MAX_ATTEMPTS = 10  # failed attempts before an item is given up (shown by `files status`)
RETRY_BASE_S = 30.0
RETRY_MAX_S = 3600.0
SWEEP_EVERY_S = 60.0  # at most this often, after a sync commit, look for orphaned files
IDLE_RECHECK_S = 60.0  # with nothing due, look again this often even without a notify
DISK_RECHECK_S = 30.0  # downloads held back for disk space are reconsidered this often
ERROR_PAUSE_S = 1.0  # after an unexpected error (the database), before trying again
URL_MARGIN_S = 60.0  # a cached URL this close to expiry is renewed before use
RENEWALS = 2  # fresh URLs per download after the file server refused one
RESUMES = 3  # resumed requests per download after a cut connection that made progress
FLUSH_BYTES = 1 << 20  # received bytes buffered before a write: bounded memory per download
READ_CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 60.0  # between two reads, not for the whole file
USER_AGENT = f"botasync/{__version__}"
_CHUNK_IDS = 500  # ids per `IN (...)` query

FORM_KEY = "download_form"  # the `state` row naming the download-url form the API speaks
# Bota's examples warn that `content_sha256` is not promised to be the hash of the object
# the download URL serves (it "may return an encrypted container"): a file that hashes
# otherwise is kept, its own sha256 recorded, and the difference said once
SHA256_DIFFERS = "media.sha256_differs"

Form = Literal["GET", "POST"]

# The queue, as SQL over `media m JOIN recordings r` (JOIN_SQL: on both key columns);
# `{types}` is filled by `wanted_sql`, which scopes it to a project. NEEDS reads the
# media row alone, so SQLite settles the many files already on disk before it looks up
# their recordings (a term on `r` in it, such as comparing the recording's
# `content_sha256` with the file's, made the queue query of a mirror of 100,000 files
# about three times slower).
JOIN_SQL = "media m JOIN recordings r ON r.project = m.project AND r.id = m.recording_id"
WANTED = "m.status = 'uploaded' AND r.deleted_at IS NULL AND m.type IN ({types})"
NEEDS = ("(m.downloaded_at IS NULL OR (m.file_size_bytes IS NOT NULL "
         "AND m.local_size_bytes IS NOT m.file_size_bytes))")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
GAVE_UP = "(m.download_error IS NOT NULL AND m.download_next_at IS NULL)"
_DUE = "(m.download_next_at IS NULL OR m.download_next_at <= ?)"

Clock = Callable[[], datetime]
OnCommit = Callable[[], None]


def wanted_sql(
    types: Sequence[str], project: str | None = DEFAULT_PROJECT,
) -> tuple[str, list[str]]:
    """The WHERE clause (and its parameters) of one project's items that should be on disk;
    every project's with `project=None` (`files status` of them all)."""
    marks = ",".join("?" * len(types)) or "NULL"  # no type wanted: nothing matches
    where = WANTED.format(types=marks)
    if project is None:
        return where, list(types)
    return f"m.project = ? AND {where}", [project, *types]


def queued_sql(
    types: Sequence[str], project: str | None = DEFAULT_PROJECT,
) -> tuple[str, list[str]]:
    """The WHERE clause of the queue: wanted, not on disk, not given up."""
    where, params = wanted_sql(types, project)
    return f"{where} AND {NEEDS} AND NOT {GAVE_UP}", params


def queue_query(
    types: Sequence[str], select: str, extra: str = "", project: str | None = DEFAULT_PROJECT,
) -> tuple[str, list[str]]:
    """`SELECT <select>` over the queue, with `extra` conditions and clauses after it."""
    where, params = queued_sql(types, project)
    sql = f"SELECT {select} FROM {JOIN_SQL} WHERE {where}"  # noqa: S608
    return f"{sql} {extra}", params


@dataclass(frozen=True)
class Job:
    """One media item to fetch, as the queue read it; `sha256` is what the API says the
    bytes hash to (None when it does not say), `last_error` the previous failure."""

    media_id: str
    recording_id: str
    mime_type: str | None
    size: int | None
    attempts: int
    sha256: str | None = None
    last_error: str | None = None


def expected_sha256(value: Any) -> str | None:
    """A hex sha256 from the API (any case), or None when it is not one."""
    if not isinstance(value, str):
        return None
    digest = value.strip().lower()
    return digest if _SHA256_RE.fullmatch(digest) else None


def first_form(learned: Form | None, media_id: str) -> Form:
    """The download-url form to try first: the one the API took before, else by the row.

    A media item (`med_...`) is named in the documented POST; a recording's own file
    (the row's id is the recording's) has no media id to send, so it is the GET.
    """
    if learned is not None:
        return learned
    return "POST" if media_id.startswith("med_") else "GET"


def other_form(form: Form) -> Form:
    return "GET" if form == "POST" else "POST"


def try_other(learned: Form | None, status: int | None) -> bool:
    """Whether an answer to the first form asks for one try of the other.

    A 405 always: that form is not (or no longer) the API's. A 404 only while no form
    is learned: it may be a route the API lacks as much as a file it lacks; once a form
    has worked, its 404 is a missing file.
    """
    return status == 405 or (status == 404 and learned is None)


def learned_form(tried: Sequence[tuple[Form, int]]) -> Form | None:
    """Which form the API speaks, from the statuses its forms got (2xx: it worked).

    A form that worked is the API's; so is one that got a 404 while the other got a
    405 (the route is there, the file is not). Anything else says nothing.
    """
    for form, status in tried:
        if 200 <= status < 300:
            return form
    refused = [form for form, status in tried if status == 405]
    found = [form for form, status in tried if status == 404]
    if len(refused) == 1 and len(found) == 1:
        return found[0]
    return None


@dataclass
class DownloadStats:
    """What this downloader did since it started (for progress bars and logs)."""

    files: int = 0  # landed
    bytes: int = 0  # received (a resumed part's earlier bytes are not counted again)
    failures: int = 0  # failed attempts recorded
    gave_up: int = 0
    in_flight: int = 0
    disk_blocked: int = 0  # queued items held back by min_free_bytes at the last look


class _Failure(Exception):
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


class _Refused(Exception):
    """The file server refused the URL (expired, or its signature): ask for a new one."""


class _Dropped(Exception):
    """The connection failed mid-transfer; `progressed` when bytes landed in the part."""

    def __init__(self, reason: str, progressed: bool) -> None:
        super().__init__(reason)
        self.progressed = progressed


def _expires(url: DownloadUrl) -> datetime | None:
    if url.expires_at is None:
        return None
    try:
        return datetime.fromisoformat(normalize_ts(url.expires_at).replace("Z", "+00:00"))
    except ValueError:
        return None


def _expected_size(job: Job, url: DownloadUrl) -> int | None:
    """The size the file must have: the answer's, else the mirror's; None when neither says."""
    if url.file_size_bytes is None:
        return job.size
    if job.size is not None and url.file_size_bytes != job.size:
        raise _Failure(f"size changed: the API now says {url.file_size_bytes} bytes, "
                       f"the mirror {job.size} (the next sync will update it)")
    return url.file_size_bytes


def _reason(e: BaseException, url: str) -> str:
    """One line for a transfer error, without the pre-signed URL: it is a credential."""
    text = f"{type(e).__name__}: {e}".rstrip(": ")
    base, _, query = url.partition("?")
    text = text.replace(url, base)
    return text.replace(query, "***") if query else text


def _range_start(header: str | None) -> int | None:
    """The first byte of a `Content-Range: bytes a-b/n` answer."""
    if not header or not header.startswith("bytes "):
        return None
    first = header[6:].split("-", 1)[0].strip()
    return int(first) if first.isdigit() else None


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
        self._rand = rand
        self._max_attempts = max_attempts
        self._retry = (retry_base_s, retry_max_s)
        self._sweep_every_s = sweep_every_s
        self._ids = EventIds()
        self._differs_said: set[str] = set()  # files whose sha256 difference was said
        self._lock = fs.DirLock(self.root)
        self._session: aiohttp.ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._reserved: dict[tuple[str, str], int] = {}  # see `_RESERVED` (set in start())
        self._urls: dict[str, DownloadUrl] = {}
        self._url_lock = asyncio.Lock()  # one download-url call at a time, see `_new_url`
        self._form: Form | None = None  # the download-url form the API took (`state`)
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
        learned = await self.mirror.get_state(FORM_KEY)
        self._form = "GET" if learned == "GET" else "POST" if learned == "POST" else None
        await self.sweep()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S),
            headers={"User-Agent": USER_AGENT},
            auto_decompress=False,  # the bytes as stored, so sizes and hashes compare
        )
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
        if self._session is not None:
            await self._session.close()
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
        jobs = await self._due(free_slots, room)
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

    async def _due(self, limit: int, room: int) -> list[Job]:
        """Queued items due now that fit on disk, newest recordings first."""
        busy = list(self._inflight)
        not_busy = f"AND m.id NOT IN ({','.join('?' * len(busy))})" if busy else ""
        sql, params = queue_query(
            self.media.types,
            "m.id, m.recording_id, m.mime_type, m.file_size_bytes, m.download_attempts, "
            "json_extract(m.raw, '$.sha256'), m.download_error",
            f"AND {_DUE} AND coalesce(m.file_size_bytes, 0) <= ? {not_busy} "
            "ORDER BY r.created_at DESC NULLS LAST, m.recording_id, m.position LIMIT ?",
            project=self.project,
        )
        rows = await self.store.fetchall(sql, (*params, iso(self._clock()), room, *busy, limit))
        return [Job(r[0], r[1], r[2], r[3], int(r[4]), expected_sha256(r[5]), r[6])
                for r in rows]

    async def _check_blocked(self, room: int) -> None:
        """Count the due items that do not fit; say so once when that starts and ends."""
        sql, params = queue_query(self.media.types, "count(*), min(m.file_size_bytes)",
                                  f"AND {_DUE} AND coalesce(m.file_size_bytes, 0) > ?",
                                  project=self.project)
        row = await self.store.fetchone(sql, (*params, iso(self._clock()), room))
        blocked, smallest = (int(row[0]), row[1]) if row else (0, None)
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
        sql, params = queue_query(self.media.types, "min(m.download_next_at)",
                                  project=self.project)
        row = await self.store.fetchone(sql, params)
        if row is None or row[0] is None:
            return IDLE_RECHECK_S
        due = datetime.fromisoformat(str(row[0]).replace("Z", "+00:00"))
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
        except _Failure as f:
            await self._fail(job, f)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug or the database: record it, keep the queue going
            self._log.exception("media.download_error", media_id=job.media_id)
            await self._fail(job, _Failure(f"unexpected {type(e).__name__}: {e}"))

    async def _fetch(self, job: Job) -> None:
        """Adopt a finished file, or download, verify, publish and record it."""
        if await self._adopt(job):
            return
        part = fs.part_path(self.root, job.recording_id, job.media_id)
        url = await self._url(job)
        expected = _expected_size(job, url)
        hasher, size = await self._transfer_with_retries(job, url, part, expected)
        digest = hasher.hexdigest()
        if job.sha256 is not None and digest != job.sha256:
            self._sha256_differs(job, digest, size)
        # the mirror's type names the file; the answer's where the mirror has none (a
        # recording's own file): `.bin` when neither says, or says something unknown
        final = fs.final_path(self.root, job.recording_id, job.media_id,
                              job.mime_type or url.content_type)
        await asyncio.to_thread(fs.publish, part, final)
        await self._commit(job, final, digest, size)

    async def _adopt(self, job: Job) -> bool:
        """Record a file published before a crash, if it checks out; whether it did.

        Only a file that can be checked (a size or a sha256 to compare) is adopted; a
        complete partial file is found by `_transfer`, once the URL says the size.
        """
        if job.size is None and job.sha256 is None:
            return False
        found = await asyncio.to_thread(fs.finals, self.root, job.recording_id, job.media_id)
        fits: list[tuple[Path, str, int]] = []  # the right size; first the one that hashes right
        for path in found:
            if job.size is not None and await asyncio.to_thread(fs.size_of, path) != job.size:
                continue
            hasher, size = await asyncio.to_thread(fs.hash_file, path)
            fits.append((path, hasher.hexdigest(), size))
        fits.sort(key=lambda f: f[1] != job.sha256)
        # botasync published it only after its size checked: without a hash that matches
        # (the object may be an encrypted container), a file of the right size is it
        if fits and (fits[0][1] == job.sha256 or (job.size is not None and len(fits) == 1)):
            await self._commit(job, *fits[0])
            return True
        return False

    def _sha256_differs(self, job: Job, digest: str, size: int) -> None:
        """Say once per file that its bytes do not hash to the API's `content_sha256`."""
        if job.media_id in self._differs_said:
            return
        self._differs_said.add(job.media_id)
        self._log.warning(SHA256_DIFFERS, media_id=job.media_id, recording_id=job.recording_id,
                    bytes=size, sha256=digest, content_sha256=job.sha256,
                    note="kept: the stored object may be an encrypted container")

    async def _transfer_with_retries(
        self, job: Job, url: DownloadUrl, part: Path, expected: int | None
    ) -> tuple[Any, int]:
        """Transfer, renewing a refused URL and resuming a cut connection a few times."""
        renewals = resumes = 0
        while True:
            try:
                return await self._transfer(url, part, expected)
            except _Refused as e:
                self._urls.pop(job.media_id, None)
                renewals += 1
                if renewals > RENEWALS:
                    raise _Failure(f"file URL refused {renewals} times: {e}") from None
                self._log.info("media.url_renewed", media_id=job.media_id, reason=str(e))
                url = await self._url(job)
            except _Dropped as e:
                resumes += 1
                if not e.progressed or resumes > RESUMES:
                    raise _Failure(f"download interrupted: {e}") from None
                self._log.info("media.download_resumed", media_id=job.media_id, reason=str(e))

    async def _transfer(
        self, url: DownloadUrl, part: Path, expected: int | None
    ) -> tuple[Any, int]:
        """One GET of the URL into the part (ranged when a part exists); (hash, size).

        A part already of the expected size (a crash before its rename) needs no GET.
        """
        hasher, offset = await self._resume_point(part, expected)
        if offset and offset == expected:
            return hasher, offset
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        assert self._session is not None
        try:
            async with self._session.get(url.url, headers=headers) as resp:
                offset, hasher, bound = await self._accept(resp, part, offset, hasher, expected)
                return hasher, await self._stream(resp, part, hasher, offset, bound)
        except (aiohttp.ClientError, TimeoutError) as e:
            # before any byte: no progress (a failure); `_stream` reports its own drops
            raise _Dropped(_reason(e, url.url), progressed=False) from None

    async def _resume_point(self, part: Path, expected: int | None) -> tuple[Any, int]:
        """The hash and length of a part to resume; an oversized part is thrown away."""
        have = await asyncio.to_thread(fs.size_of, part)
        if have is None or have == 0 or (expected is not None and have > expected):
            await asyncio.to_thread(fs.start_over, part)
            return hashlib.sha256(), 0
        return await asyncio.to_thread(fs.hash_file, part)

    async def _accept(
        self, resp: aiohttp.ClientResponse, part: Path, offset: int, hasher: Any,
        expected: int | None,
    ) -> tuple[int, Any, int | None]:
        """Check the answer before reading it; (offset the body starts at, hash so far, and
        the size the file must reach: the expected one, else what the server announces)."""
        if resp.status in (401, 403):
            raise _Refused(f"file server answered {resp.status}")
        if resp.status == 416 or (resp.status == 206 and _range_start(
                resp.headers.get("Content-Range")) != offset):
            await asyncio.to_thread(fs.start_over, part)
            raise _Dropped(f"range not served as asked ({resp.status})", progressed=True)
        if resp.status == 200 and offset:  # the server ignores Range: start over
            await asyncio.to_thread(fs.start_over, part)
            offset, hasher = 0, hashlib.sha256()
        elif resp.status not in (200, 206):
            raise _Failure(f"file server answered {resp.status}")
        length = resp.content_length
        if length is None:
            return offset, hasher, expected
        if expected is not None and offset + length != expected:
            raise _Failure(f"wrong size: the file server sends {offset + length} bytes, "
                           f"expected {expected}", discard_part=True)
        return offset, hasher, offset + length

    async def _stream(
        self, resp: aiohttp.ClientResponse, part: Path, hasher: Any, offset: int,
        expected: int | None,
    ) -> int:
        """Copy the body to the part in bounded chunks, hashing as it goes; the final size.

        With no size known at all (neither the API nor the file server says), the file
        is what the server streams.
        """
        got, buf = offset, bytearray()
        try:
            async for chunk in resp.content.iter_chunked(READ_CHUNK):
                got += len(chunk)
                if expected is not None and got > expected:
                    raise _Failure(f"wrong size: more than the expected {expected} bytes",
                                   discard_part=True)
                buf += chunk
                if len(buf) >= FLUSH_BYTES:
                    await self._write(part, buf, hasher)
        except (aiohttp.ClientError, TimeoutError) as e:
            await self._write(part, buf, hasher)  # keep what arrived: the resume starts after it
            raise _Dropped(_reason(e, str(resp.url)), progressed=got > offset) from None
        await self._write(part, buf, hasher)
        if expected is not None and got != expected:
            raise _Failure(f"wrong size: received {got} bytes, expected {expected}",
                           discard_part=True)
        return got

    async def _write(self, part: Path, buf: bytearray, hasher: Any) -> None:
        if not buf:
            return
        data = bytes(buf)
        buf.clear()
        await asyncio.to_thread(fs.append, part, data, hasher)
        self.stats.bytes += len(data)
        if self.on_progress:
            self.on_progress(self.stats)

    # --- the URL ---------------------------------------------------------------------

    async def _url(self, job: Job) -> DownloadUrl:
        """A pre-signed URL for the item: the cached one while it is fresh, else a new one."""
        cached = self._urls.get(job.media_id)
        expires = _expires(cached) if cached else None
        if cached and expires and expires - self._clock() > timedelta(seconds=URL_MARGIN_S):
            return cached
        url = await self._new_url(job)
        self._urls[job.media_id] = url
        return url

    async def _new_url(self, job: Job) -> DownloadUrl:
        """Ask the API for a URL, one call at a time, in the form it speaks.

        The learned form first (else the row's: see `first_form`); a 405, or a 404 while
        nothing is learned, gets one try of the other form. What the answers show is
        remembered in the `state` table.
        """
        async with self._url_lock:
            first = first_form(self._form, job.media_id)
            tried: list[tuple[Form, int]] = []
            errors: list[ApiError] = []
            for form in (first, other_form(first)):
                try:
                    url = await self._ask(form, job)
                except ApiError as e:
                    tried.append((form, e.status or 0))
                    errors.append(e)
                    if form == first and try_other(self._form, e.status):
                        continue
                    break
                tried.append((form, 200))
                await self._remember(learned_form(tried))
                return url
            await self._remember(learned_form(tried))
        # the error of the form the API has (its 404), not of the one it refused (405)
        err = next((e for e in errors if e.status != 405), errors[-1])
        if isinstance(err, AuthError):
            self._log.error("media.auth_failed", error=str(err))
        raise _Failure(f"download-url: {err}")

    async def _ask(self, form: Form, job: Job) -> DownloadUrl:
        """One download-url call in `form`; a recording's own file sends no media id.

        It waits for the download budget (30 a minute) first, so the call does not sit on
        a slot of the overall budget, which the metadata sync needs, while it is full.
        """
        budget = self.client.download_budget
        delay = budget.delay() if budget is not None else 0.0
        if 0 < delay < math.inf:
            await asyncio.sleep(delay)
        if form == "GET":
            return await self.client.get_download_url(job.recording_id)
        media_id = job.media_id if fs.MEDIA_ID_RE.fullmatch(job.media_id) else None
        return await self.client.create_download_url(job.recording_id, media_id)

    async def _remember(self, form: Form | None) -> None:
        """Keep the form the API speaks, in memory and in the database, when it is news."""
        if form is None or form == self._form:
            return
        self._log.info("media.download_form", form=form, previous=self._form)
        self._form = form
        await self.mirror.set_state(FORM_KEY, form)

    # --- bookkeeping -----------------------------------------------------------------

    async def _commit(self, job: Job, final: Path, sha256: str, size: int) -> None:
        """Record the file and emit `media.downloaded` in one transaction, then notify.

        Shielded: a shutdown while it runs still records a file already in place.
        """
        landed = await asyncio.shield(self._record(job, final, sha256, size))
        self._urls.pop(job.media_id, None)
        if not landed:  # the item was removed while it downloaded: so goes its file
            await asyncio.to_thread(fs.remove, final)
            self._log.info("media.file_removed", media_id=job.media_id, reason="media removed")
            return
        self.stats.files += 1
        if self.on_progress:
            self.on_progress(self.stats)
        self._log.info("media.downloaded", media_id=job.media_id, recording_id=job.recording_id,
                 bytes=size, path=str(final))
        self.on_commit()

    async def _record(self, job: Job, final: Path, sha256: str, size: int) -> bool:
        now_dt = self._clock()
        now = iso(now_dt)
        async with self.store.transaction() as conn:
            cur = await conn.execute(
                "UPDATE media SET local_path = ?, local_size_bytes = ?, sha256 = ?, "
                "downloaded_at = ?, download_attempts = 0, download_error = NULL, "
                "download_next_at = NULL WHERE project = ? AND id = ? AND recording_id = ?",
                (str(final), size, sha256, now, self.project, job.media_id, job.recording_id),
            )
            if cur.rowcount == 0:
                return False
            async with conn.execute(
                f"SELECT r.raw, m.raw FROM {JOIN_SQL} WHERE m.project = ? AND m.id = ?",  # noqa: S608
                (self.project, job.media_id),
            ) as c:
                row = await c.fetchone()
            assert row is not None
            item = {**loads(row[1]), "local_path": str(final), "sha256": sha256}
            make = EventFactory(lambda: self._ids.new(now_dt), now, self.project)
            event = make.make(MEDIA_DOWNLOADED, loads(row[0]), {}, media=item)
            await insert_events(conn, [event])
        return True

    async def _fail(self, job: Job, f: _Failure) -> None:
        """Write the failure on the row: retry later with backoff, or give up."""
        if f.discard_part:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(
                    fs.remove, fs.part_path(self.root, job.recording_id, job.media_id))
        attempts = job.attempts + (1 if f.count else 0)
        gave_up = f.count and attempts >= self._max_attempts
        delay = f.retry_in if f.retry_in is not None else backoff_delay(
            attempts - 1, base=self._retry[0], cap=self._retry[1], rand=self._rand)
        next_at = None if gave_up else iso(self._clock() + timedelta(seconds=delay))
        try:
            async with self.store.transaction() as conn:
                await conn.execute(
                    "UPDATE media SET download_attempts = ?, download_error = ?, "
                    "download_next_at = ? WHERE project = ? AND id = ?",
                    (attempts, f.reason, next_at, self.project, job.media_id),
                )
        except BotasyncError as e:
            self._log.error("media.bookkeeping_failed", media_id=job.media_id, error=str(e))
        self.stats.failures += 1
        self.stats.gave_up += int(gave_up)
        if gave_up:
            self._log.error("media.download_gave_up", media_id=job.media_id, attempts=attempts,
                      error=f.reason)
            return
        self._log.warning("media.download_failed", media_id=job.media_id,
                    recording_id=job.recording_id, attempt=attempts, error=f.reason,
                    retry_in_s=round(delay, 1))

    # --- orphans ---------------------------------------------------------------------

    async def sweep(self) -> int:
        """Remove files whose media item is gone, and stale partial files; how many."""
        self._dirty = False
        self._last_sweep = time.monotonic()
        found = await asyncio.to_thread(fs.scan, self.root)
        if not found:
            return 0
        recordings, media = await self._owners({f.recording_id for f in found})
        doomed = orphans(found, recordings, media, busy=set(self._inflight))
        for f, reason in doomed:
            await asyncio.to_thread(fs.remove, f.path)
            await asyncio.to_thread(fs.remove_dir_if_empty, f.path.parent)
            self._log.info("media.file_removed", media_id=f.media_id, recording_id=f.recording_id,
                     reason=reason)
        return len(doomed)

    async def _owners(
        self, recording_ids: Iterable[str]
    ) -> tuple[dict[str, bool], dict[str, tuple[str, str | None]]]:
        """recording id -> tombstoned; media id -> (recording id, local_path)."""
        recordings: dict[str, bool] = {}
        media: dict[str, tuple[str, str | None]] = {}
        ids = sorted(recording_ids)
        for i in range(0, len(ids), _CHUNK_IDS):
            chunk = ids[i : i + _CHUNK_IDS]
            marks = ",".join("?" * len(chunk))
            rec_sql = "SELECT id, deleted_at FROM recordings WHERE project = ? "
            rec_sql += f"AND id IN ({marks})"
            for r in await self.store.fetchall(rec_sql, (self.project, *chunk)):
                recordings[r[0]] = r[1] is not None
            med_sql = "SELECT id, recording_id, local_path FROM media WHERE project = ? "
            med_sql += f"AND recording_id IN ({marks})"
            for m in await self.store.fetchall(med_sql, (self.project, *chunk)):
                media[m[0]] = (m[1], m[2])
        return recordings, media


def orphans(
    found: Iterable[fs.FoundFile],
    recordings: Mapping[str, bool],
    media: Mapping[str, tuple[str, str | None]],
    *,
    busy: set[str],
) -> list[tuple[fs.FoundFile, str]]:
    """Which files on disk to remove, and why (pure).

    A file of a recording the mirror does not know is left alone (a rebuilt database
    adopts it again); a tombstoned recording keeps its files until `prune --deleted`.
    """
    out: list[tuple[fs.FoundFile, str]] = []
    for f in found:
        tombstoned = recordings.get(f.recording_id)
        owner = media.get(f.media_id)
        if tombstoned is None or f.media_id in busy:
            continue
        if owner is None or owner[0] != f.recording_id:
            if not tombstoned:
                out.append((f, "media removed remotely"))
        elif f.is_part and tombstoned:
            out.append((f, "recording deleted before its download finished"))
        elif f.is_part and owner[1] is not None:
            out.append((f, "stale partial download"))
        elif not f.is_part and owner[1] is not None and _superseded(f.path, Path(owner[1])):
            out.append((f, "superseded by a file of another type"))
    return out


def _superseded(path: Path, recorded: Path) -> bool:
    """Another name in the same directory is the recorded file (the mime type changed).

    A recorded path in another directory (files_dir moved) says nothing about this one.
    """
    return recorded.parent == path.parent and recorded.name != path.name
