"""Read-only queries behind `status`, `recordings list|show` and `events list`.

Plain data out (dicts), so the CLI only renders and `--json` is the same data.
"""

from __future__ import annotations

from typing import Any

from botasync.envelope import DEFAULT_PROJECT, matches
from botasync.jsoncodec import loads
from botasync.store.base import Database
from botasync.store.dialect import POSTGRES

RECORDING_COLUMNS = (
    "project", "id", "device_id", "end_user_id", "name", "status", "duration_ms", "started_at",
    "ended_at", "transcription_id", "metadata", "created_at", "first_seen_at", "synced_at",
    "deleted_at",
)


def _row(row: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    out = {c: row[c] for c in columns}
    if out.get("metadata") is not None:
        out["metadata"] = loads(out["metadata"])
    return out


def _where(
    status: str | None, device: str | None, user: str | None, since: str | None,
    include_deleted: bool, project: str | None = None,
) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for col, val in (("project", project), ("status", status), ("device_id", device),
                     ("end_user_id", user)):
        if val:
            where.append(f"{col} = ?")
            params.append(val)
    if since:
        where.append("created_at >= ?")
        params.append(since)
    if not include_deleted:
        where.append("deleted_at IS NULL")
    return (" WHERE " + " AND ".join(where) if where else ""), params


async def list_recordings(
    store: Database, *, status: str | None = None, device: str | None = None,
    user: str | None = None, since: str | None = None, limit: int = 50,
    include_deleted: bool = False, project: str | None = None,
) -> list[dict[str, Any]]:
    """Recordings, newest first, with optional filters (`project`: of that one alone)."""
    where, params = _where(status, device, user, since, include_deleted, project)
    sql = f"SELECT {', '.join(RECORDING_COLUMNS)} FROM recordings{where}"  # noqa: S608
    sql += " ORDER BY created_at DESC NULLS LAST, id LIMIT ?"
    rows = await store.fetchall(sql, (*params, limit))
    return [_row(r, RECORDING_COLUMNS) for r in rows]


async def count_recordings(
    store: Database, *, status: str | None = None, device: str | None = None,
    user: str | None = None, since: str | None = None, include_deleted: bool = False,
    project: str | None = None,
) -> int:
    """How many recordings the same filters match (`50 of 261`)."""
    where, params = _where(status, device, user, since, include_deleted, project)
    row = await store.fetchone(f"SELECT count(*) FROM recordings{where}", params)  # noqa: S608
    return int(row[0]) if row else 0


async def projects_of(store: Database, rec_id: str) -> list[str]:
    """The projects that hold a recording of this id (ids are Bota's: one, nearly always)."""
    rows = await store.fetchall(
        "SELECT project FROM recordings WHERE id = ? ORDER BY project", (rec_id,))
    return [str(r[0]) for r in rows]


async def show_recording(
    store: Database, rec_id: str, project: str = DEFAULT_PROJECT,
) -> dict[str, Any] | None:
    """One recording of a project, with its media and its event history."""
    cols = ", ".join(RECORDING_COLUMNS)
    row = await store.fetchone(
        f"SELECT {cols} FROM recordings WHERE project = ? AND id = ?",  # noqa: S608
        (project, rec_id))
    if row is None:
        return None
    out = _row(row, RECORDING_COLUMNS)
    media = await store.fetchall(
        "SELECT * FROM media WHERE project = ? AND recording_id = ? ORDER BY position",
        (project, rec_id))
    out["media"] = [{k: m[k] for k in m.keys() if k not in ("raw", "recording_id", "project")}
                    for m in media]
    events = await store.fetchall(
        "SELECT seq, id, type, created_at FROM events WHERE project = ? AND recording_id = ? "
        "ORDER BY seq", (project, rec_id))
    out["events"] = [dict(zip(e.keys(), tuple(e), strict=True)) for e in events]
    return out


async def counts_by_status(store: Database, project: str | None = None) -> dict[str, int]:
    """Live recordings per status, plus `deleted` for tombstones (of one project, or all)."""
    where, params = ("WHERE project = ? ", [project]) if project is not None else ("", [])
    rows = await store.fetchall(
        "SELECT CASE WHEN deleted_at IS NULL THEN status ELSE 'deleted' END AS s, count(*) "  # noqa: S608
        f"FROM recordings {where}GROUP BY s ORDER BY s", params)
    return {r[0]: int(r[1]) for r in rows}


def _of(project: str | None) -> tuple[str, list[Any]]:
    return (" AND project = ?", [project]) if project is not None else ("", [])


async def last_runs(
    store: Database, limit: int = 10, project: str | None = None,
) -> list[dict[str, Any]]:
    """The latest passes, newest first (of one project, or all)."""
    where, params = _of(project)
    rows = await store.fetchall(
        f"SELECT * FROM sync_runs WHERE 1 = 1{where} ORDER BY id DESC LIMIT ?",  # noqa: S608
        (*params, limit))
    return [dict(zip(r.keys(), tuple(r), strict=True)) for r in rows]


async def last_run_of(
    store: Database, kinds: tuple[str, ...], *, finished: bool = False,
    project: str | None = None,
) -> dict[str, Any] | None:
    """The newest pass of these kinds (`finished`: of those that ended)."""
    marks = ",".join("?" * len(kinds))
    done = " AND ended_at IS NOT NULL" if finished else ""
    where, params = _of(project)
    row = await store.fetchone(
        f"SELECT * FROM sync_runs WHERE kind IN ({marks}){done}{where} "  # noqa: S608
        "ORDER BY id DESC LIMIT 1", (*kinds, *params))
    return dict(zip(row.keys(), tuple(row), strict=True)) if row else None


async def last_finished(
    store: Database, *, ok: bool, project: str | None = None,
) -> dict[str, Any] | None:
    """The newest pass that finished (`ok`: without an error; an interrupted walk taken
    over by a restart counts as no error)."""
    where, params = _of(project)
    sql = f"SELECT * FROM sync_runs WHERE ended_at IS NOT NULL{where}"  # noqa: S608
    if ok:
        sql += " AND (error IS NULL OR error = 'interrupted')"
    row = await store.fetchone(sql + " ORDER BY id DESC LIMIT 1", params)
    return dict(zip(row.keys(), tuple(row), strict=True)) if row else None


async def oldest_undelivered(
    store: Database, patterns: dict[str, list[str]], *, deliver_backfill: bool
) -> dict[str, str | None]:
    """Per handler, when the oldest event it still has to take was created (None: none).

    Past the handler's cursor, of a type it takes, not delivered and not dead (dead
    letters are a problem of their own); backfill only with `deliver_backfill`.
    """
    cursors = {r[0]: int(r[1]) for r in await store.fetchall(
        "SELECT handler, seq FROM handler_cursors")}
    out: dict[str, str | None] = {}
    for name, globs in patterns.items():
        if name not in cursors:
            out[name] = None  # a new handler starts with new events
            continue
        rows = await store.fetchall(
            "SELECT e.type, e.backfill, min(e.created_at) FROM events e WHERE e.seq > ? "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq "
            "AND d.handler = ? AND d.state IN ('delivered', 'dead')) GROUP BY e.type, e.backfill",
            (cursors[name], name))
        times = [r[2] for r in rows if matches(r[0], globs) and (deliver_backfill or not r[1])]
        out[name] = min(times, default=None)
    return out


async def resume_point(store: Database, project: str | None = None) -> str | None:
    """Where the next walk picks up an interrupted one, in words; None if none is pending."""
    walk = await last_run_of(store, ("full", "reconcile"), project=project)
    if walk is None or walk["complete"] or not walk["position"]:
        return None
    if walk.get("cursor"):
        return (f"{walk['position']:,} recordings walked; the next `botasync sync` resumes "
                "the walk from its saved cursor")
    return (f"the next `botasync sync` resumes the walk at offset {walk['position']:,} "
            f"({walk['seen']:,} recordings seen by this run)")


async def database_bytes(store: Database) -> int:
    """How big the database is: the SQLite file, or PostgreSQL's `pg_database_size`."""
    if store.dialect == POSTGRES:
        row = await store.fetchone("SELECT pg_database_size(current_database())")
        return int(row[0]) if row else 0
    return store.path.stat().st_size
