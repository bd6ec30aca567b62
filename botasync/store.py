"""Store: the SQLite mirror, through aiosqlite, so no query runs on the loop thread.

One connection, one lock: SQLite allows one writer anyway, and serialising reads
with writes on the same connection keeps a reader from ever seeing a transaction
that may still roll back (an event must never be delivered before it commits).
Readers in other processes use their own connections; WAL lets them read while
we write.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from botasync import migrations
from botasync.errors import MigrationError, StoreError

BUSY_TIMEOUT_MS = 10_000


def _create_private(path: Path) -> None:
    """Create the database file with mode 0600 before SQLite opens it."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)


class Store:
    """The database: open with `await Store.open(path)` or `async with Store.open(path)`."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Open (creating it 0600 if new), set WAL and busy timeout, run migrations."""
        p = Path(path)
        try:
            _create_private(p)
            conn = await aiosqlite.connect(p, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open database {p}: {_why(e)}") from None
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
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

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            await self._conn.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction (BEGIN IMMEDIATE): commits on exit, rolls back on error."""
        async with self._lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"database {self.path}: {_why(e)}") from None
            try:
                yield self._conn
                await self._conn.commit()
            except BaseException as e:
                try:
                    await self._conn.rollback()
                except sqlite3.Error:
                    pass
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"database {self.path}: {_why(e)}") from None
                raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for reads, between transactions."""
        async with self._lock:
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
