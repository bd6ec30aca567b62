"""Several `botasync run` on one PostgreSQL database: leases share the projects and the
handlers' lanes out, a worker killed with SIGKILL has its work taken over within `lease_s`,
a clean stop gives it back at once, and a worker that lost its lease cannot write.

The pure arithmetic of leases (fair share, expiry) is tested first, without I/O.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from botasync import config
from botasync.errors import ConfigError, LeaseLost, StoreError
from botasync.service import leases
from botasync.service.workers import FencedStore, Workers
from botasync.simulator import Simulator, World
from botasync.store import open_store, writers_lock_wait
from botasync.store.postgres import WRITER_LOCK, PgStore
from tests import zygote
from tests.conftest import SimulatorFactory, wait_for
from tests.mirror import mirror_diff
from tests.pgserver import TestDb
from tests.test_events_e2e import botasync

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)

# --- the arithmetic ---------------------------------------------------------------------


@pytest.mark.parametrize(("leases_", "workers", "share"), [
    (0, 3, 0), (1, 1, 1), (1, 3, 1), (3, 3, 1), (4, 3, 2), (5, 2, 3), (20, 3, 7), (3, 0, 3),
])
def test_fair_share_is_every_lease_shared_out_rounded_up(
    leases_: int, workers: int, share: int,
) -> None:
    assert leases.fair_share(leases_, workers) == share
    assert leases.fair_share(leases_, workers) * max(1, workers) >= leases_


@pytest.mark.parametrize(("held", "total", "live", "plan"), [
    ([], 3, 1, leases.Plan(claim=3)),  # alone: everything
    (["project:a", "project:b", "project:c"], 3, 3, leases.Plan(release=("project:b",
                                                                          "project:c"))),
    (["project:c", "project:a"], 3, 2, leases.Plan(claim=0)),  # at its share: keep
    (["project:a"], 3, 2, leases.Plan(claim=1)),  # one worker died: take more
    (["project:b", "project:a", "project:c"], 3, 2, leases.Plan(release=("project:c",))),
    ([], 0, 2, leases.Plan(claim=0)),
])
def test_a_round_gives_up_what_is_over_the_share_the_last_names_first(
    held: list[str], total: int, live: int, plan: leases.Plan,
) -> None:
    assert leases.plan(held, total, live) == plan


def test_expiry_and_who_holds_a_lease() -> None:
    assert leases.expiry(T0, 30) == "2026-11-29T12:00:30.000Z"
    assert leases.renew_every(30) == 10
    exp = leases.expiry(T0, 2)
    assert leases.holds("w1", exp, "w1", T0 + timedelta(seconds=1.999))
    assert not leases.holds("w1", exp, "w1", T0 + timedelta(seconds=2))  # ran out
    assert not leases.holds("w2", exp, "w1", T0)  # another's
    assert not leases.holds(None, None, "w1", T0)  # free
    # the local deadline counts from when the renewal was sent, never later
    assert leases.local_deadline(100.0, 2.0) == 102.0


def test_lease_names() -> None:
    assert leases.project_lease("prod") == "project:prod"
    assert leases.kind_of("handler:hook") == leases.HANDLER
    assert leases.subject("handler:a:b") == "a:b"
    with pytest.raises(ValueError, match="not a lease name"):
        leases.kind_of("nothing")


def test_a_worker_id_fits_postgresql_application_name() -> None:
    """The id names the worker's sessions (`application_name`, 63 bytes, ASCII): a long or
    non-ASCII host is cut or replaced in it, never the pid and the token."""
    assert leases.bounded_id("", "web-1", 42, "a1b2c3") == "web-1:42:a1b2c3"
    long = leases.bounded_id(leases.ONE_SHOT, "h" * 200, 4194304, "a1b2c3")
    assert len(long.encode()) == leases.MAX_ID_BYTES
    assert long.startswith("sync@hhh") and long.endswith(":4194304:a1b2c3")
    assert leases.bounded_id("", "hôte", 7, "ff00aa") == "h?te:7:ff00aa"
    assert leases.is_one_shot(long) and not leases.is_one_shot("web-1:42:a1b2c3")


@pytest.mark.parametrize("bad", [0, -1, "soon"])
def test_a_bad_lease_s_is_one_line(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"\[database\] lease_s"):
        config.load(env={}, overrides={"database": {"lease_s": bad}})


# --- the fence, on a real database -----------------------------------------------------------


async def test_a_write_without_the_lease_is_refused_and_stops_the_work(
    pg_database: TestDb,
) -> None:
    """A project's write transaction checks its lease inside the transaction: held by
    another (or run out), nothing is written, `LeaseLost` is raised, the work is told."""
    lost: list[tuple[str, str]] = []
    async with await open_store(pg_database.db_config) as store:
        pg_database.execute(
            "INSERT INTO leases (name, holder, expires_at) VALUES ('project:p', 'other', ?)",
            (leases.expiry(datetime.now(UTC), 60),))
        fenced = FencedStore(store, "project:p", "me", lambda n, why: lost.append((n, why)))
        with pytest.raises(LeaseLost, match="held by other"):
            async with fenced.transaction() as conn:
                await conn.execute("INSERT INTO state (project, key, value) "
                                   "VALUES ('p', 'x', 'written')")
        assert lost == [("project:p", "project:p is held by other now")]
        assert pg_database.rows("SELECT * FROM state WHERE project = 'p'") == []
        # held by me: written; run out: refused again
        pg_database.execute("UPDATE leases SET holder = 'me'")
        async with fenced.transaction() as conn:
            await conn.execute("INSERT INTO state (project, key, value) VALUES ('p', 'x', 'ok')")
        assert pg_database.rows("SELECT value FROM state WHERE project = 'p'") == [("ok",)]
        pg_database.execute("UPDATE leases SET expires_at = ?",
                            (leases.expiry(datetime.now(UTC), -1),))
        with pytest.raises(LeaseLost):
            async with fenced.transaction() as conn:
                await conn.execute("UPDATE state SET value = 'late' WHERE project = 'p'")
        assert pg_database.rows("SELECT value FROM state WHERE project = 'p'") == [("ok",)]


# --- a dead worker's sessions, the writers' lock ---------------------------------------------

DEAD = "gone-host:4242:dead00"


class _NoWork:
    """A worker with no lease to take: its rounds alone are under test."""

    async def take(self, lease: str) -> None:
        raise AssertionError(f"nothing to take: {lease}")

    async def drop(self, lease: str, why: str) -> None:
        raise AssertionError(f"nothing to drop: {lease}")


async def _holding_writers_lock(db: TestDb, name: str) -> psycopg.AsyncConnection[Any]:
    """A session named `name` inside a transaction that holds the writers' lock."""
    conn = await psycopg.AsyncConnection.connect(db.url, application_name=name)
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
    return conn


