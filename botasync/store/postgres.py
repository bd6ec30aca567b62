"""PgStore: the store on PostgreSQL, through psycopg 3 and a small connection pool.

The same surface as the SQLite `Store` (`store/base.py`), and the same SQL: each statement
goes through `dialect.translate` (placeholders, the few SQLite forms with a PostgreSQL
equivalent) once, cached.

Writers are serialised as SQLite serialises them (one writer at a time, BEGIN IMMEDIATE):
every write transaction starts by taking one transaction-level advisory lock
(`pg_advisory_xact_lock`, the same key for every project of the database), held until it
commits or rolls back. So the read-then-write logic written for SQLite stays correct, in
this process and across processes, and the outbox's `seq` values commit in the order they
were drawn: a dispatcher reading past its cursor never skips an event that commits later.
Within a process, writers first queue on an asyncio lock (holding no connection), so only
one of them waits on the database's lock. Reads run on their own pooled connections
(autocommit) and see only committed data.

Rows read by index and by name (`Row`); JSONB reads back as text (the code `loads()` it,
as it does SQLite's JSON text); `numeric` (what `sum()` of integers gives) as int (or float
when it has a fraction); a Python bool is written as 1 or 0, as SQLite stores it.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.adapt import Buffer, Dumper, Loader
from psycopg.pq import Format
from psycopg.rows import RowMaker
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool

from botasync.config import redact_database_url as redact_url
from botasync.errors import MigrationError, StoreError
from botasync.lifecycle import AsyncClosing
from botasync.logging import add_secret
from botasync.store import migrations
from botasync.store.base import ForegroundPasses
from botasync.store.dialect import POSTGRES, translate

# pg_advisory_xact_lock's key for the writers of a database: "botasync" in ASCII
WRITER_LOCK = 0x626F746173796E63
# the session that holds it (`pg_locks` splits a bigint key in two 32-bit halves)
_LOCK_HOLDER = """
SELECT a.pid, a.application_name, a.state, a.wait_event, a.state_change
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid::bigint = %s AND l.objid::bigint = %s AND a.datname = current_database()
"""
POOL_MAX = 4  # connections: the daemon's readers beside one writer at a time
CONNECT_TIMEOUT_S = 10
_INT8_OID = 20

# tables whose key PostgreSQL draws (identity): an INSERT returns it for `lastrowid`
_IDENTITY = {"events": "seq", "sync_runs": "id", "transcript_segments": "id"}
_INSERT_INTO = re.compile(r"\s*INSERT\s+INTO\s+(\w+)", re.I)


def url_password(url: str) -> str | None:
    """The password in a connection URL or string, if it holds one (for log scrubbing)."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        return None
    return str(password) if password else None


def _why(e: BaseException) -> str:
    """A PostgreSQL or psycopg error as one short line."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# --- rows --------------------------------------------------------------------------------


class Row(tuple[Any, ...]):
    """A result row: a tuple that also reads by column name (`row["id"]`, `keys()`), as
    `sqlite3.Row` does."""

    _names: ClassVar[tuple[str, ...]] = ()
    _index: ClassVar[dict[str, int]] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._index[key])
            except KeyError:
                raise IndexError(f"no such column: {key}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)  # the first of two same-named columns, as sqlite3.Row
    return type("Row", (Row,), {"_names": names, "_index": index})


def _row_factory(cursor: AsyncCursor[Any]) -> RowMaker[Row]:
    desc = cursor.description
    cls = _row_class(tuple(c.name for c in desc) if desc else ())
    return cls


# --- adaptation --------------------------------------------------------------------------


class _BoolAsInt(Dumper):
    """True/False as 1/0 into the INTEGER (BIGINT) columns that hold flags, as in SQLite."""

    oid = _INT8_OID
    format = Format.TEXT

    def dump(self, obj: Any) -> Buffer:
        return b"1" if obj else b"0"


class _NumericAsNumber(Loader):
    """`numeric` (sum() of integers, avg()) as int when whole, else float: what SQLite gives."""

    def load(self, data: Buffer) -> Any:
        text = bytes(data).decode()
        try:
            return int(text)
        except ValueError:
            return float(text)


async def _configure(conn: AsyncConnection[Any]) -> None:
    conn.adapters.register_dumper(bool, _BoolAsInt)
    conn.adapters.register_loader("jsonb", TextLoader)
    conn.adapters.register_loader("json", TextLoader)
    conn.adapters.register_loader("numeric", _NumericAsNumber)
    conn.row_factory = _row_factory


def _writer_configure(
    idle_in_transaction_s: float | None, lock_wait_s: float | None,
) -> Callable[[AsyncConnection[Any]], Awaitable[None]]:
    settings = {"idle_in_transaction_session_timeout": idle_in_transaction_s,
                "lock_timeout": lock_wait_s}
    sets = [f"SET {name} = {max(1, round(s * 1000))}" for name, s in settings.items() if s]
    if not sets:
        return _configure

    async def configure(conn: AsyncConnection[Any]) -> None:
        await _configure(conn)
        for statement in sets:
            await conn.execute(statement)

    return configure


async def _configure_readonly(conn: AsyncConnection[Any]) -> None:
    await _configure(conn)
    await conn.execute("SET default_transaction_read_only = on")


# --- connections and cursors -------------------------------------------------------------


def _params(params: Any) -> Sequence[Any] | Mapping[str, Any]:
    """Parameters as psycopg takes them: always some (so `%%` is always read as `%`)."""
    if params is None:
        return ()
    if isinstance(params, Mapping):
        return params
    return tuple(params)


@functools.lru_cache(maxsize=2048)
def _returning(sql: str) -> tuple[str, str | None]:
    """An INSERT into a table with an identity key, made to return the key (`lastrowid`)."""
    m = _INSERT_INTO.match(sql)
    key = _IDENTITY.get(m.group(1).lower()) if m else None
    if key is None or re.search(r"\bRETURNING\b", sql, re.I):
        return sql, None
    return f"{sql.rstrip().rstrip(';')} RETURNING {key}", key


class PgCursor:
    """What `execute` gives: aiosqlite's cursor surface over a psycopg cursor."""

    def __init__(self, cur: AsyncCursor[Any], lastrowid: int | None = None) -> None:
        self._cur = cur
        self.lastrowid = lastrowid

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    async def fetchall(self) -> list[Any]:
        if self._cur.description is None:  # a statement without rows
            return []
        return await self._cur.fetchall()

    async def fetchone(self) -> Any | None:
        if self._cur.description is None:
            return None
        return await self._cur.fetchone()

    async def fetchmany(self, size: int) -> list[Any]:
        if self._cur.description is None:
            return []
        return await self._cur.fetchmany(size)

    async def close(self) -> None:
        await self._cur.close()


