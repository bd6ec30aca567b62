"""Who does which work in this process: all of it alone (SQLite), or a share of it among
the workers of one PostgreSQL database, by leases (`service/leases.py` has the rules).

The daemon hands a coordinator the lease names of its work (`project:<name>`,
`handler:<name>`) and a `Work` that starts and stops each one; the coordinator says when
(`take`, `drop`). `Alone` takes everything at once. `Workers` runs the lease loop: every
third of `lease_s` it beats its heart, renews what it holds, gives up what is over its fair
share, claims what is free or expired, and drops the work of a lease it failed to renew.
`FencedStore` is the store a project's parts write through under a lease: each write
transaction checks the lease first, so a worker that lost it (paused past its expiry)
cannot write the project any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import structlog

from botasync.envelope import iso
from botasync.errors import BotasyncError, LeaseLost
from botasync.service import leases
from botasync.store import leases as sql
from botasync.store.base import Database

log = structlog.get_logger("botasync.workers")

RECONNECT_PAUSE_S = 1.0


class Work(Protocol):
    """What a coordinator starts and stops, by lease name."""

    async def take(self, lease: str) -> None:
        """Start the work (`BotasyncError` when it cannot start now)."""

    async def drop(self, lease: str, why: str) -> None:
        """Stop the work promptly; never raises."""


class Alone:
    """SQLite: one daemon per database file (its lock), so every lease is its own."""

    def __init__(self, names: Sequence[str], work: Work) -> None:
        self.names = list(names)
        self.work = work
        self.held: dict[str, float] = {}

    def store_for(self, lease: str, store: Database) -> Database:
        return store

    def holds(self, lease: str) -> bool:
        """Alone, every lease is this process's."""
        return True

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for name in self.names:
            await self.work.take(name)
            self.held[name] = loop.time()

    async def aclose(self) -> None:
        for name in list(self.held):
            del self.held[name]
            await self.work.drop(name, "stopping")


def surely_held(held: dict[str, float], lease: str) -> bool:
    """Whether `lease` is surely held now: renewed, and its local deadline (`held`, the
    event loop's clock) not passed. A worker that stalled (a paused VM) stops delivering at
    once on waking, before its next round hears that the lease moved."""
    deadline = held.get(lease)
    return deadline is not None and asyncio.get_running_loop().time() < deadline


def worker_id(prefix: str = "") -> sql.WorkerId:
    """This process in the `workers` table: host, pid, and a few random characters (pids
    are reused, across restarts and containers); the `application_name` of its sessions
    too, so at most 63 bytes. `prefix`: `leases.ONE_SHOT` for a `botasync sync`."""
    host, pid = socket.gethostname(), os.getpid()
    return sql.WorkerId(leases.bounded_id(prefix, host, pid, secrets.token_hex(3)), host, pid)


async def give_back(table: sql.LeaseTable, url: str, me: str, names: Sequence[str]) -> bool:
    """Release `names`, leave the `workers` table and close the table's connection (a new
    one first if it broke); False, with one line, when the database did not take it: the
    leases then run out by themselves within `lease_s`."""
    try:
        if table.broken:
            await table.aclose()
            table = await sql.LeaseTable.connect(url, me)
        async with table.round() as r:
            await r.release(me, names)
            await r.retire(me)
        return True
    except BotasyncError as e:
        log.warning("leases_not_released", worker=me, error=str(e))
        return False
    finally:
        await table.aclose()


async def end_dead_sessions(table: sql.LeaseTable, me: str) -> None:
    """End the sessions of the dead workers (see `sql.end_dead`), one line each. Refused
    (no right to signal them), one line and the round goes on: their locks then last until
    they wake, or until a write's `lock_wait_s` says who holds the writers' lock."""
    try:
        async with table.round() as r:
            ended = await r.end_dead(iso(r.now))
    except BotasyncError as e:
        log.warning("dead_sessions_not_ended", worker=me, error=str(e))
        return
    for s in ended:
        log.warning("dead_worker_session_ended", worker=me, dead_worker=s.worker,
                    session_pid=s.pid, state=s.state, wait_event=s.wait_event)