def _sessions(db: TestDb, name: str) -> list[str]:
    return [r[0] for r in db.rows("SELECT state FROM pg_stat_activity "
                                  "WHERE application_name = ?", (name,))]


def _lock_waiters(db: TestDb) -> int:
    return int(db.rows("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                       "AND NOT granted")[0][0])


async def _write_state(store: Any, value: str) -> None:
    async with store.transaction() as conn:
        await conn.execute("INSERT INTO state (project, key, value) VALUES ('p', 'x', ?) "
                           "ON CONFLICT (project, key) DO UPDATE SET value = excluded.value",
                           (value,))


async def test_a_dead_workers_session_inside_a_statement_is_ended_and_the_writers_go_on(
    pg_database: TestDb,
) -> None:
    """A worker dead (its heartbeat ran out) while the server runs a statement of its write
    (not idle in the transaction, so no server timeout ends it) holds the writers' lock: a
    live worker's round ends its sessions (found by `application_name`, its id), one line
    each, and the write that waited goes through."""
    async with await open_store(pg_database.db_config) as store:
        gone = leases.expiry(datetime.now(UTC), -5)
        pg_database.execute("INSERT INTO workers (id, host, pid, started_at, seen_at, "
                            "expires_at) VALUES (?, 'gone-host', 4242, ?, ?, ?)",
                            (DEAD, gone, gone, gone))
        holder = await _holding_writers_lock(pg_database, DEAD)
        session = holder.info.backend_pid
        busy = asyncio.create_task(holder.execute("SELECT pg_sleep(600)"))
        await wait_for(lambda: _sessions(pg_database, DEAD) == ["active"])
        write = asyncio.create_task(_write_state(store, "after"))
        await wait_for(lambda: _lock_waiters(pg_database) == 1)
        worker = Workers(pg_database.url, 3.0, [], _NoWork())
        with capture_logs() as logs:
            await worker.start()
            await asyncio.wait_for(write, 20)
        await worker.aclose()
        ended = [(x["dead_worker"], x["session_pid"], x["state"]) for x in logs
                 if x["event"] == "dead_worker_session_ended"]
        assert ended == [(DEAD, session, "active")]
        assert _sessions(pg_database, DEAD) == []
        assert pg_database.rows("SELECT value FROM state WHERE project = 'p'") == [("after",)]
        with pytest.raises(psycopg.OperationalError):
            await busy
        await holder.close()


async def test_a_write_waiting_past_lock_wait_s_says_who_holds_the_writers_lock(
    pg_database: TestDb,
) -> None:
    """A holder nobody ends (not a worker: a psql session) makes a write fail after
    `lock_wait_s` with one line naming it, not hang; once it lets go, writes go on."""
    assert writers_lock_wait(2.0) == 60.0 and writers_lock_wait(45.0) == 90.0
    store = await PgStore.open(pg_database.url, lock_path=pg_database.path, lock_wait_s=0.5)
    try:
        holder = await _holding_writers_lock(pg_database, "psql by hand")
        pid = holder.info.backend_pid
        with pytest.raises(StoreError, match=(
                rf"the writers' lock was not free within 0.5 s: held by session {pid} "
                r"\(psql by hand\), idle in transaction since ")):
            await _write_state(store, "never")
        await holder.rollback()
        await _write_state(store, "later")
        assert pg_database.rows("SELECT value FROM state WHERE project = 'p'") == [("later",)]
        await holder.close()
    finally:
        await store.aclose()


# --- workers end to end --------------------------------------------------------------------

LEASE_S = 2.0
PROJECTS = ("alpha", "beta", "gamma")


@dataclass
class Hooks:
    """A webhook receiver: each worker posts to its own path, so a delivery says who made
    it (`/hook/<n>`)."""

    url: str = ""
    got: list[tuple[int, str, float]] = field(default_factory=list)  # (worker, event id, t)
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)

    def ids(self) -> set[str]:
        return {g[1] for g in self.got}


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    rec = Hooks()

    async def hook(request: web.Request) -> web.StreamResponse:
        event = json.loads(await request.read())
        rec.got.append((int(request.match_info["n"]), event["id"], time.monotonic()))
        rec.payloads[event["id"]] = event
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook/{n}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}"
    yield rec
    await runner.cleanup()


