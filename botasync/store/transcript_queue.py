"""The transcript queue: which recordings still need their transcript fetched, as SQL.

A recording is queued (a `transcript_queue` row) when it can have a transcript: it
names a transcription (`transcription_id`, the documented dialect), or it has finished
processing (`completed`, or `failed`: a failed transcription may be why) and names none
because the API never sends that field (the deployed dialect: its transcriptions are
found with `GET /transcriptions?recording_id=`). The
sync queues it in the same transaction as the recording's row (`enqueue_rows`, called
by the page write), so a crash can never leave a written recording unqueued.

Queueing starts once transcripts are turned on for the database (`enable`, by the
fetcher's start or `botasync transcripts download`), which also queues, once, every
recording already stored that can have one (the backfill). Before that the sync
queues nothing, so a mirror that never fetches transcripts never grows a queue.

A row leaves the queue in the transaction that stores what it fetched, once every
transcription (and summary) it found is terminal; until then it comes back with a
backoff. Failed fetches are retried with backoff and given up after a while (an error
and no next attempt). A row changed while it was being fetched (queued again by the
sync: its `queued_at` moved) is left for another round.

Every statement is one project's (`project`, the `[[projects]]` name): a queue row, the
recording it names and the transcriptions it looks at are all that project's, joined on
both columns, so the same ids in two projects never meet; and transcripts are turned on
per project (the `state` row is the project's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from botasync.api.models import Recording
from botasync.envelope import DEFAULT_PROJECT
from botasync.jsoncodec import dumps, loads

STATE_KEY = "transcripts"  # the project's `state` row saying its transcripts are on
TERMINAL_SQL = "('completed', 'failed')"
GAVE_UP = "(q.last_error IS NOT NULL AND q.next_attempt_at IS NULL)"
_DUE = "(q.next_attempt_at IS NULL OR q.next_attempt_at <= ?)"
_LIVE = "r.deleted_at IS NULL"
FROM = ("FROM transcript_queue q JOIN recordings r "
        "ON r.project = q.project AND r.id = q.recording_id")

# reasons a row is queued for (the `reason` column)
BY_ID = "transcription_id"  # the recording names a transcription (documented)
FINISHED = "finished"  # completed (or failed) and names none: ask the list (deployed)
BACKFILL = "backfill"  # queued when transcripts were turned on, or by the first sync
REFRESH = "refresh"  # asked again after `refresh_every_s`: a re-run the API did not announce
# a recording that names no transcription is asked for its list once it has finished
# processing: completed, or failed (a failed transcription may be why)
FINISHED_STATUSES = ("completed", "failed")

# a recording that can have a transcript and has no terminal one stored yet
_CAN_HAVE = ("(r.transcription_id IS NOT NULL OR (json_type(r.raw, '$.transcription_id') "
             "IS NULL AND r.status IN ('completed', 'failed')))")
_NONE_TERMINAL = ("NOT EXISTS (SELECT 1 FROM transcriptions t WHERE t.project = r.project "
                  "AND t.recording_id = r.id AND t.status IN ('completed', 'failed'))")
_UPSERT = """
INSERT INTO transcript_queue (project, recording_id, reason, queued_at) VALUES (?, ?, ?, ?)
ON CONFLICT(project, recording_id) DO UPDATE SET reason = excluded.reason,
    queued_at = excluded.queued_at, attempts = 0, last_error = NULL, next_attempt_at = NULL
"""


class WrittenRecording(Protocol):
    """What the page write hands over for each recording it writes (`store.Upsert`)."""

    @property
    def recording(self) -> Recording: ...

    @property
    def raw(self) -> dict[str, Any]: ...


def reason_for(recording: Recording, raw: dict[str, Any]) -> str | None:
    """Why a written recording is queued, or None when it cannot have a transcript (pure).

    Every write of a finished recording without `transcription_id` queues it: the
    deployed API says nothing of a re-run transcription on the recording, and a write
    means the recording changed.
    """
    if recording.transcription_id is not None:
        return BY_ID
    if "transcription_id" not in raw and recording.status in FINISHED_STATUSES:
        return FINISHED
    return None


@dataclass(frozen=True)
class Settings:
    """What is turned on for the project (its `state` row): since when, and summaries."""

    enabled_at: str
    summaries: bool

    @classmethod
    def from_state(cls, value: str | None) -> Settings | None:
        if value is None:
            return None
        data = loads(value)
        if not isinstance(data, dict):
            return None
        return cls(str(data.get("enabled_at") or ""), bool(data.get("summaries")))

    def to_state(self) -> str:
        return dumps({"enabled_at": self.enabled_at, "summaries": self.summaries})


async def settings(conn: Any, project: str) -> Settings | None:
    """Whether (since when, with summaries or not) the project's transcripts are on."""
    async with conn.execute("SELECT value FROM state WHERE project = ? AND key = ?",
                            (project, STATE_KEY)) as cur:
        row = await cur.fetchone()
    return Settings.from_state(row[0] if row else None)


