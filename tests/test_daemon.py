"""The daemon: ticks on a schedule, events within an interval, clean stops, systemd notify."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from botasync import config
from botasync.errors import BotasyncError
from botasync.jsoncodec import loads
from botasync.service.daemon import Daemon, Notifier
from botasync.simulator import Simulator, World
from tests import zygote
from tests.conftest import SimulatorFactory, wait_for

KEY = "sk_test_botasync"


class Collect:
    """A handler that keeps every event it is given."""

    name = "collect"
    patterns = ["*"]

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def deliver(self, payload: bytes, event_id: str, event_type: str) -> None:
        self.events.append(loads(payload))

    async def aclose(self) -> None:
        return None

    def of(self, type_: str, rec_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events
                if e["type"] == type_ and (rec_id is None or e["data"]["id"] == rec_id)]


def daemon_cfg(sim: Simulator, db: Path, **sync: Any) -> config.Config:
    return config.load(env={}, overrides={
        "api": {"base_url": sim.url, "api_key": KEY, "requests_per_minute": 100_000},
        "database": {"path": str(db)},
        "sync": {"interval_s": 0.2, "reconcile_every_s": 3600, **sync},
    })


async def start(daemon: Daemon) -> asyncio.Task[int]:
    """Run the daemon in this loop; the tests' own sqlite3 reads run in threads."""
    task = asyncio.create_task(daemon.run())
    await wait_for(lambda: daemon.app is not None, timeout=10)
    return task


async def test_changes_reach_handler_within_an_interval(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    """Status changes, new recordings and deletions become delivered events while it runs."""
    sim = await simulator_factory(World(seed=21, recordings=400))
    handler = Collect()
    cfg = daemon_cfg(sim, tmp_path / "botasync.db", reconcile_every_s=1.0)
    daemon = Daemon(cfg, handle_signals=False, extra_handlers=[handler])
    task = await start(daemon)
    try:
        await wait_for(lambda: daemon.app and daemon.app.syncer.mirror, timeout=5)
        world = sim.world
        await wait_for(lambda: _count(tmp_path / "botasync.db") == 400, timeout=10)
        assert handler.events == []  # the backfill is not delivered
        moving = world.all()[350]["id"]
        world.update(moving, status="failed")
        new = world.create(name="fresh")
        await wait_for(lambda: handler.of("recording.failed", moving), timeout=5)
        await wait_for(lambda: handler.of("recording.created", new["id"]), timeout=5)
        assert handler.of("recording.status_changed", moving)[0]["previous"]["status"] == \
            "completed"
        gone = world.all()[200]["id"]
        world.delete(gone)
        await wait_for(lambda: handler.of("recording.deleted", gone), timeout=10)
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 10) == 0


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM recordings").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


async def test_idle_ticks_cost_a_handful_of_requests(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    """With 1,500 mostly finished recordings and no change, a tick is 3 hot lists + 1 head page."""
    sim = await simulator_factory(World(seed=22, recordings=1500))
    db = tmp_path / "botasync.db"
    daemon = Daemon(daemon_cfg(sim, db), handle_signals=False)
    task = await start(daemon)
    try:
        await wait_for(lambda: _count(db) == 1500, timeout=10)
        await wait_for(lambda: _ticks(db) >= 2, timeout=10)
        mark, ticks_before = len(sim.requests), _ticks(db)
        await wait_for(lambda: _ticks(db) >= ticks_before + 5, timeout=10)
        ticks = _ticks(db) - ticks_before
        per_tick = (len(sim.requests) - mark) / ticks
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)
    assert per_tick <= 5, per_tick


def _ticks(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(
            "SELECT count(*) FROM sync_runs WHERE kind = 'hot' AND ended_at IS NOT NULL"
        ).fetchone()[0])


def _write_cfg(tmp_path: Path, sim: Simulator, **sync: Any) -> Path:
    lines = ["[api]", f'base_url = "{sim.url}"', f'api_key = "{KEY}"', "concurrency = 1",
             "[database]", f'path = "{tmp_path / "botasync.db"}"', "[sync]"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in sync.items()]
    path = tmp_path / "botasync.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _spawn(cfg: Path, env: dict[str, str] | None = None) -> Any:
    return await zygote.botasync("run", "--config", str(cfg), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE,
                                 env={**os.environ, "BOTASYNC_CONFIG": "", **(env or {})})


