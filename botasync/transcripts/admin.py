"""What `botasync transcripts status | download | retry` do, as plain data.

Status reads the database only (no API request, no key). The ETA comes from the
budget, not from a measured pace: every queued recording costs at least one request
to the transcription endpoints (two with summaries), and those allow 10 a minute, so
a backfill of 100,000 recordings takes about a week whatever the network does.

Everything here is one project's (`project`, or the project of the Config view given):
its queue, its transcripts, its budget. Each project has its own key and so its own 10
a minute: `download_projects` runs several side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from botasync import config
from botasync.api.client import BotaClient
from botasync.config import DEFAULT_PROJECT, Config, TranscriptsConfig
from botasync.envelope import iso, utc_now
from botasync.store import open_existing, open_store
from botasync.store import transcript_queue as queue
from botasync.store.base import Database
from botasync.transcripts.fetcher import FetchStats, TranscriptFetcher

GAVE_UP_SHOWN = 10  # given-up recordings listed by `transcripts status`


def requests_per_recording(summaries: bool) -> int:
    """The fewest requests one queued recording costs: its transcription, its summaries."""
    return 2 if summaries else 1


def eta_seconds(recordings: int, requests_per_minute: int, summaries: bool) -> float:
    """Seconds the queue needs at the budget's pace (pure)."""
    return max(0, recordings) * requests_per_recording(summaries) * 60.0 / requests_per_minute


def human_duration(seconds: float) -> str:
    """`40 s`, `17 min`, `5 h`, `7 days`: rounded, for an estimate."""
    if seconds < 90:
        return f"{round(seconds)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"


def eta_text(recordings: int, requests_per_minute: int, summaries: bool) -> str:
    """`100,000 at 10 a minute: about 7 days` (with summaries, two requests each)."""
    each = " (2 requests each)" if summaries else ""
    seconds = eta_seconds(recordings, requests_per_minute, summaries)
    return (f"{recordings:,}{each} at {requests_per_minute} a minute: "
            f"about {human_duration(seconds)}")


async def transcripts_status(
    store: Database, cfg: TranscriptsConfig, project: str = DEFAULT_PROJECT,
) -> dict[str, Any]:
    """The project's done, queued and failed transcripts, and how long its queue takes at
    the budget."""
    async with store.read() as conn:
        turned_on = await queue.settings(conn, project)
        q = await queue.counts(conn, project, iso(utc_now()))
        gave_up = await queue.gave_up_items(conn, project, GAVE_UP_SHOWN)
        row = await _one(conn, (
            "SELECT count(DISTINCT recording_id), count(*), "
            "coalesce(sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0), "
            "coalesce(sum(CASE WHEN status NOT IN ('completed', 'failed') THEN 1 ELSE 0 END), 0) "
            "FROM transcriptions WHERE project = ?"), project)
        segments = await _one(
            conn, "SELECT count(*) FROM transcript_segments WHERE project = ?", project)
        sums = await _one(conn, "SELECT count(*), "
                                "coalesce(sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0) "
                                "FROM summaries WHERE project = ?", project)
    rpm, summaries = cfg.requests_per_minute, cfg.summaries
    return {
        "project": project, "download": cfg.download, "summaries": summaries,
        "requests_per_minute": rpm,
        "enabled_at": turned_on.enabled_at if turned_on else None,
        "done": {"recordings": row[0], "transcriptions": row[1], "segments": segments[0],
                 "summaries": sums[0]},
        "queued": {"recordings": q["queued"], "due": q["due"], "waiting": q["waiting"],
                   "eta_s": round(eta_seconds(q["queued"], rpm, summaries)),
                   "eta": eta_text(q["queued"], rpm, summaries)},
        "in_progress": {"transcriptions": row[3]},
        "failed": {"transcriptions": row[2], "summaries": sums[1]},
        "gave_up": {"recordings": q["gave_up"], "items": gave_up},
    }


