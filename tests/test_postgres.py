"""The command line with the store on PostgreSQL (`[database] url`): the commands people run,
end to end against the simulator, and what differs from SQLite said in one line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from botasync import config
from botasync.service.daemon import Daemon
from botasync.service.workers import Workers
from botasync.simulator import Simulator, World
from tests.conftest import SimulatorFactory, wait_for
from tests.pgserver import TestDb
from tests.test_cli import ThreadedSim, cli_env, one_clear_line, run
from tests.test_daemon import KEY, Collect, start


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(World(seed=12, recordings=180)) as s:
        yield s


@pytest.fixture
def env(sim: ThreadedSim, pg_database: TestDb) -> dict[str, str]:
    """The CLI's environment with the store on the test's PostgreSQL database."""
    return {**cli_env(sim, pg_database.path), "BOTASYNC_DATABASE_URL": pg_database.url}


def test_sync_status_and_queries_on_postgres(
    env: dict[str, str], sim: ThreadedSim, pg_database: TestDb,
) -> None:
    """sync, recordings list/show, events list/replay/prune and status answer as on SQLite;
    no SQLite file is made."""
    result = run(["sync"], env)
    assert result.exit_code == 0, result.output + result.stderr
    assert "180 created" in result.stdout
    assert not pg_database.path.exists()
    assert pg_database.rows("SELECT count(*) FROM recordings") == [(180,)]
    again = json.loads(run(["sync", "--json"], env).stdout)
    assert again["passes"][0]["unchanged"] == 180
    quick = json.loads(run(["sync", "--quick", "--json"], env).stdout)
    assert [p["kind"] for p in quick["passes"]] == ["head", "hot"]

    rows = json.loads(run(["recordings", "list", "--json", "--limit", "5"], env).stdout)
    assert len(rows) == 5 and rows[0]["id"] == sim.world.all()[0]["id"]
    one = json.loads(run(["recordings", "show", rows[0]["id"], "--json"], env).stdout)
    assert [e["type"] for e in one["events"]] == ["recording.created"]
    assert isinstance(one["metadata"], dict | None)
    events = json.loads(run(["events", "list", "--json", "--type", "recording.*",
                             "--limit", "3"], env).stdout)
    assert len(events) == 3 and events[0]["type"] == "recording.created"
    assert json.loads(run(["events", "list", "--json", "--type", "[!r]*"], env).stdout) == []

    status = json.loads(run(["status", "--json"], env).stdout)
    assert sum(status["recordings"].values()) == 180
    assert status["last_walk"]["complete"] == 1 and status["events"]["total"] == 180
    assert status["database"]["path"] == pg_database.url and status["database"]["bytes"] > 0
    text = run(["status"], env).stdout
    assert pg_database.url in text
    pruned = run(["events", "prune", "--dry-run"], env)
    assert pruned.exit_code == 0, pruned.stderr


def test_what_postgres_does_not_do_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    """`snapshot` copies a SQLite file: on PostgreSQL it says to use pg_dump, exit 1."""
    assert run(["sync"], env).exit_code == 0
    result = run(["snapshot", str(tmp_path / "copy.db")], env)
    assert result.exit_code == 1 and "pg_dump" in one_clear_line(result)
    assert not (tmp_path / "copy.db").exists()


def test_a_read_only_command_on_an_empty_database_is_one_line(env: dict[str, str]) -> None:
    """Before the first sync: `status` says to run one; nothing is created."""
    result = run(["status"], env)
    assert result.exit_code == 1 and "no botasync database at" in one_clear_line(result)


def test_the_password_is_never_shown(env: dict[str, str]) -> None:
    """A password in the URL: `config show` prints ***, and an unreachable server's error
    names the URL without it."""
    url = "postgresql://botasync:sup3rsecret@127.0.0.1:1/botasync?password=sup3rsecret"
    shown = run(["config", "show"], {**env, "BOTASYNC_DATABASE_URL": url})
    assert shown.exit_code == 0 and "sup3rsecret" not in shown.stdout
    assert json.loads(shown.stdout)["database"]["url"] == (
        "postgresql://botasync:***@127.0.0.1:1/botasync?password=***")
    result = run(["status"], {**env, "BOTASYNC_DATABASE_URL": url})
    assert result.exit_code == 1 and "cannot open database" in one_clear_line(result)
    assert "sup3rsecret" not in result.stderr + result.stdout
    result = run(["sync"], {**env, "BOTASYNC_DATABASE_URL": url})
    assert result.exit_code == 1 and "sup3rsecret" not in result.stderr + result.stdout


def test_a_url_that_is_not_postgres_is_a_config_error(env: dict[str, str]) -> None:
    result = run(["status"], {**env, "BOTASYNC_DATABASE_URL": "mysql://x@y/z"})
    assert result.exit_code == 2
    assert "[database] url: Value error, must be a postgresql://" in one_clear_line(result)


# --- the daemon ---------------------------------------------------------------------------


def _daemon_cfg(sim: Simulator, db: TestDb, lock_dir: Path) -> config.Config:
    """A daemon's config; `lock_dir` stands for the machine (its local lock files)."""
    return config.load(env={}, overrides={
        "api": {"base_url": sim.url, "api_key": KEY, "requests_per_minute": 100_000},
        "database": {"path": str(lock_dir / "botasync.db"), "url": db.url},
        "sync": {"interval_s": 0.2, "reconcile_every_s": 1.0},
    })


