"""Read-only queries behind `status`, `recordings list|show` and `events list`.

Plain data out (dicts), so the CLI only renders and `--json` is the same data.
"""

from __future__ import annotations

from typing import Any

from botasync.jsoncodec import loads
from botasync.store import Store

RECORDING_COLUMNS = (
    "id", "device_id", "end_user_id", "name", "status", "duration_ms", "started_at", "ended_at",
    "transcription_id", "metadata", "created_at", "first_seen_at", "synced_at", "deleted_at",
)


def _row(row: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    out = {c: row[c] for c in columns}
    if out.get("metadata") is not None:
        out["metadata"] = loads(out["metadata"])
    return out


async def list_recordings(
    store: Store, *, status: str | None = None, device: str | None = None,
    user: str | None = None, since: str | None = None, limit: int = 50,
    include_deleted: bool = False,
) -> list[dict[str, Any]]:
    """Recordings, newest first, with optional filters."""
    where, params = [], []
    for col, val in (("status", status), ("device_id", device), ("end_user_id", user)):
        if val:
            where.append(f"{col} = ?")
            params.append(val)
    if since:
        where.append("created_at >= ?")
        params.append(since)
    if not include_deleted:
        where.append("deleted_at IS NULL")
    sql = f"SELECT {', '.join(RECORDING_COLUMNS)} FROM recordings"  # noqa: S608
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, id LIMIT ?"
    rows = await store.fetchall(sql, (*params, limit))
    return [_row(r, RECORDING_COLUMNS) for r in rows]


async def show_recording(store: Store, rec_id: str) -> dict[str, Any] | None:
    """One recording with its media and its event history."""
    cols = ", ".join(RECORDING_COLUMNS)
    row = await store.fetchone(f"SELECT {cols} FROM recordings WHERE id = ?", (rec_id,))  # noqa: S608
    if row is None:
        return None
    out = _row(row, RECORDING_COLUMNS)
    media = await store.fetchall(
        "SELECT * FROM media WHERE recording_id = ? ORDER BY position", (rec_id,)
    )
    out["media"] = [{k: m[k] for k in m.keys() if k not in ("raw", "recording_id")} for m in media]
    events = await store.fetchall(
        "SELECT seq, id, type, created_at FROM events WHERE recording_id = ? ORDER BY seq",
        (rec_id,),
    )
    out["events"] = [dict(zip(e.keys(), tuple(e), strict=True)) for e in events]
    return out


async def counts_by_status(store: Store) -> dict[str, int]:
    """Live recordings per status, plus `deleted` for tombstones."""
    rows = await store.fetchall(
        "SELECT CASE WHEN deleted_at IS NULL THEN status ELSE 'deleted' END AS s, count(*) "
        "FROM recordings GROUP BY s ORDER BY s"
    )
    return {r[0]: int(r[1]) for r in rows}


async def last_runs(store: Store, limit: int = 10) -> list[dict[str, Any]]:
    """The latest passes, newest first."""
    rows = await store.fetchall("SELECT * FROM sync_runs ORDER BY id DESC LIMIT ?", (limit,))
    return [dict(zip(r.keys(), tuple(r), strict=True)) for r in rows]


async def last_run_of(store: Store, kinds: tuple[str, ...]) -> dict[str, Any] | None:
    marks = ",".join("?" * len(kinds))
    row = await store.fetchone(
        f"SELECT * FROM sync_runs WHERE kind IN ({marks}) ORDER BY id DESC LIMIT 1", kinds  # noqa: S608
    )
    return dict(zip(row.keys(), tuple(row), strict=True)) if row else None