async def enqueue_rows(
    conn: Any, project: str, written: Sequence[WrittenRecording], now: str, *,
    backfill: bool = False,
) -> int:
    """Queue the written recordings that can have a transcript; inside the page's transaction.

    Nothing is queued before transcripts are turned on for the project. A recording
    whose named transcription is stored terminal already is not queued again. Rows
    written by the first sync are queued as `backfill` (their events are a backfill's).
    """
    if not written or await settings(conn, project) is None:
        return 0
    rows: list[tuple[str, str, str, str]] = []
    for w in written:
        reason = reason_for(w.recording, w.raw)
        if reason == BY_ID and await _stored_terminal(conn, project,
                                                      w.recording.transcription_id):
            continue
        if reason is not None:
            rows.append((project, w.recording.id, BACKFILL if backfill else reason, now))
    await conn.executemany(_UPSERT, rows)
    return len(rows)


async def _stored_terminal(conn: Any, project: str, transcription_id: str | None) -> bool:
    async with conn.execute(
        f"SELECT 1 FROM transcriptions WHERE project = ? AND id = ? "  # noqa: S608
        f"AND status IN {TERMINAL_SQL}",
        (project, transcription_id),
    ) as cur:
        return await cur.fetchone() is not None


async def enable(conn: Any, project: str, now: str, *, summaries: bool) -> int:
    """Turn the project's transcripts on (inside the caller's transaction); queue what is
    stored, once.

    The first time: every live recording that can have a transcript and has no terminal
    one stored. When summaries are turned on later: also every recording with a
    completed transcription, so its summaries are fetched. Returns the rows queued.
    """
    before = await settings(conn, project)
    queued = 0
    if before is None:
        sql = (f"INSERT INTO transcript_queue (project, recording_id, reason, queued_at) "  # noqa: S608
               f"SELECT r.project, r.id, '{BACKFILL}', ? FROM recordings r "
               f"WHERE r.project = ? AND {_LIVE} AND {_CAN_HAVE} AND {_NONE_TERMINAL} "
               "ON CONFLICT(project, recording_id) DO NOTHING")
        queued += (await conn.execute(sql, (now, project))).rowcount or 0
    if summaries and (before is None or not before.summaries):
        sql = (f"INSERT INTO transcript_queue (project, recording_id, reason, queued_at) "  # noqa: S608
               f"SELECT DISTINCT t.project, t.recording_id, '{BACKFILL}', ? FROM transcriptions t "
               "JOIN recordings r ON r.project = t.project AND r.id = t.recording_id "
               f"WHERE t.project = ? AND {_LIVE} AND t.status = 'completed' "
               "ON CONFLICT(project, recording_id) DO NOTHING")
        queued += (await conn.execute(sql, (now, project))).rowcount or 0
    enabled_at = before.enabled_at if before is not None else now
    want = Settings(enabled_at, summaries or (before is not None and before.summaries))
    if want != before:
        await conn.execute(
            "INSERT INTO state (project, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT(project, key) DO UPDATE SET value = excluded.value",
            (project, STATE_KEY, want.to_state()),
        )
    return queued


@dataclass(frozen=True)
class Job:
    """One queued recording, as the queue read it.

    `by_id`: the recording has a `transcription_id` field (documented), so its transcript
    is fetched by that id; otherwise by the list (deployed). `queued_at` guards the row:
    it is finished only if the sync has not queued it again meanwhile. `project`: whose
    queue it came from (`finish` and `again` touch that project's row alone).
    """

    recording_id: str
    transcription_id: str | None
    by_id: bool
    reason: str
    queued_at: str
    attempts: int
    project: str = DEFAULT_PROJECT


async def due(conn: Any, project: str, now: str, limit: int,
              busy: Sequence[str] = ()) -> list[Job]:
    """The project's queued live recordings due now, newest recordings first."""
    not_busy = f"AND q.recording_id NOT IN ({','.join('?' * len(busy))})" if busy else ""
    sql = (f"SELECT q.recording_id, r.transcription_id, "
           "json_type(r.raw, '$.transcription_id') IS NOT NULL, q.reason, q.queued_at, "
           f"q.attempts {FROM} WHERE q.project = ? AND {_LIVE} AND NOT {GAVE_UP} AND {_DUE} "
           f"{not_busy} ORDER BY r.created_at DESC NULLS LAST, r.id DESC LIMIT ?")
    async with conn.execute(sql, (project, now, *busy, limit)) as cur:
        rows = await cur.fetchall()
    return [Job(r[0], r[1], bool(r[2]), r[3], r[4], int(r[5]), project) for r in rows]