def _position(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            row = conn.execute("SELECT max(position) FROM sync_runs WHERE kind = 'full'").fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(row[0] or 0)


async def test_sigterm_mid_walk_exits_clean_and_resumes(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    """SIGTERM during a walk: exit 0 within 10 s, a sound database, and the walk resumes."""
    sim = await simulator_factory(World(seed=23, recordings=3000), latency_s=0.05)
    cfg = _write_cfg(tmp_path, sim, interval_s=600)
    db = tmp_path / "botasync.db"
    proc = await _spawn(cfg)
    await wait_for(lambda: _position(db) >= 500, timeout=30)
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    assert KEY not in err.decode()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stopped_at = conn.execute("SELECT position FROM sync_runs WHERE kind = 'full' "
                                  "ORDER BY id DESC LIMIT 1").fetchone()[0]
        stored = conn.execute("SELECT count(*) FROM recordings").fetchone()[0]
    assert stopped_at >= 500 and stored >= stopped_at
    mark = len(sim.requests)
    proc = await _spawn(cfg)
    await wait_for(lambda: _count(db) == 3000 and _walk_complete(db), timeout=60)
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
    assert '"walk_resumed"' in err.decode()
    started = next(json.loads(line) for line in err.decode().splitlines()
                   if '"daemon_started"' in line)
    assert started["frozen_objects"] > 10_000  # its start-up heap, out of the GC's walks
    offsets = [int(r.query.split("offset=")[1].split("&")[0]) for r in sim.requests[mark:]
               if r.path == "/v1/recordings" and "status=" not in r.query]
    assert offsets and min(offsets) >= stopped_at  # it did not start over from offset 0


def _walk_complete(db: Path) -> bool:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM sync_runs WHERE kind = 'full' AND complete = 1"
                           ).fetchone()
    return bool(row[0])


async def test_systemd_ready_and_watchdog(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    """Under systemd it says READY=1 once scheduled and pings WATCHDOG=1 from the loop."""
    sim = await simulator_factory(World(seed=24, recordings=50))
    cfg = _write_cfg(tmp_path, sim, interval_s=600)
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    proc = await _spawn(cfg, {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "200000"})
    try:
        messages: list[str] = []
        while not (any("READY=1" in m for m in messages) and
                   sum("WATCHDOG=1" in m for m in messages) >= 2):
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            messages.append(data.decode())
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 10)
        sock.close()
    assert proc.returncode == 0
    assert any("STOPPING=1" in m for m in messages) or proc.returncode == 0


def test_notifier_reads_environment() -> None:
    """The notifier takes its socket and watchdog period from systemd's variables."""
    n = Notifier({"NOTIFY_SOCKET": "@abc", "WATCHDOG_USEC": "30000000"})
    assert n.address == "@abc" and n.watchdog_s == 30.0
    quiet = Notifier({})
    quiet.send("READY=1")  # outside systemd: nothing, no error
    assert quiet.watchdog_s == 0.0


async def test_reconcile_forgets_old_settled_events(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    """After a reconcile walk, events past the retention and settled for every handler go."""
    sim = await simulator_factory(World(seed=23, recordings=30))
    db = tmp_path / "botasync.db"
    daemon = Daemon(daemon_cfg(sim, db, reconcile_every_s=0.3), handle_signals=False,
                    extra_handlers=[Collect()])
    task = await start(daemon)
    try:
        await wait_for(lambda: _count(db) == 30, timeout=10)
        await wait_for(lambda: _events_left(db, "") == 30, timeout=10)
        await asyncio.to_thread(_age_events, db)
        await wait_for(lambda: _events_left(db, "WHERE created_at < '2026'") == 0, timeout=10)
        assert _count(db) == 30  # the mirror is never pruned
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 10) == 0


def _age_events(db: Path) -> None:
    with sqlite3.connect(db, timeout=10) as conn:
        conn.execute("UPDATE events SET created_at = '2025-01-01T00:00:00.000Z'")


def _events_left(db: Path, where: str) -> int:
    with sqlite3.connect(db, timeout=10) as conn:
        return int(conn.execute(f"SELECT count(*) FROM events {where}").fetchone()[0])


async def test_second_daemon_on_one_database_is_refused(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    """Two daemons would poll twice and deliver twice: the second stops with one clear error."""
    sim = await simulator_factory(World(seed=24, recordings=10))
    db = tmp_path / "botasync.db"
    first = Daemon(daemon_cfg(sim, db), handle_signals=False)
    task = await start(first)
    try:
        await wait_for(lambda: _count(db) == 10, timeout=10)
        second = Daemon(daemon_cfg(sim, db), handle_signals=False)
        with pytest.raises(BotasyncError, match=r"another botasync daemon is already using .*pid"):
            await second.run()
        assert not task.done()  # the first goes on
    finally:
        first.stop()
        assert await asyncio.wait_for(task, 10) == 0
    again = Daemon(daemon_cfg(sim, db), handle_signals=False)  # the lock went with the first
    task = await start(again)
    again.stop()
    assert await asyncio.wait_for(task, 10) == 0
