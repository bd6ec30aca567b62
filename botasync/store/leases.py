"""The SQL of the `leases` and `workers` tables (schema step 7), on PostgreSQL.

Several `botasync run` processes share one PostgreSQL database; each Bota project and each
handler's delivery lane is worked by one of them at a time, the holder of its lease (the
arithmetic of who takes what is `service/leases.py`). Every statement here runs on a
connection of the coordinator's own, never the store's pool, and never takes the writers'
lock: a renewal must not queue behind a page write, or a busy worker would lose its
leases for being busy.

Times come from the database's clock (`now()`, read in each transaction), never from a
host's, so machines whose clocks disagree still agree on when a lease expires. They are
stored as the rest of the schema stores them, ISO 8601 UTC text, and compared as text.

Claims use `FOR UPDATE SKIP LOCKED`: two workers claiming at once each take different
rows, never wait on each other, and never take a row a writer is checking (`FENCE` locks
it `FOR SHARE` for the length of its transaction).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botasync.config import redact_database_url
from botasync.errors import StoreError

if TYPE_CHECKING:  # psycopg is imported where it is used: a SQLite service never loads it
    from psycopg import AsyncConnection

CONNECT_TIMEOUT_S = 10
CHANNEL = "botasync_events"  # NOTIFY after a commit that may hold events: wakes the lanes

# inside a write transaction, after the writers' lock: the lease as of now (the clock, not
# the transaction's start: the writers' lock may have been waited for), locked so it
# cannot change hands before this transaction commits (the split-brain fence)
FENCE = "SELECT clock_timestamp(), holder, expires_at FROM leases WHERE name = ? FOR SHARE"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"

_HEARTBEAT = """
INSERT INTO workers (id, host, pid, started_at, seen_at, expires_at)
VALUES (%(id)s, %(host)s, %(pid)s, %(now)s, %(now)s, %(expires)s)
ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at, expires_at = excluded.expires_at
"""
_ENSURE = "INSERT INTO leases (name) SELECT unnest(%s::text[]) ON CONFLICT (name) DO NOTHING"
_RENEW = """
UPDATE leases SET renewed_at = %(now)s, expires_at = %(expires)s
WHERE holder = %(me)s AND expires_at > %(now)s RETURNING name
"""
# the workers sharing the work: a one-shot `botasync sync` (its id starts with a prefix the
# caller gives) holds leases for one pass but takes no share, so it does not count
_LIVE = "SELECT count(*) FROM workers WHERE expires_at > %s AND NOT starts_with(id, %s)"
# free or expired leases among `names`, the oldest-expired first, as many as asked; and
# those of a one-shot `botasync sync` (id starting `%(one_shot)s`) that has no session left:
# killed (kill -9) before it gave them back, it would otherwise keep the next `sync`, and
# the workers, off its projects for `lease_s`. (A process paused or cut off by the network
# keeps its sessions: only its lease's expiry frees what it holds. Not so for a worker,
# whose sessions may all be reconnecting at once after a database restart.)
_CLAIM = """
UPDATE leases SET holder = %(me)s, acquired_at = %(now)s, renewed_at = %(now)s,
    expires_at = %(expires)s
WHERE name IN (
    SELECT name FROM leases
    WHERE name = ANY(%(names)s) AND (
        holder IS NULL OR expires_at IS NULL OR expires_at <= %(now)s
        OR (starts_with(holder, %(one_shot)s) AND NOT EXISTS (
            SELECT 1 FROM pg_stat_activity a WHERE a.application_name = leases.holder)))
    ORDER BY expires_at NULLS FIRST, name LIMIT %(n)s
    FOR UPDATE SKIP LOCKED)
RETURNING name
"""
_RELEASE = """
UPDATE leases SET holder = NULL, expires_at = NULL
WHERE holder = %(me)s AND name = ANY(%(names)s)
"""
_RETIRE = "DELETE FROM workers WHERE id = %s"
# who holds which of `names` now (unexpired), for the line that says why one was not taken
_HOLDERS = """
SELECT name, holder FROM leases
WHERE name = ANY(%(names)s) AND holder IS NOT NULL AND expires_at > %(now)s
"""
# end the sessions of the workers that are dead (their heartbeat ran out): a worker paused
# in the middle of a statement (the server reading the rest of a pipeline from it) is
# neither idle in a transaction nor gone, and would hold the writers' lock and its lease's
# row until it wakes. Its sessions carry its id as `application_name`.
_END_DEAD_SESSIONS = """
SELECT a.pid, w.id, a.state, a.wait_event, pg_terminate_backend(a.pid)
FROM pg_stat_activity a JOIN workers w ON w.id = a.application_name
WHERE w.expires_at <= %s AND a.pid <> pg_backend_pid() AND a.datname = current_database()
"""
_PRUNE = "DELETE FROM workers WHERE expires_at < %s"


@dataclass(frozen=True)
class EndedSession:
    """A dead worker's session this round ended: the server's pid for it, what it was doing."""

    pid: int
    worker: str
    state: str | None
    wait_event: str | None


@dataclass(frozen=True)
class WorkerId:
    """Who this process is in the `workers` table."""

    id: str
    host: str
    pid: int


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


async def _connect(url: str, application_name: str) -> AsyncConnection[Any]:
    """An autocommit connection of the coordinator's own, named for its worker."""
    import psycopg

    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True,
                                                     connect_timeout=CONNECT_TIMEOUT_S,
                                                     application_name=application_name)
    except (psycopg.Error, OSError) as e:
        raise StoreError(f"cannot open database {redact_database_url(url)}: {_why(e)}") from None