class _Execution:
    """`conn.execute(...)`: awaited, a cursor; or `async with`, a cursor closed after."""

    def __init__(self, conn: AsyncConnection[Any], sql: str, params: Any) -> None:
        self._conn = conn
        self._sql = sql
        self._params = params
        self._cursor: PgCursor | None = None

    async def _run(self) -> PgCursor:
        sql, key = _returning(translate(self._sql))
        cur = self._conn.cursor()
        await cur.execute(sql, _params(self._params))
        lastrowid = None
        if key is not None:
            rows = await cur.fetchall()
            lastrowid = int(rows[-1][0]) if rows else None
        self._cursor = PgCursor(cur, lastrowid)
        return self._cursor

    def __await__(self) -> Any:
        return self._run().__await__()

    async def __aenter__(self) -> PgCursor:
        return await self._run()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class PgConnection:
    """The connection a `PgStore` yields: `execute`, `executemany`, in SQLite's SQL."""

    dialect = POSTGRES

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Any = ()) -> _Execution:
        return _Execution(self.raw, sql, params)

    async def executemany(self, sql: str, rows: Iterable[Any]) -> PgCursor:
        cur = self.raw.cursor()
        await cur.executemany(translate(sql), [_params(r) for r in rows])
        return PgCursor(cur)


# --- the store ---------------------------------------------------------------------------


