"""What `botasync transcripts status | download | retry` do, as plain data.

Status reads the database only (no API request, no key). The ETA comes from the
budget, not from a measured pace: every queued recording costs at least one request
to the transcription endpoints (two with summaries), and those allow 10 a minute, so
a backfill of 100,000 recordings takes about a week whatever the network does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botasync import config
from botasync.api.budget import RequestBudget
from botasync.api.client import BotaClient
from botasync.config import Config, TranscriptsConfig
from botasync.envelope import iso, utc_now
from botasync.errors import BotasyncError
from botasync.store import transcript_queue as queue
from botasync.store.sqlite import Store
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


async def transcripts_status(store: Store, cfg: TranscriptsConfig) -> dict[str, Any]:
    """Done, queued and failed transcripts, and how long the queue takes at the budget."""
    async with store.read() as conn:
        turned_on = await queue.settings(conn)
        q = await queue.counts(conn, iso(utc_now()))
        gave_up = await queue.gave_up_items(conn, GAVE_UP_SHOWN)
        row = await _one(conn, (
            "SELECT count(DISTINCT recording_id), count(*), coalesce(sum(status = 'failed'), 0), "
            "coalesce(sum(status NOT IN ('completed', 'failed')), 0) FROM transcriptions"))
        segments = await _one(conn, "SELECT count(*) FROM transcript_segments")
        sums = await _one(conn, "SELECT count(*), coalesce(sum(status = 'failed'), 0) "
                                "FROM summaries")
    rpm, summaries = cfg.requests_per_minute, cfg.summaries
    return {
        "download": cfg.download, "summaries": summaries, "requests_per_minute": rpm,
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


async def _one(conn: Any, sql: str) -> tuple[int, ...]:
    async with conn.execute(sql) as cur:
        row = await cur.fetchone()
    return tuple(int(x or 0) for x in row)


async def retry_gave_up(store: Store) -> int:
    """Put the recordings whose fetch gave up back in the queue."""
    async with store.transaction() as conn:
        return await queue.retry_gave_up(conn)


@dataclass(frozen=True)
class DownloadReport:
    """What `transcripts download` did, and whether the queue drained."""

    recordings: int
    done: int
    transcriptions: int
    segments: int
    summaries: int
    events: int
    requests: int
    failures: int
    drained: bool


async def download_now(
    cfg: Config, *, within_s: float, limit: int | None = None,
    on_progress: Callable[[FetchStats], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> DownloadReport:
    """Run the transcript queue now, until nothing is due (or `limit` recordings, or
    `within_s`), whatever `download` says; turning transcripts on for the database."""

    config.require_key(cfg)
    tcfg = cfg.transcripts.model_copy(update={"download": True})
    async with await Store.open(cfg.database.path) as store:
        client = BotaClient(
            cfg.api, budget=RequestBudget(cfg.api.requests_per_minute),
            transcripts_budget=RequestBudget(tcfg.requests_per_minute),
            backoff_base=cfg.api.retry_base_s, backoff_cap=cfg.api.retry_max_s)
        fetcher = TranscriptFetcher(store, client, tcfg, max_recordings=limit,
                                    on_progress=on_progress)
        async with client, fetcher:
            await fetcher.start()
            if on_start:
                on_start(await transcripts_status(store, tcfg))
            drained = await fetcher.drain(within_s)
            s = fetcher.stats
        return DownloadReport(s.recordings, s.done, s.transcriptions, s.segments, s.summaries,
                              s.events, s.requests, s.failures, drained)


async def with_store(cfg: Config, fn: Callable[[Store], Any], *, readonly: bool = True) -> Any:
    """Open the configured database (which must exist) for one library call."""
    if not Path(cfg.database.path).exists():
        raise BotasyncError(f"no database at {cfg.database.path}: run `botasync sync` first")
    opener = Store.open_readonly if readonly else Store.open
    async with await opener(cfg.database.path) as store:
        return await fn(store)