def _cfg(tmp_path: Path, sim: Simulator, db: TestDb, hooks: Hooks, n: int) -> Path:
    """Worker `n`'s config: the same projects, handler and database as every other's; only
    the webhook's path (to tell deliveries apart) differs."""
    lines = ["[api]", f'base_url = "{sim.url}"', "requests_per_minute = 100000",
             "[sync]", "interval_s = 0.3", "reconcile_every_s = 3", "page_size = 20",
             "[database]", f'path = "{tmp_path / "botasync.db"}"', f'url = "{db.url}"',
             f"lease_s = {LEASE_S}",
             "[events]", "deliver_backfill = true", "backoff_base_s = 0.05",
             "backoff_max_s = 0.2",
             "[[handlers]]", 'name = "hook"', 'type = "webhook"',
             f'url = "{hooks.url}/hook/{n}"', "timeout_s = 5"]
    for i, name in enumerate(PROJECTS):
        lines += ["[[projects]]", f'name = "{name}"', f'api_key = "sk_test_project_{i}"']
    path = tmp_path / f"worker{n}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Worker:
    n: int
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


async def _start(tmp_path: Path, cfg: Path, n: int) -> Worker:
    log = tmp_path / f"worker{n}.log"
    with log.open("w") as f:
        proc = await zygote.botasync("run", "--config", str(cfg), stdout=f, stderr=f,
                                     env={**os.environ, "BOTASYNC_CONFIG": ""})
    return Worker(n, proc, log)


