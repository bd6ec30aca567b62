"""The transcript queue's worker: fetch queued recordings' transcripts, patiently, in budget.

One runner task picks due recordings (newest first) from `transcript_queue` and keeps up
to `concurrency` of them in flight. For each it asks the API for the transcriptions the
recording has: by the `transcription_id` it names (the documented dialect) or by
`GET /transcriptions?recording_id=` (the deployed one), then, with `summaries = true`,
each completed transcription's summaries (by its `summary_id`, or by
`GET /summaries?transcription_id=`). What it found is written in one transaction with
its events and the queue row's fate (`transcripts.store.write`): the recording leaves
the queue when everything is terminal, or comes back with a backoff while a
transcription is still pending or processing. A failed fetch is retried with backoff
and given up after `max_attempts`.

Every request passes the transcripts budget (`[transcripts] requests_per_minute`, the
server's 10 a minute for these endpoints) and the overall one; the worker waits until
both have room before it asks, so it never queues on the overall budget ahead of the
recordings sync. It only reads the mirror the sync writes, from its own task.

A fetcher is one project's (`project`, the `[[projects]]` name): it reads and writes that
project's queue and transcripts alone, with that project's client and budgets (each key
has its own 10 a minute). The service runs one per project.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import structlog

from botasync.api.budget import RequestBudget
from botasync.api.client import BotaClient, Page
from botasync.api.transcription import (
    InvalidObject,
    Summary,
    Transcription,
    parse_summary,
    parse_transcription,
)
from botasync.backoff import backoff_delay
from botasync.config import TranscriptsConfig
from botasync.envelope import DEFAULT_PROJECT, EventIds, iso, utc_now
from botasync.errors import ApiError, AuthError, BotasyncError, NotFound
from botasync.lifecycle import AsyncClosing, wait_set
from botasync.locks import ExclusiveLock
from botasync.store import transcript_queue as queue
from botasync.store import transcripts as tstore
from botasync.store.base import Database

LOGGER = "botasync.transcripts"
log = structlog.get_logger(LOGGER)

MAX_ATTEMPTS = 10  # failed fetches before a recording is given up (`transcripts status`)
MAX_POLLS = 100  # checks of a transcription that stays pending before it is given up
POLL_BASE_S = 60.0  # a pending transcription is asked again after this, doubling ...
POLL_MAX_S = 3600.0  # ... up to an hour
RETRY_BASE_S = 30.0
RETRY_MAX_S = 3600.0
IDLE_RECHECK_S = 60.0  # with nothing due, look again this often even without a notify
ERROR_PAUSE_S = 1.0  # after an unexpected error (the database), before trying again
BUDGET_NAP_S = 5.0  # the longest sleep while a budget is full (a shutdown ends it sooner)
RESERVE_NAP_S = 0.25  # while the sync's reserve is all that is free: look again this soon
MAX_PAGES = 100  # pages of one recording's transcriptions (or summaries) before giving up
# the share of the overall budget left free for the sync: the worker sends nothing while
# fewer slots than this are free, so a tick never waits behind a transcript backlog
SYNC_RESERVE_SHARE = 0.1

Clock = Callable[[], datetime]
T = TypeVar("T")


def lock_for(db: str | Path, project: str = DEFAULT_PROJECT) -> ExclusiveLock:
    """One transcript worker per project of a database: two would spend its 10 a minute
    twice. The project `default` keeps the lock file it always had."""
    path = Path(db)
    own = "" if project == DEFAULT_PROJECT else f".{project}"
    of = "" if project == DEFAULT_PROJECT else f" (project {project})"
    return ExclusiveLock(path.with_name(f"{path.name}.transcripts{own}.lock"),
                         f"another botasync process is fetching transcripts for {path}{of}")


@dataclass
class FetchStats:
    """What this worker did since it started (for progress bars and logs)."""

    recordings: int = 0  # recordings fetched and written
    done: int = 0  # of them, those that left the queue (everything terminal)
    transcriptions: int = 0  # transcription rows written
    segments: int = 0
    replaced: int = 0
    summaries: int = 0
    events: int = 0
    requests: int = 0
    failures: int = 0
    gave_up: int = 0
    in_flight: int = 0


def sync_reserve(limit: int | None) -> int:
    """Slots of an overall budget of `limit` a minute that the worker leaves to the sync."""
    return 0 if not limit else max(1, math.ceil(limit * SYNC_RESERVE_SHARE))


def room_wait(overall: RequestBudget, share: RequestBudget | None) -> float:
    """Seconds before the worker may send (0: now; a guess when only time frees a slot)."""
    wait = max(overall.delay(), share.delay() if share is not None else 0.0)
    if overall.limit and overall.limit - overall.used() <= sync_reserve(overall.limit):
        wait = max(wait, RESERVE_NAP_S)
    return wait


class _Failure(Exception):
    """A fetch that did not work: recorded on the queue row, retried later."""


class TranscriptFetcher(AsyncClosing):
    """Mirrors transcripts: `start()`, `notify()` after a sync commit, `drain()`, `aclose()`.

    With `[transcripts] download = false` it does nothing (every method returns at
    once), so it can be wired in unconditionally. `max_recordings` stops it taking new
    recordings after that many (`botasync transcripts download --limit N`). `project`:
    whose queue it works (`cfg.project` of the view the client was built from).
    """

    def __init__(
        self,
        store: Database,
        client: BotaClient,
        cfg: TranscriptsConfig,
        *,
        on_commit: Callable[[], None] | None = None,
        on_progress: Callable[[FetchStats], None] | None = None,
        clock: Clock = utc_now,
        rand: Callable[[], float] = random.random,
        max_recordings: int | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        max_polls: int = MAX_POLLS,
        poll: tuple[float, float] = (POLL_BASE_S, POLL_MAX_S),
        retry: tuple[float, float] = (RETRY_BASE_S, RETRY_MAX_S),
        project: str = DEFAULT_PROJECT,
    ) -> None:
        self.store = store
        self.client = client
        self.cfg = cfg
        self.project = project
        self.on_commit = on_commit or (lambda: None)
        self.on_progress = on_progress
        self.stats = FetchStats()
        self._clock = clock
        self._rand = rand
        self._max_recordings = max_recordings
        self._max_attempts = max_attempts
        self._max_polls = max_polls
        self._poll = poll
        self._retry = retry
        self._ids = EventIds()
        self._lock = lock_for(store.path, project)
        self._log = structlog.get_logger(LOGGER, project=project)  # lazy, as `log` is
        self._runner: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._started_jobs = 0
        self._next_refresh_look = -math.inf
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = asyncio.Event()
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Take the database's transcript lock, turn transcripts on (queueing what is
        stored, the first time), and start the queue runner."""
        if not self.cfg.download or self._runner is not None:
            return
        if self._closed:
            raise BotasyncError("the transcript fetcher is closed")
        await asyncio.to_thread(self._lock.acquire)
        try:
            async with self.store.transaction() as conn:
                queued = await queue.enable(conn, self.project, iso(self._clock()),
                                            summaries=self.cfg.summaries)
        except BaseException:
            self._lock.release()
            raise
        if queued:
            self._log.info("transcripts.backfill_queued", recordings=queued)
        self._idle.clear()
        self._runner = asyncio.create_task(self._run(), name=f"botasync-transcripts-{self.project}")
        self._log.info("transcripts.started", concurrency=self.cfg.concurrency,
                 requests_per_minute=self.cfg.requests_per_minute,
                 summaries=self.cfg.summaries)

    def notify(self) -> None:
        """The sync committed: recordings may have been queued."""
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
        """Stop: fetches in flight get `grace_s` to finish, the rest stay queued."""
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
        self._lock.release()
        self._idle.set()

    # --- the runner ------------------------------------------------------------------

    async def _run(self) -> None:
        """Start what is due, then sleep until a notify, a finished fetch or a poll."""
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a notify from now on is not lost
            try:
                started, wait = await self._tick()
            except Exception as e:  # the database; keep the runner alive and look again
                self._log.error("transcripts.queue_error", error=str(e) or type(e).__name__)
                started, wait = 0, ERROR_PAUSE_S
            if self._wake.is_set() or self._stop.is_set():
                continue
            if not started and not self._inflight:
                self._idle.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _tick(self) -> tuple[int, float]:
        """Start fetches into free slots; (started, seconds to sleep)."""
        free = self.cfg.concurrency - len(self._inflight)
        if self._max_recordings is not None:
            free = min(free, self._max_recordings - self._started_jobs)
        if free <= 0 or self._stop.is_set():
            return 0, IDLE_RECHECK_S
        async with self.store.read(background=True) as conn:
            jobs = await queue.due(conn, self.project, iso(self._clock()), free,
                                   list(self._inflight))
        if len(jobs) < free and await self._refresh(free - len(jobs)):
            async with self.store.read(background=True) as conn:
                busy = [*self._inflight, *(j.recording_id for j in jobs)]
                jobs += await queue.due(conn, self.project, iso(self._clock()),
                                        free - len(jobs), busy)
        async with self.store.read(background=True) as conn:
            next_at = await queue.next_due_at(conn, self.project)
        for job in jobs:
            self._spawn(job)
        return len(jobs), self._sleep_until(next_at)

    async def _refresh(self, room: int) -> int:
        """With room to spare, queue the finished recordings whose transcriptions were last
        fetched `refresh_every_s` ago (see `queue.refresh`); at most one look a while."""
        every = self.cfg.refresh_every_s
        if not every or time.monotonic() < self._next_refresh_look:
            return 0
        now = self._clock()
        async with self.store.transaction(background=True) as conn:
            added = await queue.refresh(conn, self.project, iso(now - timedelta(seconds=every)),
                                        iso(now), room)
        if not added:  # nothing stale: look again later (a fetch only makes it fresher)
            self._next_refresh_look = time.monotonic() + min(every, IDLE_RECHECK_S)
        return added

    def _idle_recheck_s(self) -> float:
        every = self.cfg.refresh_every_s
        return min(IDLE_RECHECK_S, max(every, 0.05)) if every else IDLE_RECHECK_S

    def _sleep_until(self, when: str | None) -> float:
        if when is None:
            return self._idle_recheck_s()
        due = datetime.fromisoformat(when.replace("Z", "+00:00"))
        return min(max((due - self._clock()).total_seconds(), 0.01), self._idle_recheck_s())

    def _spawn(self, job: queue.Job) -> None:
        task = asyncio.create_task(
            self._job(job), name=f"botasync-transcript-{self.project}-{job.recording_id}")
        self._inflight[job.recording_id] = task
        self._started_jobs += 1
        self.stats.in_flight = len(self._inflight)
        task.add_done_callback(lambda _t: self._done(job.recording_id))

    def _done(self, recording_id: str) -> None:
        self._inflight.pop(recording_id, None)
        self.stats.in_flight = len(self._inflight)
        self._wake.set()

    # --- one recording ---------------------------------------------------------------

    async def _job(self, job: queue.Job) -> None:
        """Fetch and write one recording's transcripts; a failure is recorded, never raised."""
        try:
            fetched = await self._fetch(job)
        except asyncio.CancelledError:
            raise
        except _Failure as f:
            await self._fail(job, str(f))
            return
        except Exception as e:  # a bug: record it, keep the queue going
            self._log.exception("transcripts.fetch_error", recording_id=job.recording_id)
            await self._fail(job, f"unexpected {type(e).__name__}: {e}")
            return
        await asyncio.shield(self._commit(job, fetched))

    async def _fetch(self, job: queue.Job) -> tstore.Fetched:
        """Ask the API for what the recording has now, in the form its dialect offers."""
        try:
            if job.by_id:
                found = await self._by_id(job)
            else:
                found = await self._listed(job.recording_id)
            fetched = tstore.Fetched(job.recording_id, found)
            if self.cfg.summaries:
                for t in found:
                    if t.status == "completed":
                        fetched.summaries[t.id] = await self._summaries(t)
        except AuthError as e:
            self._log.error("transcripts.auth_failed", error=str(e))
            raise _Failure(str(e)) from None
        except ApiError as e:
            raise _Failure(str(e)) from None
        except InvalidObject as e:
            raise _Failure(f"the API sent {e}") from None
        return fetched

    async def _by_id(self, job: queue.Job) -> list[Transcription]:
        """The transcription the recording names (documented); none when it names none."""
        if job.transcription_id is None:
            return []
        try:
            raw = await self._ask(self.client.get_transcription, job.transcription_id)
        except NotFound:
            raise _Failure(
                f"transcription {job.transcription_id} not found (404): replaced? the next "
                "sync of its recording names the new one") from None
        t = parse_transcription(raw)
        if t.recording_id not in (None, job.recording_id):
            raise _Failure(f"transcription {t.id} belongs to {t.recording_id}")
        return [t]

    async def _listed(self, recording_id: str) -> list[Transcription]:
        """Every transcription the list shows for the recording (deployed), page by page."""
        out: list[Transcription] = []
        for item in await self._walk(
                lambda cursor: self.client.list_transcriptions(recording_id, cursor)):
            try:
                t = parse_transcription(item)
            except InvalidObject as e:
                self._log.warning("transcripts.invalid_item", recording_id=recording_id,
                                  reason=str(e))
                continue
            if t.recording_id in (None, recording_id):
                out.append(t)
        return out

    async def _summaries(self, t: Transcription) -> list[Summary]:
        """A completed transcription's summaries: by its `summary_id` where it links one
        (documented), else by the list (deployed; none where the API has no list)."""
        if t.links_summary:
            if t.summary_id is None:
                return []
            return [parse_summary(await self._ask(self.client.get_summary, t.summary_id))]
        try:
            items = await self._walk(lambda cursor: self.client.list_summaries(t.id, cursor))
        except NotFound:
            return []
        out: list[Summary] = []
        for item in items:
            try:
                out.append(parse_summary(item))
            except InvalidObject as e:
                self._log.warning("transcripts.invalid_summary", transcription_id=t.id,
                                  reason=str(e))
        return out

    async def _walk(self, page: Callable[[str | None], Awaitable[Page]]) -> list[Any]:
        """The items of every page of a cursor list; a cursor seen twice stops it."""
        items: list[Any] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            answer = await self._ask(page, cursor)
            items += answer.items
            if not answer.has_more or answer.next_cursor is None:
                return items
            if answer.next_cursor in seen:
                raise _Failure("the list's pages do not chain (a cursor came twice)")
            seen.add(answer.next_cursor)
            cursor = answer.next_cursor
        raise _Failure(f"more than {MAX_PAGES} pages")

    async def _ask(self, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """One API call, once both budgets have room (see the module's docstring)."""
        await self._budget_room()
        self.stats.requests += 1
        return await call(*args)

    async def _budget_room(self) -> None:
        """Wait until the transcripts budget would start a request and the overall one has
        more than the sync's reserve free: waiting in the overall budget's queue, or taking
        its last slots, would hold back the sync."""
        while True:
            wait = room_wait(self.client.budget, self.client.transcripts_budget)
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, BUDGET_NAP_S) if math.isfinite(wait) else 0.05)

    # --- bookkeeping -----------------------------------------------------------------

    async def _commit(self, job: queue.Job, fetched: tstore.Fetched) -> None:
        """Write what was fetched, its events and the queue row's fate in one transaction."""
        now_dt = self._clock()
        now = iso(now_dt)
        polls = job.attempts + 1
        try:
            async with self.store.transaction(background=True) as conn:
                written = await tstore.write(
                    conn, fetched, now=now, new_id=lambda: self._ids.new(now_dt),
                    backfill=job.reason == queue.BACKFILL, project=self.project)
                if written.done:
                    await queue.finish(conn, job)
                elif polls >= self._max_polls:
                    await queue.again(conn, job, None, f"not finished after {polls} checks",
                                      polls)
                else:
                    await queue.again(conn, job, self._after(polls - 1, self._poll), None, polls)
        except BotasyncError as e:
            self._log.error("transcripts.write_failed", recording_id=job.recording_id, error=str(e))
            self.stats.failures += 1
            return
        self._count(written)
        (self._log.info if written.events or written.replaced else self._log.debug)(
            "transcripts.fetched", recording_id=job.recording_id,
            transcriptions=len(fetched.transcriptions), written=written.transcriptions,
            segments=written.segments, replaced=written.replaced, events=len(written.events),
            done=written.done)
        if written.events:
            self.on_commit()

    def _count(self, written: tstore.Written) -> None:
        s = self.stats
        s.recordings += 1
        s.done += int(written.done)
        s.transcriptions += written.transcriptions
        s.segments += written.segments
        s.replaced += len(written.replaced)
        s.summaries += written.summaries
        s.events += len(written.events)
        if self.on_progress:
            self.on_progress(s)

    def _after(self, attempt: int, schedule: tuple[float, float]) -> str:
        delay = backoff_delay(attempt, base=schedule[0], cap=schedule[1], rand=self._rand)
        return iso(self._clock() + timedelta(seconds=delay))

    async def _fail(self, job: queue.Job, reason: str) -> None:
        """Write the failure on the queue row: retry later with backoff, or give up."""
        attempts = job.attempts + 1
        gave_up = attempts >= self._max_attempts
        next_at = None if gave_up else self._after(attempts - 1, self._retry)
        try:
            async with self.store.transaction(background=True) as conn:
                await queue.again(conn, job, next_at, reason, attempts)
        except BotasyncError as e:
            self._log.error("transcripts.bookkeeping_failed", recording_id=job.recording_id,
                      error=str(e))
        self.stats.failures += 1
        self.stats.gave_up += int(gave_up)
        if self.on_progress:
            self.on_progress(self.stats)
        (self._log.error if gave_up else self._log.warning)(
            "transcripts.gave_up" if gave_up else "transcripts.fetch_failed",
            recording_id=job.recording_id, attempt=attempts, error=reason)
