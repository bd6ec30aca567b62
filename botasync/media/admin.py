"""What `botasync files ...` does: status, verify, prune, retry, download now.

Plain data out (dicts and small dataclasses), so the CLI only renders and `--json`
is the same data. Status reads the database and the disk, never the API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from botasync import config
from botasync.api.budget import RequestBudget
from botasync.api.client import BotaClient
from botasync.config import Config, MediaConfig
from botasync.errors import BotasyncError
from botasync.humanize import human_bytes
from botasync.media import files as fs
from botasync.media.downloader import (
    GAVE_UP,
    NEEDS,
    Downloader,
    DownloadStats,
    queue_query,
    queued_sql,
    wanted_sql,
)
from botasync.store.sqlite import Store

FAILED_SHOWN = 10  # failed items listed by `files status`
_CLEAR_FILE = ("local_path = NULL, local_size_bytes = NULL, sha256 = NULL, downloaded_at = NULL, "
               "download_attempts = 0, download_error = NULL, download_next_at = NULL")
_FROM = "FROM media m JOIN recordings r ON r.id = m.recording_id"




async def _count(store: Store, sql: str, params: Any = ()) -> dict[str, int]:
    row = await store.fetchone(sql, params)
    return {"files": int(row[0] or 0) if row else 0, "bytes": int(row[1] or 0) if row else 0}


async def files_status(store: Store, media: MediaConfig) -> dict[str, Any]:
    """Downloaded, queued and failed files (counts and bytes), and the disk's state."""
    root = Path(media.files_dir).resolve()
    queued_where, qp = queued_sql(media.types)
    wanted_where, wp = wanted_sql(media.types)
    queued = await _count(
        store, f"SELECT count(*), sum(m.file_size_bytes) {_FROM} WHERE {queued_where}", qp)
    retrying = await store.fetchone(
        f"SELECT count(*) {_FROM} WHERE {queued_where} AND m.download_error IS NOT NULL", qp)
    queued["retrying"] = int(retrying[0]) if retrying else 0
    queued["eta_s"] = round(queued["files"] * 60 / media.requests_per_minute)
    failed_where = f"{wanted_where} AND {NEEDS} AND {GAVE_UP}"
    failed: dict[str, Any] = await _count(
        store, f"SELECT count(*), sum(m.file_size_bytes) {_FROM} WHERE {failed_where}", wp)
    rows = await store.fetchall(
        f"SELECT m.id, m.recording_id, m.download_attempts, m.download_error {_FROM} "
        f"WHERE {failed_where} ORDER BY m.id LIMIT ?", (*wp, FAILED_SHOWN))
    failed["items"] = [{"media_id": r[0], "recording_id": r[1], "attempts": r[2],
                        "error": r[3]} for r in rows]
    return {
        "download": media.download, "types": list(media.types), "files_dir": str(root),
        "downloaded": await _count(
            store, "SELECT count(*), sum(local_size_bytes) FROM media "
            "WHERE downloaded_at IS NOT NULL"),
        "queued": queued,
        "failed": failed,
        "deleted_kept": await _count(
            store, f"SELECT count(*), sum(m.local_size_bytes) {_FROM} "
            "WHERE r.deleted_at IS NOT NULL AND m.local_path IS NOT NULL"),
        "disk": await _disk(store, media, root),
    }


async def _disk(store: Store, media: MediaConfig, root: Path) -> dict[str, Any]:
    """Free space and how many queued files it holds back, with one line saying so."""
    free = await asyncio.to_thread(fs.disk_free, root)
    room = free - media.min_free_bytes
    sql, params = queue_query(media.types, "count(*), min(m.file_size_bytes)",
                              "AND coalesce(m.file_size_bytes, 0) > ?")
    row = await store.fetchone(sql, (*params, room))
    waiting = int(row[0]) if row else 0
    message = None
    if waiting:
        message = (f"{waiting} queued downloads wait for disk space: {human_bytes(free)} free "
                   f"in {root}, the smallest needs {human_bytes(int(row[1] or 0) if row else 0)}"
                   f" and min_free_bytes is {human_bytes(media.min_free_bytes)}")
    return {"free_bytes": free, "min_free_bytes": media.min_free_bytes, "waiting": waiting,
            "message": message}


@dataclass(frozen=True)
class Problem:
    """A recorded file that is not what the mirror says; it was re-queued."""

    media_id: str
    recording_id: str
    path: str
    reason: str


@dataclass
class VerifyReport:
    """What `files verify` found: files checked and good, and the problems."""

    checked: int = 0
    ok: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_file(path: Path, size: int | None, sha256: str | None) -> str | None:
    """Why a recorded file is wrong, or None when it matches (blocking)."""
    have = fs.size_of(path)
    if have is None:
        return "missing"
    if size is not None and have != size:
        return f"size {have}, recorded {size}"
    hasher, _ = fs.hash_file(path)
    if hasher.hexdigest() != sha256:
        return "sha256 does not match"
    return None