def _holders(db: TestDb) -> dict[str, int | None]:
    """Lease -> the pid of its live holder (None: free or run out)."""
    try:
        rows = db.rows("SELECT l.name, w.pid, l.expires_at > ? FROM leases l "
                       "LEFT JOIN workers w ON w.id = l.holder",
                       (leases.expiry(datetime.now(UTC), 0),))
    except psycopg.Error:  # no tables yet
        return {}
    return {r[0]: (int(r[1]) if r[1] is not None and r[2] else None) for r in rows}


def _walking(db: TestDb, project: str) -> bool:
    """The project's first walk has checkpointed a page or more and is not complete."""
    rows = db.rows("SELECT count(*) FROM sync_runs WHERE project = ? AND kind = 'full' "
                   "AND complete = 0 AND pages >= 2", (project,))
    walks_done = db.rows("SELECT count(*) FROM sync_runs WHERE project = ? AND complete = 1 "
                         "AND kind IN ('full', 'reconcile')", (project,))
    return bool(rows[0][0]) and not walks_done[0][0]


def _victim(db: TestDb, workers: list[Worker]) -> tuple[Worker, str] | None:
    """A worker that holds the handler's lane and a project in the middle of its first
    walk, with deliveries under way."""
    held = _holders(db)
    lane = held.get("handler:hook")
    for w in workers:
        if lane != w.pid:
            continue
        for p in PROJECTS:
            if held.get(f"project:{p}") == w.pid and _walking(db, p):
                return w, p
    return None


def _events(db: TestDb) -> list[tuple[int, str, str | None]]:
    return [(int(r[0]), r[1], r[2]) for r in
            db.rows("SELECT seq, id, recording_id FROM events ORDER BY seq")]


async def test_workers_share_projects_survive_a_kill_and_hand_over_at_a_clean_stop(
    simulator_factory: SimulatorFactory, pg_database: TestDb, tmp_path: Path, hooks: Hooks,
) -> None:
    """Three workers, three projects, one handler. Each project is synced by one worker at
    a time; SIGKILL to the one holding the handler's lane during a project's first walk
    moves its work within lease_s (the walk resumes elsewhere); a SIGTERM gives a worker's
    leases back at once. The mirror ends exact, no event is lost, and an event reaches the
    handler twice only if the killed worker had it in flight."""
    sim = await simulator_factory(World(seed=41, recordings=400), projects=3, latency_s=0.03)
    workers = [await _start(tmp_path, _cfg(tmp_path, sim, pg_database, hooks, n), n)
               for n in range(3)]
    try:
        await _kill_and_take_over(pg_database, hooks, workers, sim)
    finally:
        for w in workers:
            if w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()