class Workers:
    """PostgreSQL: this process's share of the work, held by leases (see the module doc)."""

    def __init__(self, url: str, lease_s: float, names: Sequence[str], work: Work, *,
                 on_events: Callable[[], None] = lambda: None,
                 me: sql.WorkerId | None = None) -> None:
        self.url = url
        self.lease_s = lease_s
        self.names = list(names)
        self.work = work
        self.on_events = on_events
        self.me = me or worker_id()  # the id its store's sessions are named by, if given
        self.held: dict[str, float] = {}  # lease -> local deadline (monotonic)
        self._table: sql.LeaseTable | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dropping: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def holds(self, lease: str) -> bool:
        """Whether this worker surely holds `lease` now (see `surely_held`)."""
        return surely_held(self.held, lease)

    def store_for(self, lease: str, store: Database) -> Database:
        """The store the work of `lease` writes through: fenced by the lease."""
        return FencedStore(store, lease, self.me.id, self.lost)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Join: the worker's row, a row for every lease, a first round; then the loop."""
        self._table = await sql.LeaseTable.connect(self.url, self.me.id)
        async with self._table.round() as r:
            now = iso(r.now)
            await r.heartbeat(self.me, now, leases.expiry(r.now, self.lease_s))
            await r.ensure(self.names)
        log.info("worker_started", worker=self.me.id, lease_s=self.lease_s)
        await self._round()
        self._tasks = [asyncio.create_task(self._loop(), name="botasync-leases"),
                       asyncio.create_task(self._listen(), name="botasync-listen")]

    async def aclose(self) -> None:
        """Stop every work first, then give its lease back at once (another worker takes it
        on its next round, not `lease_s` later) and leave the `workers` table."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._dropping.values(), return_exceptions=True)
        names = list(self.held)
        for name in names:
            await self._drop(name, "stopping")
        if self._table is not None and await give_back(self._table, self.url, self.me.id, names):
            log.info("leases_released", worker=self.me.id, leases=names)

    def lost(self, lease: str, why: str) -> None:
        """A write found the lease gone (the fence): stop that work now, from its own task
        (the caller is the work itself)."""
        if lease in self.held and lease not in self._dropping:
            self.held.pop(lease, None)
            task = asyncio.create_task(self._drop(lease, why))
            self._dropping[lease] = task
            task.add_done_callback(lambda _: self._dropping.pop(lease, None))

    # --- the loop --------------------------------------------------------------------

    async def _loop(self) -> None:
        period = leases.renew_every(self.lease_s)
        while True:
            await asyncio.sleep(period)
            try:
                await self._round()
            except (BotasyncError, TimeoutError) as e:  # the database; try again next round
                log.warning("lease_round_failed", worker=self.me.id,
                            error=str(e) or "the database did not answer in time")
                await self._reconnect(fresh=isinstance(e, TimeoutError))
            except Exception as e:  # a bug in starting or stopping work: keep the loop
                log.error("lease_round_error", worker=self.me.id, error=repr(e))
            await self._expire_locally()
            self.on_events()  # a NOTIFY missed while the listener reconnected

    async def _reconnect(self, fresh: bool = False) -> None:
        """A new connection when the old one broke, or (`fresh`) a statement on it was cut
        off by the round's timeout and left it in an unknown state."""
        if self._table is not None and not self._table.broken and not fresh:
            return
        with contextlib.suppress(BotasyncError):
            if self._table is not None:
                await self._table.aclose()
            self._table = await sql.LeaseTable.connect(self.url, self.me.id)

    async def _expire_locally(self) -> None:
        """A lease not renewed past its local deadline (the database unreachable, a round
        that hangs) may be another's by now: stop its work without waiting to hear."""
        now = asyncio.get_running_loop().time()
        for name, deadline in list(self.held.items()):
            if now >= deadline:
                self.held.pop(name, None)
                await self._drop(name, "lease not renewed in time (database unreachable?)")

    async def _round(self) -> None:
        """Renew, drop what was lost, rebalance: give up what is over the share, claim."""
        timeout = leases.renew_every(self.lease_s)
        renewed, live = await asyncio.wait_for(self._renew(), timeout)
        assert self._table is not None
        # before claiming: a dead worker's session may hold a lease's row (the fence)
        await asyncio.wait_for(end_dead_sessions(self._table, self.me.id), timeout)
        for name in [n for n in self.held if n not in renewed]:
            self.held.pop(name, None)
            await self._drop(name, "lease expired: another worker may hold it now")
        plans = {kind: leases.plan([n for n in self.held if leases.kind_of(n) == kind],
                                   sum(leases.kind_of(n) == kind for n in self.names), live)
                 for kind in leases.KINDS}
        give_up = [n for p in plans.values() for n in p.release]
        for name in give_up:
            self.held.pop(name, None)
            await self._drop(name, f"given up: {live} workers share the work")
        claimed = await asyncio.wait_for(self._rebalance(give_up, plans), timeout)
        for name in claimed:
            await self._take(name)

    async def _renew(self) -> tuple[set[str], int]:
        assert self._table is not None
        sent = asyncio.get_running_loop().time()
        async with self._table.round() as r:
            now, expires = iso(r.now), leases.expiry(r.now, self.lease_s)
            await r.heartbeat(self.me, now, expires)
            renewed = set(await r.renew(self.me.id, now, expires))
            live = await r.live_workers(now, leases.ONE_SHOT)
            await r.prune(iso(r.now - timedelta(seconds=leases.FORGET_DEAD_AFTER_S)))
        for name in renewed & set(self.held):
            self.held[name] = leases.local_deadline(sent, self.lease_s)
        return renewed, live

    async def _rebalance(self, give_up: list[str], plans: dict[str, leases.Plan]) -> list[str]:
        assert self._table is not None
        sent = asyncio.get_running_loop().time()
        claimed: list[str] = []
        async with self._table.round() as r:
            now, expires = iso(r.now), leases.expiry(r.now, self.lease_s)
            await r.release(self.me.id, give_up)
            for kind, p in plans.items():
                free = [n for n in self.names if leases.kind_of(n) == kind
                        and n not in self.held and n not in give_up]
                claimed += await r.claim(self.me.id, free, p.claim, now, expires,
                                         leases.ONE_SHOT)
        for name in claimed:
            self.held[name] = leases.local_deadline(sent, self.lease_s)
        return claimed

    async def _take(self, name: str) -> None:
        """Start the work of a lease just claimed; one that cannot start (its files still
        locked by the worker that had it) is given back for a later round."""
        try:
            await self.work.take(name)
            log.info("lease_acquired", worker=self.me.id, lease=name)
        except BotasyncError as e:
            log.warning("lease_work_not_started", worker=self.me.id, lease=name, error=str(e))
            self.held.pop(name, None)
            await self.work.drop(name, "could not start")
            assert self._table is not None
            with contextlib.suppress(BotasyncError):
                async with self._table.round() as r:
                    await r.release(self.me.id, [name])

    async def _drop(self, name: str, why: str) -> None:
        if why != "stopping":  # a clean stop says it once, in `leases_released`
            log.warning("lease_dropped", worker=self.me.id, lease=name, why=why)
        await self.work.drop(name, why)

    async def _listen(self) -> None:
        """Wake the handlers' lanes when any worker commits events (NOTIFY), so a lane here
        does not wait for its idle poll to see another worker's events."""
        while True:
            try:
                async for _ in sql.listen(self.url, self.me.id):
                    self.on_events()
            except BotasyncError as e:
                log.warning("listen_failed", error=str(e))
            await asyncio.sleep(RECONNECT_PAUSE_S)