async def _one(conn: Any, sql: str, project: str) -> tuple[int, ...]:
    async with conn.execute(sql, (project,)) as cur:
        row = await cur.fetchone()
    return tuple(int(x or 0) for x in row)


async def retry_gave_up(store: Database, project: str = DEFAULT_PROJECT) -> int:
    """Put the project's recordings whose fetch gave up back in its queue."""
    async with store.transaction() as conn:
        return await queue.retry_gave_up(conn, project)


@dataclass(frozen=True)
class DownloadReport:
    """What `transcripts download` did for one project, and whether its queue drained."""

    recordings: int
    done: int
    transcriptions: int
    segments: int
    summaries: int
    events: int
    requests: int
    failures: int
    drained: bool
    project: str = DEFAULT_PROJECT


def total_stats(stats: Sequence[FetchStats]) -> FetchStats:
    """Several fetchers' stats added up, field by field (pure)."""
    return FetchStats(**{f.name: sum(getattr(s, f.name) for s in stats)
                         for f in fields(FetchStats)})


async def download_now(
    cfg: Config, *, within_s: float, limit: int | None = None,
    on_progress: Callable[[FetchStats], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> DownloadReport:
    """Run the queue of `cfg`'s project (a view: `cfg.project`) now, until nothing is due
    (or `limit` recordings, or `within_s`), whatever `download` says; turning transcripts on
    for the project. `on_start` gets the project's status once its fetcher has started."""
    (report,) = await download_projects(
        cfg, [cfg.project], within_s=within_s, limit=limit, on_progress=on_progress,
        on_start=(lambda statuses: on_start(statuses[0])) if on_start else None)
    return report


async def download_projects(
    cfg: Config, projects: Sequence[str], *, within_s: float, limit: int | None = None,
    on_progress: Callable[[FetchStats], None] | None = None,
    on_start: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[DownloadReport]:
    """Run these projects' queues now, side by side (each with its own key and budgets),
    until nothing is due (or `limit` recordings of each, or `within_s`); one report each.

    Every key is checked and every project's lock taken before any request is sent.
    `on_progress` gets the fetchers' stats added up; `on_start` each project's status once
    they have all started.
    """
    views = [cfg.for_project(name) for name in projects]
    for view in views:
        config.require_key(view)
    tcfg = cfg.transcripts.model_copy(update={"download": True})
    stats = {view.project: FetchStats() for view in views}

    def progress(project: str) -> Callable[[FetchStats], None] | None:
        if on_progress is None:
            return None

        def report(s: FetchStats) -> None:
            stats[project] = s
            on_progress(total_stats(list(stats.values())))

        return report

    async with await open_store(cfg.database) as store, \
            contextlib.AsyncExitStack() as stack:
        fetchers: list[TranscriptFetcher] = []
        for view in views:
            client = await stack.enter_async_context(BotaClient.for_project(
                view.api, view.project, transcripts_per_minute=tcfg.requests_per_minute))
            fetchers.append(await stack.enter_async_context(TranscriptFetcher(
                store, client, tcfg, max_recordings=limit, on_progress=progress(view.project),
                project=view.project)))
        for fetcher in fetchers:
            await fetcher.start()
        if on_start:
            on_start([await transcripts_status(store, tcfg, f.project) for f in fetchers])
        drained = await asyncio.gather(*(f.drain(within_s) for f in fetchers))
        return [DownloadReport(s.recordings, s.done, s.transcriptions, s.segments, s.summaries,
                               s.events, s.requests, s.failures, ok, f.project)
                for f, ok in zip(fetchers, drained, strict=True) for s in (f.stats,)]


async def with_store(cfg: Config, fn: Callable[[Database], Any], *, readonly: bool = True) -> Any:
    """Open the configured database (which must exist) for one library call."""
    async with await open_existing(cfg.database, readonly=readonly) as store:
        return await fn(store)