async def _kill_and_take_over(db: TestDb, hooks: Hooks, workers: list[Worker],
                              sim: Simulator) -> None:
    found: list[tuple[Worker, str]] = []

    def victim() -> bool:
        v = _victim(db, workers)
        if v:
            found.append(v)
        return v is not None

    await wait_for(victim, timeout=60)
    dead, project = found[-1]
    dead.proc.send_signal(signal.SIGKILL)
    await dead.proc.wait()
    killed_at = time.monotonic()
    alive = [w for w in workers if w is not dead]
    pids = {w.pid for w in alive}
    # its project and the lane move to a live worker within lease_s (+ one round)
    await wait_for(lambda: _holders(db).get(f"project:{project}") in pids
                   and _holders(db).get("handler:hook") in pids, timeout=LEASE_S * 6)
    # (+ slack for a loaded 2-core machine: starting the project's parts, the test's polls)
    assert time.monotonic() - killed_at < LEASE_S + leases.renew_every(LEASE_S) + 4.0
    # every project is held, each by one live worker, two workers sharing three (2 + 1)
    await wait_for(lambda: all(_holders(db).get(f"project:{p}") in pids for p in PROJECTS),
                   timeout=LEASE_S * 6)
    await _status_shows_who_holds_what(db, workers[0], alive, dead)
    # changes after the kill reach the mirror and the handler
    for i in range(3):
        world = sim.project(i).world
        world.update(world.all()[5]["id"], name=f"renamed {i}")
        world.delete(world.all()[9]["id"])
        world.create(name=f"new in {i}")
    await _converged(db, sim)
    await _no_event_lost_nor_repeated(db, hooks, dead, killed_at)
    await _clean_stop_hands_over(db, alive, dead)


async def _status_shows_who_holds_what(db: TestDb, any_worker: Worker, alive: list[Worker],
                                       dead: Worker) -> None:
    """`botasync status`: the workers, alive or dead, and the holder of every lease."""
    cfg = any_worker.log.with_name(f"worker{any_worker.n}.toml")
    code, out, err = await botasync("status", "--json", cfg=cfg)
    assert code == 0, err
    got = json.loads(out)["workers"]
    by_pid = {w["pid"]: w for w in got["workers"]}
    assert {p for p, w in by_pid.items() if w["alive"]} == {w.pid for w in alive}
    assert by_pid[dead.pid]["alive"] is False
    live_ids = {by_pid[w.pid]["id"] for w in alive}
    assert {lease["name"] for lease in got["leases"]} == {
        *(f"project:{p}" for p in PROJECTS), "handler:hook"}
    assert all(lease["holder"] in live_ids and lease["held_s"] >= 0 for lease in got["leases"])
    code, text, err = await botasync("status", cfg=cfg)
    assert code == 0, err
    assert "workers 2 alive" in text and f"{by_pid[dead.pid]['id']} dead since" in text
    assert "project:alpha" in text and "handler:hook" in text


async def _converged(db: TestDb, sim: Simulator) -> None:
    def exact() -> bool:
        return all(mirror_diff(db, sim.project(i).world.all(), project=p) == []
                   for i, p in enumerate(PROJECTS))

    await wait_for(exact, timeout=90)


async def _no_event_lost_nor_repeated(db: TestDb, hooks: Hooks, dead: Worker,
                                      killed_at: float) -> None:
    events = _events(db)
    await wait_for(lambda: hooks.ids() >= {e[1] for e in events}, timeout=60)
    seen: dict[str, tuple[int, float]] = {}
    for n, event_id, at in hooks.got:
        if event_id in seen:  # again: only what the killed worker had in flight
            first_by, first_at = seen[event_id]
            assert first_by == dead.n and first_at <= killed_at and n != dead.n, event_id
        else:
            seen[event_id] = (n, at)
    repeated = len(hooks.got) - len(seen)
    assert repeated <= 100  # at most what one lane delivers between two records (FLUSH_EVERY)
    # in seq order per recording, the first deliveries (a repeat comes again after)
    seq = {e[1]: e[0] for e in events}
    rec = {e[1]: e[2] for e in events}
    last: dict[str | None, int] = {}
    for event_id in dict.fromkeys(g[1] for g in hooks.got):
        r = rec[event_id]
        assert seq[event_id] > last.get(r, 0), event_id
        last[r] = seq[event_id]