class PgStore(ForegroundPasses, AsyncClosing):
    """The database on PostgreSQL: `await PgStore.open(url)` or `async with ...`."""

    dialect = POSTGRES

    def __init__(self, pool: AsyncConnectionPool[Any], url: str, path: Path,
                 readonly: bool, lock_wait_s: float | None = None) -> None:
        ForegroundPasses.__init__(self)
        self._pool = pool
        self.url = url
        self.path = path
        self.readonly = readonly
        self.lock_wait_s = lock_wait_s
        self._closed = False
        # this process's writers queue here, holding no connection, and one at a time take
        # the database's lock: a burst of writers never drains the pool
        self._writers = asyncio.Lock()

    @property
    def where(self) -> str:
        return redact_url(self.url)

    @classmethod
    async def open(cls, url: str, *, lock_path: str | Path = "botasync.db",
                   idle_in_transaction_s: float | None = None,
                   lock_wait_s: float | None = None,
                   application_name: str | None = None) -> PgStore:
        """Connect, and bring the schema to the latest version (the writers' lock held).

        `idle_in_transaction_s`: the server ends a session that sits that long inside a
        transaction (PostgreSQL's `idle_in_transaction_session_timeout`). A worker paused in
        the middle of a write (a stopped VM) holds the writers' lock and its lease's row
        lock: without it, every other worker of the database would wait for it to wake.
        (Paused in the middle of a statement, it is not idle: the live workers end the
        sessions of a dead worker, found by `application_name`, `store/leases.py`.)

        `lock_wait_s`: a wait for a lock (the writers' lock, mostly) longer than this fails
        the write with one line naming the session that holds it (`lock_timeout`).

        `application_name`: the sessions' name on the server (`pg_stat_activity`); a
        worker's is its id."""
        store = await cls._connect(url, lock_path, readonly=False,
                                   idle_in_transaction_s=idle_in_transaction_s,
                                   lock_wait_s=lock_wait_s, application_name=application_name)
        try:
            await migrations.apply_pg(store.transaction)
        except BaseException:
            await store.aclose()
            raise
        return store

    @classmethod
    async def open_readonly(cls, url: str, *, lock_path: str | Path = "botasync.db") -> PgStore:
        """Connect for reads only (`default_transaction_read_only`): no migration; an older
        schema is refused with one line, as on SQLite."""
        store = await cls._connect(url, lock_path, readonly=True)
        try:
            async with store.read() as conn:
                version = await migrations.pg_current_version(conn)
            if version == 0:
                raise StoreError(f"no botasync database at {store.where}: run `botasync sync` "
                                 "or `botasync run` first")
            migrations.pending_steps(version)  # a newer schema: one line
            if version < migrations.LATEST:
                raise MigrationError(
                    f"database schema version {version} is older than this botasync's "
                    f"({migrations.LATEST}): run `botasync sync` (or restart the daemon) "
                    "once to upgrade it")
        except BaseException:
            await store.aclose()
            raise
        return store

    @classmethod
    async def _connect(cls, url: str, lock_path: str | Path, *, readonly: bool,
                       idle_in_transaction_s: float | None = None,
                       lock_wait_s: float | None = None,
                       application_name: str | None = None) -> PgStore:
        password = url_password(url)
        if password:
            add_secret(password)
        where = redact_url(url)
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S}
        if application_name:  # over the URL's own, if it has one: the workers need theirs
            kwargs["application_name"] = application_name
        # one connection first: its error says why (a pool's says only that it timed out)
        try:
            first = await AsyncConnection.connect(url, **kwargs)
            await first.close()
        except (psycopg.Error, OSError) as e:
            raise StoreError(f"cannot open database {where}: {_why(e)}") from None
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url, min_size=1, max_size=POOL_MAX, open=False, name="botasync", kwargs=kwargs,
            configure=_configure_readonly if readonly else _writer_configure(
                idle_in_transaction_s, lock_wait_s))
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except Exception as e:
            await pool.close()
            raise StoreError(f"cannot open database {where}: {_why(e)}") from None
        return cls(pool, url, Path(lock_path), readonly, lock_wait_s)

    async def aclose(self) -> None:
        """Close the pool; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._pool.close()

    @asynccontextmanager
    async def transaction(self, *, background: bool = False) -> AsyncIterator[PgConnection]:
        """One write transaction, the writers' lock taken first: commits on exit, rolls
        back on error. `background`: once no foreground pass runs (`foreground`)."""
        if background:
            await self._no_foreground.wait()
        try:
            async with self._writers, self._pool.connection() as raw, raw.transaction():
                await self._writers_lock(raw)
                yield PgConnection(raw)
        except psycopg.Error as e:
            raise StoreError(f"database {self.where}: {_why(e)}") from None

    async def _writers_lock(self, raw: AsyncConnection[Any]) -> None:
        """Take the writers' lock; waited for longer than `lock_wait_s`, one line that
        says who holds it (the transaction rolls back, the caller's pass fails and runs
        again on its next schedule)."""
        try:
            await raw.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
        except psycopg.errors.LockNotAvailable:
            within = f"{self.lock_wait_s:g} s" if self.lock_wait_s else "lock_timeout"
            raise StoreError(
                f"database {self.where}: the writers' lock was not free within {within}: "
                f"{await self._writers_lock_holder()}") from None

    async def _writers_lock_holder(self) -> str:
        """The session holding the writers' lock, as one phrase (its application_name is
        a worker's id), read on a connection of its own."""
        try:
            async with self._pool.connection() as raw:
                cur = await raw.execute(_LOCK_HOLDER, (WRITER_LOCK >> 32, WRITER_LOCK & 0xFFFFFFFF))
                row = await cur.fetchone()
        except psycopg.Error as e:
            return f"its holder is unknown ({_why(e)})"
        if row is None:
            return "it is free now"
        pid, name, state, wait, since = row
        # what an active session waits on says where it is stuck (ClientRead: on its client)
        doing = f"{state} ({wait})" if state == "active" and wait else state
        return f"held by session {pid} ({name or 'no application_name'}), {doing} since {since}"

    @asynccontextmanager
    async def read(self, *, background: bool = False) -> AsyncIterator[PgConnection]:
        """A connection for reads (each statement its own snapshot, committed data only)."""
        if background:
            await self._no_foreground.wait()
        try:
            async with self._pool.connection() as raw:
                yield PgConnection(raw)
        except psycopg.Error as e:
            raise StoreError(f"database {self.where}: {_why(e)}") from None

    async def fetchall(self, sql: str, params: Any = ()) -> list[Any]:
        """Run one query and return its rows (readable by index and by name)."""
        async with self.read() as conn, conn.execute(sql, params) as cur:
            return await cur.fetchall()

    async def fetchone(self, sql: str, params: Any = ()) -> Any | None:
        """Run one query and return its first row, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None