async def verify(
    store: Store, *, on_file: Callable[[int, int], None] | None = None
) -> VerifyReport:
    """Re-hash every recorded file; a missing or altered one is removed and re-queued."""
    rows = await store.fetchall(
        "SELECT id, recording_id, local_path, local_size_bytes, sha256 FROM media "
        "WHERE local_path IS NOT NULL ORDER BY recording_id, id")
    report = VerifyReport()
    for i, r in enumerate(rows):
        path = Path(r[2])
        why = await asyncio.to_thread(_check_file, path, r[3], r[4])
        report.checked += 1
        if why is None:
            report.ok += 1
            report.bytes += int(r[3] or 0)
        else:
            if why != "missing":  # an altered file must not be adopted back as it is
                await asyncio.to_thread(fs.remove, path)
            async with store.transaction() as conn:
                await conn.execute(f"UPDATE media SET {_CLEAR_FILE} WHERE id = ?", (r[0],))  # noqa: S608
            report.problems.append(Problem(r[0], r[1], str(path), why))
        if on_file:
            on_file(i + 1, len(rows))
    return report


@dataclass
class PruneReport:
    """What `files prune --deleted` removed (or would remove, with `dry_run`)."""

    recordings: int = 0
    files: int = 0
    bytes: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def prune_deleted(store: Store, media: MediaConfig, *, dry_run: bool = False) -> PruneReport:
    """Remove the files of tombstoned recordings (kept until now) and forget them."""
    root = Path(media.files_dir).resolve()
    rows = await store.fetchall(
        f"SELECT m.id, m.recording_id, m.local_path, m.mime_type {_FROM} "
        "WHERE r.deleted_at IS NOT NULL ORDER BY m.recording_id")
    report = PruneReport(dry_run=dry_run)
    recordings: set[str] = set()
    for media_id, rec_id, local, mime in rows:
        paths = {fs.final_path(root, rec_id, media_id, mime), fs.part_path(root, rec_id, media_id),
                 *await asyncio.to_thread(fs.finals, root, rec_id, media_id)}
        if local:
            paths.add(Path(local))
        sizes = {p: await asyncio.to_thread(fs.size_of, p) for p in paths}
        present = [p for p, n in sizes.items() if n is not None]
        if not present:
            continue
        recordings.add(rec_id)
        report.files += len(present)
        report.bytes += sum(n or 0 for n in sizes.values())
        if dry_run:
            continue
        for p in present:
            await asyncio.to_thread(fs.remove, p)
            await asyncio.to_thread(fs.remove_dir_if_empty, p.parent)
        async with store.transaction() as conn:
            await conn.execute(f"UPDATE media SET {_CLEAR_FILE} WHERE id = ?", (media_id,))  # noqa: S608
    report.recordings = len(recordings)
    return report


async def retry_failed(store: Store, media: MediaConfig) -> int:
    """Put the given-up items back in the queue with a fresh count of attempts."""
    where, params = wanted_sql(media.types)
    async with store.transaction() as conn:
        gave_up = f"SELECT m.id {_FROM} WHERE {where} AND {GAVE_UP}"
        sql = "UPDATE media SET download_attempts = 0, download_error = NULL, "
        sql += f"download_next_at = NULL WHERE id IN ({gave_up})"
        cur = await conn.execute(sql, params)
        return int(cur.rowcount)


@dataclass(frozen=True)
class DownloadReport:
    """What `files download` did: files and bytes, whether the queue drained."""

    files: int
    bytes: int
    failures: int
    drained: bool


async def download_now(
    cfg: Config, *, within_s: float, on_progress: Callable[[DownloadStats], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> DownloadReport:
    """Run the download queue until it is empty (or `within_s`), whatever `download` says."""

    config.require_key(cfg)
    media = cfg.media.model_copy(update={"download": True})
    async with await Store.open(cfg.database.path) as store:
        if on_start:
            on_start(await files_status(store, media))
        client = BotaClient(
            cfg.api, budget=RequestBudget(cfg.api.requests_per_minute),
            download_budget=RequestBudget(media.requests_per_minute),
            backoff_base=cfg.api.retry_base_s, backoff_cap=cfg.api.retry_max_s)
        async with client, Downloader(store, client, media, on_progress=on_progress) as dl:
            await dl.start()
            drained = await dl.drain(within_s)
            stats = dl.stats
        return DownloadReport(stats.files, stats.bytes, stats.failures, drained)


async def with_store(cfg: Config, fn: Callable[[Store], Any]) -> Any:
    """Open the configured database (which must exist) for one library call."""
    if not Path(cfg.database.path).exists():
        raise BotasyncError(f"no database at {cfg.database.path}: run `botasync sync` first")
    async with await Store.open(cfg.database.path) as store:
        return await fn(store)