async def _clean_stop_hands_over(db: TestDb, alive: list[Worker], dead: Worker) -> None:
    """SIGTERM: the worker's leases are free the moment it has exited (not `lease_s`
    later), its row gone; the other takes every lease. The killed one's row stays (dead:
    `status` shows it for a while)."""
    stopping, last = alive
    if not any(pid == stopping.pid for pid in _holders(db).values()):
        stopping, last = last, stopping  # stop the one that holds something
    stopping.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(stopping.proc.wait(), 20) == 0
    holders = db.rows("SELECT l.name FROM leases l JOIN workers w ON w.id = l.holder "
                      "WHERE w.pid = ?", (stopping.pid,))
    assert holders == []
    assert db.rows("SELECT count(*) FROM leases WHERE holder LIKE ?",
                   (f"%:{stopping.pid}:%",)) == [(0,)]
    await wait_for(lambda: set(_holders(db).values()) == {last.pid}, timeout=LEASE_S * 3)
    assert len(_holders(db)) == len(PROJECTS) + 1
    last.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(last.proc.wait(), 20) == 0
    assert db.rows("SELECT pid FROM workers") == [(dead.pid,)]


async def test_a_worker_paused_past_its_lease_stops_that_work_when_it_wakes(
    simulator_factory: SimulatorFactory, pg_database: TestDb, tmp_path: Path, hooks: Hooks,
) -> None:
    """SIGSTOP a worker past its lease: the other takes its projects; on SIGCONT it finds
    them gone (its renewal, or the fence on its next write) and stops that work, saying so;
    nothing was written twice (the mirror is exact, each event id once)."""
    sim = await simulator_factory(World(seed=43, recordings=200), projects=3)
    workers = [await _start(tmp_path, _cfg(tmp_path, sim, pg_database, hooks, n), n)
               for n in range(2)]
    try:
        await wait_for(lambda: set(_holders(pg_database).values()) == {w.pid for w in workers}
                       and len(_holders(pg_database)) == len(PROJECTS) + 1, timeout=30)
        paused, other = workers
        mine = [name for name, pid in _holders(pg_database).items() if pid == paused.pid]
        paused.proc.send_signal(signal.SIGSTOP)
        # it may be paused inside a write (the writers' lock, its lease's row held), even in
        # the middle of a statement: once it is dead (its heartbeat ran out) the other ends
        # its sessions, and goes on
        await wait_for(lambda: all(_holders(pg_database).get(n) == other.pid for n in mine),
                       timeout=LEASE_S * 8)
        for i in range(3):
            world = sim.project(i).world
            world.update(world.all()[3]["id"], name=f"while paused {i}")
        paused.proc.send_signal(signal.SIGCONT)
        stopped = [n for n in mine if n.startswith(leases.PROJECT)]
        await wait_for(lambda: _stopped(paused) >= {leases.subject(n) for n in stopped},
                       timeout=LEASE_S * 4)
        await _converged(pg_database, sim)
        events = _events(pg_database)
        assert len({e[1] for e in events}) == len(events)
    finally:
        for w in workers:
            if w.proc.returncode is None:
                w.proc.send_signal(signal.SIGCONT)
                w.proc.kill()
                await w.proc.wait()


def _stopped(w: Worker) -> set[str]:
    """The projects whose work the worker's log says it stopped."""
    lines = [json.loads(line) for line in w.log.read_text().splitlines()
             if line.startswith("{") and line.endswith("}")]
    return {line["project"] for line in lines if line.get("event") == "project_stopped"}


# --- botasync sync beside running workers ------------------------------------------------------

ELSEWHERE = "elsewhere:777:c0ffee"


