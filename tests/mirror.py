"""Compare a botasync database with the simulator's world, field by field."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from botasync.models import normalize_ts

TS_FIELDS = {"started_at", "ended_at", "created_at", "captured_at"}
REC_COLUMNS = ("id", "device_id", "end_user_id", "name", "status", "duration_ms", "started_at",
               "ended_at", "transcription_id", "metadata", "created_at")
MEDIA_COLUMNS = ("id", "type", "mime_type", "file_size_bytes", "status", "captured_at",
                 "created_at")


def _expected(item: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for c in columns:
        v = item.get(c)
        if c in TS_FIELDS and isinstance(v, str):
            v = normalize_ts(v)
        out[c] = v
    return out


def mirror_diff(db: Path, world_items: list[dict[str, Any]]) -> list[str]:
    """Every difference between the live mirror and the world, as lines (empty = exact)."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        rows = {r["id"]: r for r in conn.execute("SELECT * FROM recordings WHERE deleted_at IS NULL")}
        media = conn.execute("SELECT * FROM media ORDER BY recording_id, position").fetchall()
    finally:
        conn.close()
    problems: list[str] = []
    want = {i["id"]: i for i in world_items if isinstance(i, dict) and "id" in i}
    for missing in sorted(set(want) - set(rows)):
        problems.append(f"{missing}: missing from the mirror")
    for extra in sorted(set(rows) - set(want)):
        problems.append(f"{extra}: in the mirror but not in the world")
    media_by_rec: dict[str, list[sqlite3.Row]] = {}
    for m in media:
        media_by_rec.setdefault(m["recording_id"], []).append(m)
    for rid in sorted(set(want) & set(rows)):
        item, row = want[rid], rows[rid]
        got = {c: row[c] for c in REC_COLUMNS}
        got["metadata"] = json.loads(got["metadata"]) if got["metadata"] is not None else None
        if got != _expected(item, REC_COLUMNS):
            problems.append(f"{rid}: columns {got} != {_expected(item, REC_COLUMNS)}")
        if json.loads(row["raw"]) != item:
            problems.append(f"{rid}: raw differs")
        got_media = [{c: m[c] for c in MEDIA_COLUMNS} for m in media_by_rec.get(rid, [])]
        want_media = [_expected(m, MEDIA_COLUMNS) for m in item.get("media") or []]
        if got_media != want_media:
            problems.append(f"{rid}: media {got_media} != {want_media}")
    return problems
