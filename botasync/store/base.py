"""What every store offers, whichever database is under it (`sqlite.Store`, `postgres.PgStore`).

The code above the store speaks to this surface only: `transaction()` (one write
transaction, serialised with every other writer of the database) and `read()` yield a
connection whose `execute(sql, params)` can be awaited or used with `async with` and gives
a cursor (`fetchall`, `fetchone`, `fetchmany`, `rowcount`, `lastrowid`), and whose
`executemany(sql, rows)` runs one statement for many rows. Rows read by index and, from
`fetchall`/`fetchone` here, by column name (`keys()`). The SQL is SQLite's with `?`
placeholders in the subset both engines share (`store/dialect.py`); where a statement
truly differs the caller asks `dialect`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self


class Database(Protocol):
    """A store: the mirror's database, SQLite or PostgreSQL."""

    dialect: str  # "sqlite" | "postgres"
    readonly: bool  # opened by `open_readonly`: nothing is written
    path: Path  # where the process's local lock files go (the SQLite file itself)

    @property
    def where(self) -> str:
        """The database for a message: its path, or its URL without a password."""
        ...

    def transaction(self, *, background: bool = False) -> AbstractAsyncContextManager[Any]: ...

    def read(self, *, background: bool = False) -> AbstractAsyncContextManager[Any]: ...

    def foreground(self) -> AbstractAsyncContextManager[None]: ...

    async def fetchall(self, sql: str, params: Any = ()) -> list[Any]: ...

    async def fetchone(self, sql: str, params: Any = ()) -> Any | None: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None,
    ) -> None: ...


class ForegroundPasses:
    """Latency-sensitive passes (the daemon's tick) go before background work (the
    transcript worker): `foreground()` marks a pass for as long as it runs, and a store
    lets `background=True` work take the database only while none runs, so a tick never
    queues behind a transcript's write (its segments and index rows)."""

    def __init__(self) -> None:
        self._foreground = 0
        self._no_foreground = asyncio.Event()
        self._no_foreground.set()

    @asynccontextmanager
    async def foreground(self) -> AsyncIterator[None]:
        self._foreground += 1
        self._no_foreground.clear()
        try:
            yield
        finally:
            self._foreground -= 1
            if not self._foreground:
                self._no_foreground.set()
