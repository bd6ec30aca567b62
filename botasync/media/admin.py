"""What `botasync files ...` does: status, verify, prune, retry, download now.

Plain data out (dicts and small dataclasses), so the CLI only renders and `--json`
is the same data. Status reads the database and the disk, never the API. Each call
takes `project`: one project's files, or (None) every project's, whose counts are
also given project by project.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from botasync import config
from botasync.api.client import BotaClient
from botasync.config import DEFAULT_PROJECT, Config, MediaConfig
from botasync.humanize import human_bytes
from botasync.media import files as fs
from botasync.media.downloader import Downloader
from botasync.media.ledger import DownloadStats
from botasync.media.queue import GAVE_UP, JOIN_SQL, NEEDS, queue_query, queued_sql, wanted_sql
from botasync.store import open_existing, open_store
from botasync.store.base import Database

FAILED_SHOWN = 10  # failed items listed by `files status`
_CLEAR_FILE = ("local_path = NULL, local_size_bytes = NULL, sha256 = NULL, downloaded_at = NULL, "
               "download_attempts = 0, download_error = NULL, download_next_at = NULL")
_FROM = f"FROM {JOIN_SQL}"
_COUNTS = ("downloaded", "queued", "failed", "deleted_kept")


def _scope(projects: Sequence[str] | None) -> tuple[str, list[str]]:
    """` AND m.project IN (...)` for these projects; nothing for every project (None)."""
    if projects is None:
        return "", []
    return f" AND m.project IN ({','.join('?' * len(projects)) or 'NULL'})", list(projects)


def _only(project: str | None) -> list[str] | None:
    return None if project is None else [project]


async def _by_project(store: Database, sql: str, params: Sequence[Any]) -> dict[str, list[int]]:
    """project -> the numbers of a `SELECT m.project, n... GROUP BY m.project` query."""
    return {r[0]: [int(v or 0) for v in tuple(r)[1:]] for r in await store.fetchall(sql, params)}


def _count(files: int = 0, size: int = 0) -> dict[str, int]:
    return {"files": files, "bytes": size}


async def files_status(
    store: Database, media: MediaConfig, project: str | None = None,
) -> dict[str, Any]:
    """Downloaded, queued and failed files (counts and bytes), and the disk's state: of one
    project, or of every project (None: the totals, and each project's under `projects`)."""
    return await _status(store, media, _only(project))


async def _status(
    store: Database, media: MediaConfig, projects: Sequence[str] | None,
) -> dict[str, Any]:
    root = Path(media.files_dir).resolve()
    scope, sp = _scope(projects)
    queued_where, qp = queued_sql(media.types, None)
    wanted_where, wp = wanted_sql(media.types, None)
    failed_where = f"{wanted_where} AND {NEEDS} AND {GAVE_UP}"
    found = {
        "downloaded": await _by_project(
            store, "SELECT m.project, count(*), sum(m.local_size_bytes) FROM media m "  # noqa: S608
            f"WHERE m.downloaded_at IS NOT NULL{scope} GROUP BY m.project", sp),
        "queued": await _by_project(
            store, "SELECT m.project, count(*), sum(m.file_size_bytes), "
            "sum(CASE WHEN m.download_error IS NOT NULL THEN 1 ELSE 0 END) "
            f"{_FROM} WHERE {queued_where}{scope} "
            "GROUP BY m.project", (*qp, *sp)),
        "failed": await _by_project(
            store, f"SELECT m.project, count(*), sum(m.file_size_bytes) {_FROM} "
            f"WHERE {failed_where}{scope} GROUP BY m.project", (*wp, *sp)),
        "deleted_kept": await _by_project(
            store, f"SELECT m.project, count(*), sum(m.local_size_bytes) {_FROM} "
            f"WHERE r.deleted_at IS NOT NULL AND m.local_path IS NOT NULL{scope} "
            "GROUP BY m.project", sp),
    }
    names = sorted({*(projects or ()), *(p for counts in found.values() for p in counts)})
    per: dict[str, dict[str, Any]] = {}
    for name in names:
        counts = {kind: _count(*found[kind].get(name, [0, 0])[:2]) for kind in _COUNTS}
        retrying = found["queued"].get(name, [0, 0, 0])[2]
        counts["queued"].update(retrying=retrying, eta_s=round(
            counts["queued"]["files"] * 60 / media.requests_per_minute))
        per[name] = counts
    # each project's downloader keeps to a download budget of its own, side by side
    totals: dict[str, Any] = {kind: _count(sum(c[kind]["files"] for c in per.values()),
                                           sum(c[kind]["bytes"] for c in per.values()))
                              for kind in _COUNTS}
    totals["queued"].update(
        retrying=sum(c["queued"]["retrying"] for c in per.values()),
        eta_s=max((c["queued"]["eta_s"] for c in per.values()), default=0))
    rows = await store.fetchall(
        f"SELECT m.project, m.id, m.recording_id, m.download_attempts, m.download_error {_FROM} "
        f"WHERE {failed_where}{scope} ORDER BY m.project, m.id LIMIT ?", (*wp, *sp, FAILED_SHOWN))
    totals["failed"]["items"] = [
        {"project": r[0], "media_id": r[1], "recording_id": r[2], "attempts": r[3],
         "error": r[4]} for r in rows]
    return {
        "download": media.download, "types": list(media.types), "files_dir": str(root),
        **totals,
        "disk": await _disk(store, media, root, projects),
        "projects": per,
    }


async def _disk(
    store: Database, media: MediaConfig, root: Path, projects: Sequence[str] | None,
) -> dict[str, Any]:
    """Free space and how many queued files it holds back, with one line saying so."""
    free = await asyncio.to_thread(fs.disk_free, root)
    room = free - media.min_free_bytes
    scope, sp = _scope(projects)
    sql, params = queue_query(media.types, "count(*), min(m.file_size_bytes)",
                              f"AND coalesce(m.file_size_bytes, 0) > ?{scope}", project=None)
    row = await store.fetchone(sql, (*params, room, *sp))
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
    project: str = DEFAULT_PROJECT


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
    store: Database, *, project: str | None = None,
    on_file: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Re-hash every recorded file (of one project, or of all); a missing or altered one is
    removed and re-queued."""
    scope, sp = _scope(_only(project))
    rows = await store.fetchall(
        "SELECT m.project, m.id, m.recording_id, m.local_path, m.local_size_bytes, m.sha256 "  # noqa: S608
        f"FROM media m WHERE m.local_path IS NOT NULL{scope} "
        "ORDER BY m.project, m.recording_id, m.id", sp)
    report = VerifyReport()
    for i, (proj, media_id, rec_id, local, size, sha256) in enumerate(rows):
        path = Path(local)
        why = await asyncio.to_thread(_check_file, path, size, sha256)
        report.checked += 1
        if why is None:
            report.ok += 1
            report.bytes += int(size or 0)
        else:
            if why != "missing":  # an altered file must not be adopted back as it is
                await asyncio.to_thread(fs.remove, path)
            async with store.transaction() as conn:
                await conn.execute(f"UPDATE media SET {_CLEAR_FILE} "  # noqa: S608
                                   "WHERE project = ? AND id = ?", (proj, media_id))
            report.problems.append(Problem(media_id, rec_id, str(path), why, proj))
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


async def prune_deleted(
    store: Database, media: MediaConfig, *, project: str | None = None, dry_run: bool = False,
) -> PruneReport:
    """Remove the files of tombstoned recordings (kept until now) and forget them: of one
    project, or of all."""
    files_dir = Path(media.files_dir).resolve()
    scope, sp = _scope(_only(project))
    rows = await store.fetchall(
        f"SELECT m.project, m.id, m.recording_id, m.local_path, m.mime_type {_FROM} "
        f"WHERE r.deleted_at IS NOT NULL{scope} ORDER BY m.project, m.recording_id", sp)
    report = PruneReport(dry_run=dry_run)
    recordings: set[tuple[str, str]] = set()
    for proj, media_id, rec_id, local, mime in rows:
        root = fs.project_root(files_dir, proj)
        paths = {fs.final_path(root, rec_id, media_id, mime), fs.part_path(root, rec_id, media_id),
                 *await asyncio.to_thread(fs.finals, root, rec_id, media_id)}
        if local:
            paths.add(Path(local))
        sizes = {p: await asyncio.to_thread(fs.size_of, p) for p in paths}
        present = [p for p, n in sizes.items() if n is not None]
        if not present:
            continue
        recordings.add((proj, rec_id))
        report.files += len(present)
        report.bytes += sum(n or 0 for n in sizes.values())
        if dry_run:
            continue
        for p in present:
            await asyncio.to_thread(fs.remove, p)
            await asyncio.to_thread(fs.remove_dir_if_empty, p.parent)
        async with store.transaction() as conn:
            await conn.execute(f"UPDATE media SET {_CLEAR_FILE} "  # noqa: S608
                               "WHERE project = ? AND id = ?", (proj, media_id))
    report.recordings = len(recordings)
    return report


async def retry_failed(store: Database, media: MediaConfig, *, project: str | None = None) -> int:
    """Put the given-up items (of one project, or of all) back in the queue with a fresh
    count of attempts."""
    where, params = wanted_sql(media.types, project)
    async with store.transaction() as conn:
        gave_up = f"SELECT m.project, m.id {_FROM} WHERE {where} AND {GAVE_UP}"
        sql = "UPDATE media SET download_attempts = 0, download_error = NULL, "
        sql += f"download_next_at = NULL WHERE (project, id) IN ({gave_up})"
        cur = await conn.execute(sql, params)
        return int(cur.rowcount)


@dataclass(frozen=True)
class DownloadReport:
    """What `files download` did: files and bytes, whether the queue drained; the same
    for each project under `projects`."""

    files: int
    bytes: int
    failures: int
    drained: bool
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)


def total_stats(stats: Iterable[DownloadStats]) -> DownloadStats:
    """The stats of several downloaders (one per project) added up, for one progress bar."""
    out = DownloadStats()
    for s in stats:
        for name, value in asdict(s).items():
            setattr(out, name, getattr(out, name) + value)
    return out


async def download_now(
    cfg: Config, *, within_s: float, on_progress: Callable[[DownloadStats], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None, project: str | None = None,
) -> DownloadReport:
    """Run the download queue until it is empty (or `within_s`), whatever `download` says:
    of one project, or (None) of every configured project side by side, each with its
    own client and budgets, as the daemon runs them."""
    views = [cfg.for_project(project)] if project is not None else cfg.each_project()
    for view in views:  # every key before any download
        config.require_key(view)
    media = cfg.media.model_copy(update={"download": True})
    async with await open_store(cfg.database) as store:
        if on_start:
            on_start(await _status(store, media, [v.project for v in views]))
        async with contextlib.AsyncExitStack() as stack:
            loaders: list[Downloader] = []
            for view in views:
                client = await stack.enter_async_context(BotaClient.for_project(
                    view.api, view.project, download_per_minute=media.requests_per_minute))
                loaders.append(await stack.enter_async_context(Downloader(
                    store, client, media, project=view.project,
                    on_progress=on_progress and (
                        lambda _s: on_progress(total_stats(d.stats for d in loaders))))))
            for dl in loaders:
                await dl.start()
            drained = await asyncio.gather(*(dl.drain(within_s) for dl in loaders))
        per = {dl.project: {"files": dl.stats.files, "bytes": dl.stats.bytes,
                            "failures": dl.stats.failures, "drained": ok}
               for dl, ok in zip(loaders, drained, strict=True)}
        total = total_stats(dl.stats for dl in loaders)
        return DownloadReport(total.files, total.bytes, total.failures, all(drained), per)


async def with_store(cfg: Config, fn: Callable[[Database], Any]) -> Any:
    """Open the configured database (which must exist) for one library call."""
    async with await open_existing(cfg.database, readonly=False) as store:
        return await fn(store)