def _worker_elsewhere_holds(db: TestDb, names: list[str]) -> None:
    """A live worker on another host (its row, its leases, as its rounds keep them)."""
    now = leases.expiry(datetime.now(UTC), 0)
    until = leases.expiry(datetime.now(UTC), 600)
    db.execute("INSERT INTO workers (id, host, pid, started_at, seen_at, expires_at) "
               "VALUES (?, 'elsewhere', 777, ?, ?, ?)", (ELSEWHERE, now, now, until))
    for name in names:
        db.execute("INSERT INTO leases (name, holder, acquired_at, renewed_at, expires_at) "
                   "VALUES (?, ?, ?, ?, ?)", (name, ELSEWHERE, now, now, until))


def _lease_holders(db: TestDb) -> dict[str, str | None]:
    return {r[0]: r[1] for r in db.rows("SELECT name, holder FROM leases")}


def _sync_holds(db: TestDb) -> bool:
    """A `botasync sync` holds a lease and has its row in `workers`, right now."""
    holders = _lease_holders(db).values()
    rows = db.rows("SELECT id FROM workers")
    return (any(h is not None and leases.is_one_shot(h) for h in holders)
            and any(leases.is_one_shot(r[0]) for r in rows))


async def test_sync_beside_a_worker_skips_what_it_holds_and_gives_back_what_it_took(
    simulator_factory: SimulatorFactory, pg_database: TestDb, tmp_path: Path, hooks: Hooks,
) -> None:
    """`botasync sync` on PostgreSQL: a project or a handler's lane a live worker holds is
    skipped, one line each, the mirror of that project untouched; the free ones are synced
    under the sync's own leases, given back at the end, and a worker started after takes
    them. `sync --project P` with P held: exit 1 and the line."""
    sim = await simulator_factory(World(seed=44, recordings=200), projects=3, latency_s=0.05)
    cfg = _cfg(tmp_path, sim, pg_database, hooks, 0)
    async with await open_store(pg_database.db_config):
        pass  # the schema
    _worker_elsewhere_holds(pg_database, ["project:alpha", "handler:hook"])
    sync = asyncio.create_task(botasync("sync", cfg=cfg))
    # during its pass: its leases, its row (not after: see below)
    seen = await wait_for(lambda: ("held" if _sync_holds(pg_database) else
                                   "done" if sync.done() else None), timeout=30)
    code, _, err = await sync
    assert seen == "held"
    assert code == 0, err
    assert f"alpha: skipped, worker {ELSEWHERE} holds it; its daemon syncs it" in err
    assert (f"handler hook: not delivered here, worker {ELSEWHERE} holds it; the workers "
            "deliver to it") in err
    assert pg_database.rows("SELECT count(*) FROM recordings WHERE project = 'alpha'") == [(0,)]
    assert pg_database.rows("SELECT count(*) FROM sync_runs WHERE project = 'alpha'") == [(0,)]
    for i, project in ((1, "beta"), (2, "gamma")):
        assert mirror_diff(pg_database, sim.project(i).world.all(), project=project) == []
    assert hooks.got == []  # the lane is the worker's
    assert _lease_holders(pg_database) == {"project:alpha": ELSEWHERE, "handler:hook": ELSEWHERE,
                                           "project:beta": None, "project:gamma": None}
    assert pg_database.rows("SELECT id FROM workers") == [(ELSEWHERE,)]
    code, _, err = await botasync("sync", "--project", "alpha", cfg=cfg)
    assert code == 1
    assert f"alpha: skipped, worker {ELSEWHERE} holds it; its daemon syncs it" in err
    await _a_worker_takes_what_is_free(pg_database, tmp_path, cfg)


async def _a_worker_takes_what_is_free(db: TestDb, tmp_path: Path, cfg: Path) -> None:
    worker = await _start(tmp_path, cfg, 0)
    try:
        await wait_for(lambda: _holders(db).get("project:beta") == worker.pid
                       and _holders(db).get("project:gamma") == worker.pid, timeout=30)
        assert _lease_holders(db)["project:alpha"] == ELSEWHERE
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.proc.wait(), 20) == 0
