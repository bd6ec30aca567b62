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

from contextlib import AbstractAsyncContextManager
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

    def transaction(self) -> AbstractAsyncContextManager[Any]: ...

    def read(self) -> AbstractAsyncContextManager[Any]: ...

    async def fetchall(self, sql: str, params: Any = ()) -> list[Any]: ...

    async def fetchone(self, sql: str, params: Any = ()) -> Any | None: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None,
    ) -> None: ...
