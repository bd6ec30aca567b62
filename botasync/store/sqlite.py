"""Store: the SQLite mirror, through aiosqlite, so no query runs on the loop thread.

One connection, one lock: SQLite allows one writer anyway, and serialising reads
with writes on the same connection keeps a reader from ever seeing a transaction
that may still roll back (an event must never be delivered before it commits).
Readers in other processes use their own connections; WAL lets them read while
we write.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Container, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from botasync.api.models import Recording
from botasync.envelope import DEFAULT_PROJECT, Event
from botasync.errors import MigrationError, StoreError
from botasync.jsoncodec import dumps, loads
from botasync.lifecycle import AsyncClosing
from botasync.store import migrations, transcript_queue
from botasync.store.base import Database, ForegroundPasses
from botasync.store.dialect import SQLITE

BUSY_TIMEOUT_MS = 10_000


def _create_private(path: Path) -> None:
    """Create the database file with mode 0600 before SQLite opens it."""
    if path.exists():
        return
    if path.parent.exists() and not path.parent.is_dir():
        # mkdir would fail with "file exists", which hides what is wrong
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)


async def _connect(path: Path) -> aiosqlite.Connection:
    """`aiosqlite.connect`, except that a failed open waits for its worker thread.

    On a failed connect aiosqlite queues its thread's stop without waiting for it; when the
    loop closes first (the CLI exiting on the error) the thread prints a traceback.
    """
    pending = aiosqlite.connect(path, isolation_level=None)
    try:
        return await pending
    except BaseException:
        await asyncio.to_thread(pending._thread.join, 5.0)
        raise


async def _connect_uri(uri: str) -> aiosqlite.Connection:
    """`_connect` for a `file:` URI (read-only opening)."""
    pending = aiosqlite.connect(uri, isolation_level=None, uri=True)
    try:
        return await pending
    except BaseException:
        await asyncio.to_thread(pending._thread.join, 5.0)
        raise


# SQLITE_READONLY_CANTINIT, SQLITE_READONLY_DIRECTORY: no -shm can be made or used
_RO_NEEDS_SHM = (1288, 1544)


async def _open_ro(uri: str) -> aiosqlite.Connection:
    """Connect read-only and check the schema version (the first read of the file)."""
    conn = await _connect_uri(uri)
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA query_only = ON")
        version = await migrations.current_version(conn)
        migrations.pending_steps(version)  # a newer schema: one line
        if version < migrations.LATEST:
            raise MigrationError(
                f"database schema version {version} is older than this botasync's "
                f"({migrations.LATEST}): run `botasync sync` (or restart the daemon) once "
                "to upgrade it")
    except BaseException:
        await conn.close()
        raise
    return conn


class Store(ForegroundPasses, AsyncClosing):
    """The database: open with `await Store.open(path)` or `async with Store.open(path)`."""

    dialect = SQLITE

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = asyncio.Lock()
        ForegroundPasses.__init__(self)
        self._closed = False
        self.readonly = False  # opened by `open_readonly`

    @property
    def where(self) -> str:
        """The database for a message: its file."""
        return str(self.path)

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Open (creating it 0600 if new), set WAL and busy timeout, run migrations."""
        p = Path(path)
        try:
            await asyncio.to_thread(_create_private, p)
            conn = await _connect(p)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open database {p}: {_why(e)}") from None
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # refuse a newer schema before touching anything (WAL mode rewrites the header)
            migrations.pending_steps(await migrations.current_version(conn))
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await migrations.apply(conn)
        except MigrationError:
            await conn.close()
            raise
        except sqlite3.Error as e:
            await conn.close()
            raise StoreError(f"cannot open database {p}: {_why(e)}") from None
        return cls(conn, p)

    @classmethod
    async def open_readonly(cls, path: str | Path) -> Store:
        """Open an existing database to read only: SQLite `mode=ro`, no migration, no WAL
        switch, nothing written; a user with read access alone can query it.

        An older schema than this botasync's is refused with one line (the daemon, or any
        command that writes, upgrades it); a newer one too.
        """
        p = Path(path)
        if not p.is_file():
            raise StoreError(f"no database at {p}: run `botasync sync` or `botasync run` first")
        uri = f"{p.resolve().as_uri()}?mode=ro"
        try:
            try:
                conn = await _open_ro(uri)
            except sqlite3.Error as e:
                # WAL needs a -shm file beside the database: in a directory we cannot write,
                # with no -wal left by a writer, everything is in the file and nobody can
                # be writing it; read it as it is
                if getattr(e, "sqlite_errorcode", None) not in _RO_NEEDS_SHM or Path(
                        f"{p}-wal").exists():
                    raise
                conn = await _open_ro(uri + "&immutable=1")
        except MigrationError:
            raise
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open database {p}: {_why(e)}") from None
        store = cls(conn, p)
        store.readonly = True
        return store

    async def aclose(self) -> None:
        """Close the connection; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            await self._conn.close()

    @asynccontextmanager
    async def _locked(self, background: bool) -> AsyncIterator[None]:
        """The connection's lock; in the background, only between foreground passes."""
        while True:
            if background:
                await self._no_foreground.wait()
            await self._lock.acquire()
            if not background or not self._foreground:
                break
            self._lock.release()  # a pass began while we queued: it goes first
        try:
            yield
        finally:
            self._lock.release()

    @asynccontextmanager
    async def transaction(
        self, *, background: bool = False
    ) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction (BEGIN IMMEDIATE): commits on exit, rolls back on error.

        `background`: wait for no foreground pass to be running (see `foreground`).
        """
        async with self._locked(background):
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"database {self.path}: {_why(e)}") from None
            except asyncio.CancelledError:
                # the BEGIN runs on aiosqlite's thread all the same: undo it (queued after
                # it), or the connection stays inside a transaction nobody will end
                with suppress(sqlite3.Error):
                    await asyncio.shield(self._conn.rollback())
                raise
            try:
                yield self._conn
                await self._conn.commit()
            except BaseException as e:
                with suppress(sqlite3.Error):
                    await self._conn.rollback()
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"database {self.path}: {_why(e)}") from None
                raise

    @asynccontextmanager
    async def read(self, *, background: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for reads, between transactions (`background`: as `transaction`)."""
        async with self._locked(background):
            try:
                yield self._conn
            except sqlite3.Error as e:
                raise StoreError(f"database {self.path}: {_why(e)}") from None

    async def fetchall(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """Run one query and return its rows (as `sqlite3.Row`, readable by name)."""
        async with self.read() as conn:
            conn.row_factory = sqlite3.Row
            try:
                async with conn.execute(sql, params) as cur:
                    return list(await cur.fetchall())
            finally:
                conn.row_factory = None

    async def fetchone(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        """Run one query and return its first row, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


def _why(e: BaseException) -> str:
    """A short reason for a sqlite or OS error, for a one-line message."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


# --- the mirror: what a pass reads and writes -------------------------------------------


@dataclass(frozen=True)
class Upsert:
    """One recording to write: validated, as received, and the list item's fingerprint."""

    recording: Recording
    raw: dict[str, Any]
    fingerprint: str | None
    is_new: bool


@dataclass
class PageWrite:
    """Everything one page changes; written in one transaction, events included."""

    upserts: list[Upsert] = field(default_factory=list)
    tombstones: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    backfill: bool = False

    def __bool__(self) -> bool:
        return bool(self.upserts or self.tombstones or self.events)


_UPSERT_RECORDING = """
INSERT INTO recordings (project, id, device_id, end_user_id, name, status, duration_ms,
    started_at, ended_at, transcription_id, metadata, created_at, recorded_at, updated_at,
    source, project_id, file_size_bytes, content_sha256, raw, fingerprint, first_seen_at,
    synced_at, deleted_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)
ON CONFLICT(project, id) DO UPDATE SET
    device_id = excluded.device_id, end_user_id = excluded.end_user_id, name = excluded.name,
    status = excluded.status, duration_ms = excluded.duration_ms,
    started_at = excluded.started_at, ended_at = excluded.ended_at,
    transcription_id = excluded.transcription_id, metadata = excluded.metadata,
    created_at = excluded.created_at, recorded_at = excluded.recorded_at,
    updated_at = excluded.updated_at, source = excluded.source,
    project_id = excluded.project_id, file_size_bytes = excluded.file_size_bytes,
    content_sha256 = excluded.content_sha256, raw = excluded.raw,
    fingerprint = excluded.fingerprint, synced_at = excluded.synced_at, deleted_at = NULL
"""

_UPSERT_MEDIA = """
INSERT INTO media (project, id, recording_id, position, type, mime_type, file_size_bytes,
    status, captured_at, created_at, raw)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(project, id) DO UPDATE SET
    recording_id = excluded.recording_id, position = excluded.position, type = excluded.type,
    mime_type = excluded.mime_type, file_size_bytes = excluded.file_size_bytes,
    status = excluded.status, captured_at = excluded.captured_at,
    created_at = excluded.created_at, raw = excluded.raw
"""


def _recording_row(project: str, u: Upsert, now: str) -> tuple[Any, ...]:
    r = u.recording
    meta = dumps(r.metadata) if r.metadata is not None else None
    return (
        project, r.id, r.device_id, r.end_user_id, r.name, r.status, r.duration_ms, r.started_at,
        r.ended_at, r.transcription_id, meta, r.created_at, r.recorded_at, r.updated_at,
        r.source, r.project_id, r.file_size_bytes, r.content_sha256, dumps(u.raw),
        u.fingerprint, now, now,
    )


def _media_rows(project: str, u: Upsert) -> list[tuple[Any, ...]]:
    return [
        (project, m.id, u.recording.id, i, m.type, m.mime_type, m.file_size_bytes, m.status,
         m.captured_at, m.created_at, dumps(raw))
        for i, (m, raw) in enumerate(u.recording.files(u.raw) or [])
    ]


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def _write_page(
    conn: Any, project: str, page: PageWrite, now: str,
) -> None:
    """Upserts, media, tombstones and their events, inside the caller's transaction."""
    await conn.executemany(
        _UPSERT_RECORDING, [_recording_row(project, u, now) for u in page.upserts])
    for u in page.upserts:
        files = u.recording.files(u.raw)
        if not u.is_new and files is not None:
            keep = [m.id for m, _ in files]
            # `IN ()` is SQLite's alone: no media left is no condition on the ids
            others = f" AND id NOT IN ({','.join('?' * len(keep))})" if keep else ""
            await conn.execute(
                f"DELETE FROM media WHERE project = ? AND recording_id = ?{others}",  # noqa: S608
                (project, u.recording.id, *keep),
            )
    await conn.executemany(
        _UPSERT_MEDIA, [row for u in page.upserts for row in _media_rows(project, u)])
    # recordings that can now have a transcript are queued with their row (once turned on)
    await transcript_queue.enqueue_rows(
        conn, project, page.upserts, now, backfill=page.backfill)
    await conn.executemany(
        "UPDATE recordings SET deleted_at = ? "
        "WHERE project = ? AND id = ? AND deleted_at IS NULL",
        [(now, project, rid) for rid in page.tombstones],
    )
    await insert_events(conn, page.events, backfill=page.backfill)


async def insert_events(
    conn: Any, events: Sequence[Event], *, backfill: bool = False,
) -> None:
    """Put events in the outbox, inside the caller's transaction (with the change they
    announce)."""
    await conn.executemany(
        "INSERT INTO events (id, type, recording_id, created_at, payload, backfill, project) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(e.id, e.type, e.recording_id, e.created_at, dumps(e.envelope()), int(backfill),
          e.project) for e in events],
    )


