"""The media download queue: which items should be on disk, and which to fetch next.

The queue is the database itself: a media item is queued while it is `uploaded`, of a
wanted type, its recording not tombstoned, and it has no verified local file, unless it
was given up (an error with no next attempt). The SQL is shared with `files status`
(`media.admin`); `Queue` reads one project's due items from it, newest recordings first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botasync.config import DEFAULT_PROJECT
from botasync.envelope import iso
from botasync.store.base import Database

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


class Queue:
    """One project's queue of wanted `types`, as due by `clock`."""

    def __init__(self, store: Database, project: str, types: Sequence[str], clock: Clock) -> None:
        self._store = store
        self._project = project
        self._types = types
        self._clock = clock

    async def due(self, limit: int, room: int, busy: Sequence[str]) -> list[Job]:
        """Up to `limit` items due now that fit in `room` bytes, newest recordings first;
        none of `busy` (the media ids in flight)."""
        not_busy = f"AND m.id NOT IN ({','.join('?' * len(busy))})" if busy else ""
        sql, params = queue_query(
            self._types,
            "m.id, m.recording_id, m.mime_type, m.file_size_bytes, m.download_attempts, "
            "json_extract(m.raw, '$.sha256'), m.download_error",
            f"AND {_DUE} AND coalesce(m.file_size_bytes, 0) <= ? {not_busy} "
            "ORDER BY r.created_at DESC NULLS LAST, m.recording_id, m.position LIMIT ?",
            project=self._project,
        )
        rows = await self._store.fetchall(
            sql, (*params, iso(self._clock()), room, *busy, limit))
        return [Job(r[0], r[1], r[2], r[3], int(r[4]), expected_sha256(r[5]), r[6])
                for r in rows]

    async def too_big(self, room: int) -> tuple[int, int | None]:
        """(how many due items do not fit in `room` bytes, the size of the smallest)."""
        sql, params = queue_query(self._types, "count(*), min(m.file_size_bytes)",
                                  f"AND {_DUE} AND coalesce(m.file_size_bytes, 0) > ?",
                                  project=self._project)
        row = await self._store.fetchone(sql, (*params, iso(self._clock()), room))
        return (int(row[0]), row[1]) if row else (0, None)

    async def next_due(self) -> datetime | None:
        """When the earliest retry comes due; None when no item waits for one."""
        sql, params = queue_query(self._types, "min(m.download_next_at)", project=self._project)
        row = await self._store.fetchone(sql, params)
        if row is None or row[0] is None:
            return None
        return datetime.fromisoformat(str(row[0]).replace("Z", "+00:00"))
