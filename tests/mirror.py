"""Compare a botasync database with the simulator's world, field by field, in either dialect.

The expected columns are worked out here from the world's items by the rules the README
documents (which column comes from which field in which dialect), independently of
`botasync.models`, so a mistake there cannot hide the same mistake here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botasync.api.models import normalize_ts
from tests.pgserver import TestDb

TS_FIELDS = {"started_at", "ended_at", "created_at", "captured_at", "recorded_at", "updated_at"}
REC_COLUMNS = ("id", "device_id", "end_user_id", "name", "status", "duration_ms", "started_at",
               "ended_at", "transcription_id", "metadata", "created_at", "recorded_at",
               "updated_at", "source", "project_id", "file_size_bytes", "content_sha256")
MEDIA_COLUMNS = ("id", "type", "mime_type", "file_size_bytes", "status", "captured_at",
                 "created_at")
NO_FILE = ("pending", "streaming")


def _expected(item: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for c in columns:
        v = item.get(c)
        if c in TS_FIELDS and isinstance(v, str):
            v = normalize_ts(v)
        if c == "file_size_bytes" and isinstance(v, str):
            v = int(v)
        out[c] = v
    if item.get("duration_ms") is None and isinstance(item.get("duration_seconds"), int):
        out["duration_ms"] = item["duration_seconds"] * 1000
    return out


def _expected_media(item: dict[str, Any]) -> list[dict[str, Any]]:
    if "media" in item:
        return [_expected(m, MEDIA_COLUMNS) for m in item.get("media") or []]
    size = item.get("file_size_bytes")
    has_file = item.get("audio_url") is not None or (
        size is not None and item.get("status") not in NO_FILE)
    return [{
        "id": item["id"], "type": "audio", "mime_type": None,
        "file_size_bytes": int(size) if size is not None else None,
        "status": "uploaded" if has_file else "pending",
        "captured_at": normalize_ts(item["recorded_at"]) if item.get("recorded_at") else None,
        "created_at": normalize_ts(item["created_at"]) if item.get("created_at") else None,
    }]


def _unsigned(item: dict[str, Any]) -> dict[str, Any]:
    """The item with its signed `audio_url` cut to the address (it is signed anew each time)."""
    url = item.get("audio_url")
    if not isinstance(url, str):
        return item
    parts = urlsplit(url)
    return {**item, "audio_url": f"{parts.scheme}://{parts.netloc}{parts.path}"}


def mirror_diff(
    db: Path | TestDb, world_items: list[dict[str, Any]], project: str = "default",
) -> list[str]:
    """Every difference between one project's live mirror and the world, as lines (empty =
    exact). `db`: a SQLite file, or a test's database on either backend."""
    if isinstance(db, Path):
        db = TestDb("sqlite", db)
    rows = {r["id"]: r for r in db.dict_rows(
        "SELECT * FROM recordings WHERE deleted_at IS NULL AND project = ?", (project,))}
    media = db.dict_rows("SELECT * FROM media WHERE project = ? "
                         "ORDER BY recording_id, position", (project,))
    problems: list[str] = []
    want = {i["id"]: i for i in world_items if isinstance(i, dict) and "id" in i}
    for missing in sorted(set(want) - set(rows)):
        problems.append(f"{missing}: missing from the mirror")
    for extra in sorted(set(rows) - set(want)):
        problems.append(f"{extra}: in the mirror but not in the world")
    media_by_rec: dict[str, list[dict[str, Any]]] = {}
    for m in media:
        media_by_rec.setdefault(m["recording_id"], []).append(m)
    for rid in sorted(set(want) & set(rows)):
        item, row = want[rid], rows[rid]
        got = {c: row[c] for c in REC_COLUMNS}
        got["metadata"] = json.loads(got["metadata"]) if got["metadata"] is not None else None
        if got != _expected(item, REC_COLUMNS):
            problems.append(f"{rid}: columns {got} != {_expected(item, REC_COLUMNS)}")
        if _unsigned(json.loads(row["raw"])) != _unsigned(item):
            problems.append(f"{rid}: raw differs")
        got_media = [{c: m[c] for c in MEDIA_COLUMNS} for m in media_by_rec.get(rid, [])]
        if got_media != _expected_media(item):
            problems.append(f"{rid}: media {got_media} != {_expected_media(item)}")
    return problems