# decides a page from the stored rows (live ones) and the ids written since it was read
Build = Callable[[dict[str, dict[str, Any]], set[str]], PageWrite]


class Mirror:
    """The queries a pass makes, for one project; a thin layer over `Store` that speaks
    recordings. `project=SERVICE` ('') reads and writes the service's own `state` rows."""

    def __init__(self, store: Database, project: str = DEFAULT_PROJECT) -> None:
        self.store = store
        self.project = project

    async def fingerprints(self, ids: Sequence[str]) -> dict[str, tuple[str | None, bool]]:
        """id -> (stored fingerprint, is tombstoned) for the ids that are stored."""
        out: dict[str, tuple[str | None, bool]] = {}
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            rows = await self.store.fetchall(
                f"SELECT id, fingerprint, deleted_at FROM recordings "  # noqa: S608
                f"WHERE project = ? AND id IN ({marks})",
                (self.project, *chunk),
            )
            out.update({r[0]: (r[1], r[2] is not None) for r in rows})
        return out

    async def live_ids(self, *, status: str | None = None) -> list[str]:
        """Ids of stored recordings not tombstoned, optionally of one status."""
        if status is None:
            rows = await self.store.fetchall(
                "SELECT id FROM recordings WHERE project = ? AND deleted_at IS NULL",
                (self.project,))
        else:
            rows = await self.store.fetchall(
                "SELECT id FROM recordings WHERE project = ? AND deleted_at IS NULL "
                "AND status = ?", (self.project, status))
        return [r[0] for r in rows]

    async def live_ids_not_in(self, seen: Container[str]) -> list[str]:
        """Stored live ids a walk did not see, read in batches: memory stays flat."""
        out: list[str] = []
        async with self.store.read() as conn:
            async with conn.execute(
                    "SELECT id FROM recordings WHERE project = ? AND deleted_at IS NULL",
                    (self.project,)) as cur:
                while rows := await cur.fetchmany(5000):
                    out.extend(r[0] for r in rows if r[0] not in seen)
        return out

    async def live_ids_created_after(self, created_at: str) -> list[str]:
        """Live ids newer than a timestamp: what a resumed walk covered before it stopped."""
        rows = await self.store.fetchall(
            "SELECT id FROM recordings WHERE project = ? AND deleted_at IS NULL "
            "AND created_at > ?", (self.project, created_at))
        return [r[0] for r in rows]

    async def live_ids_in_unknown_status(self, known: Sequence[str]) -> list[str]:
        """Live ids whose status is none of `known`: watched by id, never listed by it."""
        marks = ",".join("?" * len(known))
        rows = await self.store.fetchall(
            f"SELECT id FROM recordings WHERE project = ? AND deleted_at IS NULL "  # noqa: S608
            f"AND status NOT IN ({marks})",
            (self.project, *known),
        )
        return [r[0] for r in rows]

    async def newest_live_id(self) -> str | None:
        """The live recording the list shows first (newest `created_at`, then id)."""
        row = await self.store.fetchone(
            "SELECT id FROM recordings WHERE project = ? AND deleted_at IS NULL "
            "ORDER BY created_at DESC NULLS LAST, id DESC LIMIT 1", (self.project,))
        return str(row[0]) if row else None

    async def count(self) -> int:
        row = await self.store.fetchone(
            "SELECT count(*) FROM recordings WHERE project = ?", (self.project,))
        return int(row[0]) if row else 0

    async def apply(
        self, ids: Sequence[str], build: Build, now: str, read_at: str | None = None
    ) -> PageWrite:
        """Read the stored rows of `ids`, let `build` decide the page, write it: one transaction.

        Reading the old rows inside the transaction keeps two passes that see the same
        change (a head pass and a reconcile walk) from both announcing it. `build` also
        gets the ids written (or tombstoned) after `read_at`, when the page's data was
        read: their stored state may be newer than the page's. The write is shielded: a
        pass cancelled at shutdown still commits the page in hand.
        """
        return await asyncio.shield(asyncio.ensure_future(self._apply(ids, build, now, read_at)))

    async def _apply(
        self, ids: Sequence[str], build: Build, now: str, read_at: str | None
    ) -> PageWrite:
        async with self.store.transaction() as conn:
            old: dict[str, dict[str, Any]] = {}
            newer: set[str] = set()
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                sql = ("SELECT id, raw, deleted_at, synced_at FROM recordings "  # noqa: S608
                       f"WHERE project = ? AND id IN ({marks})")
                async with conn.execute(sql, (self.project, *chunk)) as cur:
                    for rid, raw, deleted_at, synced_at in await cur.fetchall():
                        if deleted_at is None:
                            old[rid] = loads(raw)
                        if read_at is not None and max(synced_at, deleted_at or "") > read_at:
                            newer.add(rid)
            page = build(old, newer)
            if page:
                await _write_page(conn, self.project, page, now)
            return page

    # -- state and the pass log --

    async def get_state(self, key: str) -> str | None:
        row = await self.store.fetchone(
            "SELECT value FROM state WHERE project = ? AND key = ?", (self.project, key))
        return str(row[0]) if row else None

    async def set_state(self, key: str, value: str) -> None:
        async with self.store.transaction() as conn:
            await conn.execute(
                "INSERT INTO state (project, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT(project, key) DO UPDATE SET value = excluded.value",
                (self.project, key, value),
            )

    async def start_run(
        self, kind: str, now: str, position: int | None = None, cursor: str | None = None,
    ) -> int:
        async with self.store.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO sync_runs (project, kind, started_at, position, cursor) "
                "VALUES (?, ?, ?, ?, ?)",
                (self.project, kind, now, position, cursor),
            )
            return int(cur.lastrowid or 0)

    async def update_run(self, run_id: int, counts: Mapping[str, Any]) -> None:
        """Write a run's counters (and checkpoint `position`, `ended_at`, `error`...)."""
        cols = ", ".join(f"{k} = ?" for k in counts)
        async with self.store.transaction() as conn:
            await conn.execute(
                f"UPDATE sync_runs SET {cols} WHERE id = ?",  # noqa: S608
                (*counts.values(), run_id),
            )

    async def interrupted_walk(
        self, kinds: Sequence[str],
    ) -> tuple[int, int, str | None] | None:
        """The last walk of these kinds if it did not complete: (run id, position, cursor).

        By offset the position is the next offset; by cursor, the items walked so far
        and the cursor to go on from.
        """
        marks = ",".join("?" * len(kinds))
        row = await self.store.fetchone(
            "SELECT id, position, complete, cursor FROM sync_runs "  # noqa: S608
            f"WHERE project = ? AND kind IN ({marks}) ORDER BY id DESC LIMIT 1",
            (self.project, *kinds),
        )
        if row is None or row[2] or not row[1]:  # position 0: nothing to resume
            return None
        return int(row[0]), int(row[1]), row[3]

    async def prune_runs(self, before: str) -> int:
        """Forget quiet ticks (head/hot passes that changed nothing) older than `before`.

        At one tick a minute they would otherwise add a million rows a year; passes that
        changed something, failed, or walked everything are kept.
        """
        async with self.store.transaction() as conn:
            cur = await conn.execute(
                "DELETE FROM sync_runs WHERE kind IN ('head', 'hot') AND started_at < ? "
                "AND created = 0 AND updated = 0 AND deleted = 0 AND invalid = 0 "
                "AND error IS NULL",
                (before,),
            )
            return int(cur.rowcount or 0)

    async def supersede_run(self, run_id: int) -> None:
        """A walk taken over by a resumed one: no longer resumable itself."""
        async with self.store.transaction() as conn:
            await conn.execute(
                "UPDATE sync_runs SET position = NULL, cursor = NULL, "
                "error = coalesce(error, 'interrupted') "
                "WHERE id = ?",
                (run_id,),
            )