async def next_due_at(conn: Any, project: str) -> str | None:
    """When the project's earliest waiting row comes due (None: nothing waits on a time)."""
    sql = (f"SELECT min(q.next_attempt_at) {FROM} "
           f"WHERE q.project = ? AND {_LIVE} AND NOT {GAVE_UP}")
    async with conn.execute(sql, (project,)) as cur:
        row = await cur.fetchone()
    return str(row[0]) if row and row[0] is not None else None


async def finish(conn: Any, job: Job) -> bool:
    """Take a fetched recording off its project's queue, unless it was queued again
    meanwhile."""
    cur = await conn.execute(
        "DELETE FROM transcript_queue WHERE project = ? AND recording_id = ? AND queued_at = ?",
        (job.project, job.recording_id, job.queued_at),
    )
    return bool(cur.rowcount)


async def again(
    conn: Any, job: Job, next_at: str | None, error: str | None, attempts: int
) -> bool:
    """Keep a recording queued: poll again at `next_at` (no error), retry after an error,
    or give up (an error and no `next_at`); unless it was queued again meanwhile."""
    cur = await conn.execute(
        "UPDATE transcript_queue SET attempts = ?, last_error = ?, next_attempt_at = ? "
        "WHERE project = ? AND recording_id = ? AND queued_at = ?",
        (attempts, error, next_at, job.project, job.recording_id, job.queued_at),
    )
    return bool(cur.rowcount)


async def refresh(conn: Any, project: str, cutoff: str, now: str, limit: int) -> int:
    """Queue again, stalest first, the project's finished recordings naming no
    transcription (deployed) whose transcriptions were last fetched before `cutoff`: a
    re-run transcription shows only in their list. Inside the caller's transaction; the
    rows queued."""
    sql = (f"INSERT INTO transcript_queue (project, recording_id, reason, queued_at) "  # noqa: S608
           f"SELECT t.project, t.recording_id, '{REFRESH}', ? FROM transcriptions t "
           "JOIN recordings r ON r.project = t.project AND r.id = t.recording_id "
           f"WHERE t.project = ? AND {_LIVE} AND json_type(r.raw, '$.transcription_id') IS NULL "
           "AND NOT EXISTS (SELECT 1 FROM transcript_queue q "
           "WHERE q.project = r.project AND q.recording_id = r.id) "
           "GROUP BY t.project, t.recording_id HAVING max(t.fetched_at) < ? "
           "ORDER BY max(t.fetched_at) LIMIT ? ON CONFLICT(project, recording_id) DO NOTHING")
    cur = await conn.execute(sql, (now, project, cutoff, limit))
    return int(cur.rowcount or 0)


async def retry_gave_up(conn: Any, project: str) -> int:
    """Put the project's rows that gave up back in the queue with a fresh count."""
    cur = await conn.execute(
        "UPDATE transcript_queue SET attempts = 0, last_error = NULL, next_attempt_at = NULL "
        "WHERE project = ? AND last_error IS NOT NULL AND next_attempt_at IS NULL", (project,))
    return int(cur.rowcount or 0)


async def counts(conn: Any, project: str, now: str) -> dict[str, int]:
    """The project's queued (due now, and waiting for a poll or a retry) and given-up live
    rows."""
    sql = (f"SELECT count(*), "
           f"coalesce(sum(CASE WHEN NOT {GAVE_UP} AND {_DUE} THEN 1 ELSE 0 END), 0), "
           f"coalesce(sum(CASE WHEN NOT {GAVE_UP} AND NOT {_DUE} THEN 1 ELSE 0 END), 0), "
           f"coalesce(sum(CASE WHEN {GAVE_UP} THEN 1 ELSE 0 END), 0) "
           f"{FROM} WHERE q.project = ? AND {_LIVE}")
    async with conn.execute(sql, (now, now, project)) as cur:
        row = await cur.fetchone()
    total, ready, waiting, gave_up = (int(x or 0) for x in row)
    return {"queued": ready + waiting, "due": ready, "waiting": waiting, "gave_up": gave_up,
            "rows": total}


async def gave_up_items(conn: Any, project: str, limit: int) -> list[dict[str, Any]]:
    """The project's given-up live rows, newest recordings first."""
    sql = (f"SELECT q.recording_id, q.attempts, q.last_error {FROM} "
           f"WHERE q.project = ? AND {_LIVE} AND {GAVE_UP} "
           "ORDER BY r.created_at DESC NULLS LAST LIMIT ?")
    async with conn.execute(sql, (project, limit)) as cur:
        rows = await cur.fetchall()
    return [{"recording_id": r[0], "attempts": r[1], "error": r[2]} for r in rows]