def _count(db: TestDb) -> int:
    try:
        return int(db.rows("SELECT count(*) FROM recordings")[0][0])
    except psycopg.Error:  # no tables yet
        return 0


def _backfilled(db: TestDb) -> bool:
    """The first walk has completed: a change from now on is not part of the backfill (whose
    events are not delivered)."""
    try:
        return bool(db.rows("SELECT count(*) FROM sync_runs WHERE complete = 1")[0][0])
    except psycopg.Error:  # no tables yet
        return False


def _holders(db: TestDb) -> dict[str, str | None]:
    return {r[0]: r[1] for r in db.rows("SELECT name, holder FROM leases")}


async def test_the_daemon_on_postgres_delivers_changes_and_shares_the_database(
    simulator_factory: SimulatorFactory, pg_database: TestDb, tmp_path: Path,
) -> None:
    """`botasync run` on PostgreSQL: changes become delivered events while it runs; a second
    daemon on the same database, from another machine (other lock files), joins as a worker
    and takes nothing the first holds (one project, one handler: a share of one each)."""
    sim = await simulator_factory(World(seed=21, recordings=300))
    handler = Collect()
    daemon = Daemon(_daemon_cfg(sim, pg_database, tmp_path / "one"), handle_signals=False,
                    extra_handlers=[handler])
    task = await start(daemon)
    try:
        await wait_for(lambda: _count(pg_database) == 300 and _backfilled(pg_database),
                       timeout=20)
        assert handler.events == []  # the backfill is not delivered
        assert isinstance(daemon.coordinator, Workers)
        first = daemon.coordinator.me.id
        assert _holders(pg_database) == {"project:default": first, "handler:collect": first}
        # every session of the worker carries its id (how the others end them if it dies):
        # the store's pool, the lease table's, the listener's
        assert pg_database.rows("SELECT count(*) >= 3 FROM pg_stat_activity "
                                "WHERE application_name = ?", (first,)) == [(True,)]
        second = Daemon(_daemon_cfg(sim, pg_database, tmp_path / "two"), handle_signals=False)
        second_task = await start(second)
        await wait_for(lambda: len(pg_database.rows("SELECT id FROM workers")) == 2, timeout=10)
        world = sim.world
        moving = world.all()[250]["id"]
        world.update(moving, status="failed")
        new = world.create(name="fresh")
        await wait_for(lambda: handler.of("recording.failed", moving), timeout=30)
        await wait_for(lambda: handler.of("recording.created", new["id"]), timeout=30)
        gone = world.all()[100]["id"]
        world.delete(gone)
        await wait_for(lambda: handler.of("recording.deleted", gone), timeout=30)
        assert _holders(pg_database) == {"project:default": first, "handler:collect": first}
        second.stop()
        assert await asyncio.wait_for(second_task, 10) == 0
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 10) == 0
    ids = [e["id"] for e in handler.events]
    assert len(ids) == len(set(ids))
    # a clean stop gives every lease back and leaves the workers table
    assert _holders(pg_database) == {"project:default": None, "handler:collect": None}
    assert pg_database.rows("SELECT id FROM workers") == []