class OneShot:
    """`botasync sync` on PostgreSQL, beside running workers: the leases of what it syncs,
    for the length of its pass. It claims them as a worker does (the free and the expired
    ones), renews them every third of `lease_s` while it runs, and gives them back at the
    end; its project writes go through the fence (`store_for`), so a sync paused past its
    lease cannot write a project a worker took meanwhile.

    It has a row in `workers` (so the workers end its sessions if it dies in the middle of
    a write), under an id starting `leases.ONE_SHOT`: it takes no share of the work, and
    the workers do not count it when they share the work out.
    """

    def __init__(self, url: str, lease_s: float, me: sql.WorkerId, *,
                 on_lost: Callable[[str, str], Awaitable[None]]) -> None:
        self.url = url
        self.lease_s = lease_s
        self.on_lost = on_lost
        self.me = me  # `worker_id(leases.ONE_SHOT)`, the id its store's sessions carry
        self.held: dict[str, float] = {}  # lease -> local deadline (monotonic)
        self._table: sql.LeaseTable | None = None
        self._loop: asyncio.Task[None] | None = None

    def store_for(self, lease: str, store: Database) -> Database:
        return FencedStore(store, lease, self.me.id, self.lost)

    def holds(self, lease: str) -> bool:
        """Whether this sync surely holds `lease` now (see `surely_held`): its lanes check
        it before each delivery, as a worker's do."""
        return surely_held(self.held, lease)

    async def start(self, names: Sequence[str]) -> dict[str, str | None]:
        """Claim every one of `names` that is free; the others, with their live holder
        (None: free, but locked by another process taking or writing it right now)."""
        self._table = await sql.LeaseTable.connect(self.url, self.me.id)
        sent = asyncio.get_running_loop().time()
        async with self._table.round() as r:
            now, expires = iso(r.now), leases.expiry(r.now, self.lease_s)
            await r.heartbeat(self.me, now, expires)
            await r.ensure(names)
            claimed = await r.claim(self.me.id, names, len(names), now, expires,
                                    leases.ONE_SHOT)
            holders = await r.holders([n for n in names if n not in claimed], now)
        self.held = {n: leases.local_deadline(sent, self.lease_s) for n in claimed}
        self._loop = asyncio.create_task(self._renewing(), name="botasync-sync-leases")
        return {n: holders.get(n) for n in names if n not in self.held}

    def lost(self, lease: str, why: str) -> None:
        """A write found the lease gone (the fence): the pass fails there; forget it."""
        self.held.pop(lease, None)

    async def aclose(self) -> None:
        """Stop renewing, give every lease back, leave the `workers` table."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        if self._table is not None:
            await give_back(self._table, self.url, self.me.id, list(self.held))
        self.held.clear()

    async def _renewing(self) -> None:
        period = leases.renew_every(self.lease_s)
        while True:
            await asyncio.sleep(period)
            try:
                await asyncio.wait_for(self._renew(), period)
            except (BotasyncError, TimeoutError) as e:  # the database; try again
                log.warning("lease_round_failed", worker=self.me.id,
                            error=str(e) or "the database did not answer in time")
                await self._reconnect()
            now = asyncio.get_running_loop().time()
            for name in [n for n, deadline in self.held.items() if now >= deadline]:
                await self._lose(name, "lease not renewed in time (database unreachable?)")

    async def _renew(self) -> None:
        assert self._table is not None
        sent = asyncio.get_running_loop().time()
        async with self._table.round() as r:
            now, expires = iso(r.now), leases.expiry(r.now, self.lease_s)
            await r.heartbeat(self.me, now, expires)
            renewed = set(await r.renew(self.me.id, now, expires))
        for name in list(self.held):
            if name in renewed:
                self.held[name] = leases.local_deadline(sent, self.lease_s)
            else:
                await self._lose(name, "lease expired: a worker may hold it now")
        await end_dead_sessions(self._table, self.me.id)

    async def _lose(self, name: str, why: str) -> None:
        self.held.pop(name, None)
        log.warning("lease_dropped", worker=self.me.id, lease=name, why=why)
        await self.on_lost(name, why)

    async def _reconnect(self) -> None:
        """A new connection: the old one broke, or a statement on it was cut off."""
        with contextlib.suppress(BotasyncError):
            if self._table is not None:
                await self._table.aclose()
            self._table = await sql.LeaseTable.connect(self.url, self.me.id)


class FencedStore:
    """A store whose write transactions first check that this worker holds `lease`
    (`sql.FENCE`, the lease row locked in share mode until the commit, so it cannot change
    hands in between), and notify the other workers' lanes after (`sql.NOTIFY`).

    A write found without its lease raises `LeaseLost` (the pass fails, its page is not
    written) and calls `on_lost`, which stops the project's work here.
    """

    def __init__(self, store: Database, lease: str, me: str,
                 on_lost: Callable[[str, str], None]) -> None:
        self._store = store
        self.lease = lease
        self.me = me
        self._on_lost = on_lost
        self.dialect = store.dialect
        self.readonly = store.readonly
        self.path: Path = store.path

    @property
    def where(self) -> str:
        return self._store.where

    @asynccontextmanager
    async def transaction(self, *, background: bool = False) -> AsyncIterator[Any]:
        async with self._store.transaction(background=background) as conn:
            async with conn.execute(sql.FENCE, (self.lease,)) as cur:
                row = await cur.fetchone()
            if row is None or not leases.holds(row[1], row[2], self.me, row[0]):
                why = (f"{self.lease} ran out at {row[2]}" if row and row[1] == self.me
                       else f"{self.lease} is held by {row[1] if row else 'nobody'} now")
                log.error("lease_lost_write_refused", lease=self.lease, worker=self.me,
                          holder=row[1] if row else None)
                self._on_lost(self.lease, why)
                raise LeaseLost(f"write refused: the lease {why}")
            yield conn
            await conn.execute(sql.NOTIFY)

    def read(self, *, background: bool = False) -> AbstractAsyncContextManager[Any]:
        return self._store.read(background=background)

    def foreground(self) -> AbstractAsyncContextManager[None]:
        return self._store.foreground()

    async def fetchall(self, sql_text: str, params: Any = ()) -> list[Any]:
        return await self._store.fetchall(sql_text, params)

    async def fetchone(self, sql_text: str, params: Any = ()) -> Any | None:
        return await self._store.fetchone(sql_text, params)

    async def aclose(self) -> None:
        """The store is the app's: it closes it."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None,
    ) -> None:
        await self.aclose()