class LeaseTable:
    """The coordinator's connection to the lease tables: `async with table.round() as r`."""

    def __init__(self, conn: AsyncConnection[Any], where: str) -> None:
        self._conn = conn
        self.where = where

    @classmethod
    async def connect(cls, url: str, application_name: str) -> LeaseTable:
        """`application_name`: the worker's id, as on all its sessions (see `end_dead`)."""
        return cls(await _connect(url, application_name), redact_database_url(url))

    @property
    def broken(self) -> bool:
        return self._conn.closed or self._conn.broken

    async def aclose(self) -> None:
        await self._conn.close()

    @asynccontextmanager
    async def round(self) -> AsyncIterator[Round]:
        """One transaction on the lease tables, with the database's time at its start."""
        import psycopg

        try:
            async with self._conn.transaction():
                cur = await self._conn.execute("SELECT now()")
                row = await cur.fetchone()
                assert row is not None
                yield Round(self._conn, row[0])
        except psycopg.Error as e:
            raise StoreError(f"database {self.where}: leases: {_why(e)}") from None


class Round:
    """The statements of one round of the lease loop, inside its transaction."""

    def __init__(self, conn: AsyncConnection[Any], now: datetime) -> None:
        self._conn = conn
        self.now = now

    async def _names(self, sql: str, params: Any) -> list[str]:
        cur = await self._conn.execute(sql, params)
        return [str(r[0]) for r in await cur.fetchall()]

    async def heartbeat(self, me: WorkerId, now: str, expires: str) -> None:
        await self._conn.execute(_HEARTBEAT, {"id": me.id, "host": me.host, "pid": me.pid,
                                              "now": now, "expires": expires})

    async def ensure(self, names: Sequence[str]) -> None:
        """A row for every lease this worker may take (free until someone claims it)."""
        await self._conn.execute(_ENSURE, (list(names),))

    async def renew(self, me: str, now: str, expires: str) -> list[str]:
        """Push on every unexpired lease this worker holds; the names it still holds."""
        return await self._names(_RENEW, {"me": me, "now": now, "expires": expires})

    async def live_workers(self, now: str, one_shot: str) -> int:
        """The workers alive at `now`, but the one-shots (ids starting with `one_shot`)."""
        cur = await self._conn.execute(_LIVE, (now, one_shot))
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def claim(self, me: str, names: Sequence[str], n: int, now: str, expires: str,
                    one_shot: str) -> list[str]:
        """Take up to `n` of `names` that are free or expired, or held by a one-shot (id
        starting `one_shot`) whose sessions are all gone; the names taken."""
        if n <= 0 or not names:
            return []
        return await self._names(_CLAIM, {"me": me, "names": list(names), "n": n,
                                          "now": now, "expires": expires,
                                          "one_shot": one_shot})

    async def release(self, me: str, names: Sequence[str]) -> None:
        if names:
            await self._conn.execute(_RELEASE, {"me": me, "names": list(names)})

    async def retire(self, me: str) -> None:
        await self._conn.execute(_RETIRE, (me,))

    async def holders(self, names: Sequence[str], now: str) -> dict[str, str]:
        """The holder of each of `names` held at `now` (a free one is not in it)."""
        cur = await self._conn.execute(_HOLDERS, {"names": list(names), "now": now})
        return {str(r[0]): str(r[1]) for r in await cur.fetchall()}

    async def end_dead(self, now: str) -> list[EndedSession]:
        """End every session of the workers dead at `now` (`pg_terminate_backend`, which
        needs the same role or `pg_signal_backend`); the sessions it ended. Run it in a
        round of its own: the first read of `pg_stat_activity` in a transaction fixes what
        it shows until the end, and a refusal fails the whole transaction."""
        cur = await self._conn.execute(_END_DEAD_SESSIONS, (now,))
        return [EndedSession(int(r[0]), str(r[1]), r[2], r[3])
                for r in await cur.fetchall() if r[4]]

    async def prune(self, before: str) -> None:
        """Forget workers dead since before `before` (the status shows them until then)."""
        await self._conn.execute(_PRUNE, (before,))


async def listen(url: str, application_name: str) -> AsyncIterator[None]:
    """Yield once per NOTIFY on `CHANNEL` (events committed by any process), until the
    connection fails (`StoreError`) or the caller stops iterating."""
    import psycopg

    conn = await _connect(url, application_name)
    try:
        await conn.execute(f"LISTEN {CHANNEL}")
        async for _ in conn.notifies():
            yield
    except psycopg.Error as e:
        raise StoreError(f"database {redact_database_url(url)}: listen: {_why(e)}") from None
    finally:
        await conn.close()
