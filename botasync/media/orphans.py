"""Files on disk that no media item owns any more, and partial files gone stale.

`orphans` decides (pure) from what the mirror says of the files' recordings and media;
`sweep` scans a project's root, asks the mirror, and removes what was decided.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path

import structlog

from botasync.media import files as fs
from botasync.store.base import Database

_CHUNK_IDS = 500  # ids per `IN (...)` query

# recording id -> tombstoned; media id -> (recording id, local_path)
Owners = tuple[dict[str, bool], dict[str, tuple[str, str | None]]]


async def sweep(store: Database, project: str, root: Path, busy: set[str]) -> int:
    """Remove the files under `root` whose media item is gone, and stale partial files,
    but none of `busy` (the media ids in flight); how many."""
    found = await asyncio.to_thread(fs.scan, root)
    if not found:
        return 0
    recordings, media = await _owners(store, project, {f.recording_id for f in found})
    doomed = orphans(found, recordings, media, busy=busy)
    log = structlog.get_logger("botasync.media", project=project)
    for f, reason in doomed:
        await asyncio.to_thread(fs.remove, f.path)
        await asyncio.to_thread(fs.remove_dir_if_empty, f.path.parent)
        log.info("media.file_removed", media_id=f.media_id, recording_id=f.recording_id,
                 reason=reason)
    return len(doomed)


async def _owners(store: Database, project: str, recording_ids: Iterable[str]) -> Owners:
    """recording id -> tombstoned; media id -> (recording id, local_path)."""
    recordings: dict[str, bool] = {}
    media: dict[str, tuple[str, str | None]] = {}
    ids = sorted(recording_ids)
    for i in range(0, len(ids), _CHUNK_IDS):
        chunk = ids[i : i + _CHUNK_IDS]
        marks = ",".join("?" * len(chunk))
        rec_sql = "SELECT id, deleted_at FROM recordings WHERE project = ? "
        rec_sql += f"AND id IN ({marks})"
        for r in await store.fetchall(rec_sql, (project, *chunk)):
            recordings[r[0]] = r[1] is not None
        med_sql = "SELECT id, recording_id, local_path FROM media WHERE project = ? "
        med_sql += f"AND recording_id IN ({marks})"
        for m in await store.fetchall(med_sql, (project, *chunk)):
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
