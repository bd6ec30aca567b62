"""Store: the file, the schema, transactions and the pass log."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from botasync.config import DatabaseConfig
from botasync.errors import MigrationError, StoreError
from botasync.store import migrations, open_store
from botasync.store.base import Database
from botasync.store.sqlite import Mirror, Store
from tests.conftest import one_row, wait_for
from tests.pgserver import TestDb


async def schema_version(store: Database) -> int:
    if store.dialect == "postgres":
        row = await store.fetchone("SELECT version FROM schema_version")
    else:
        row = await store.fetchone("PRAGMA user_version")
    assert row is not None
    return int(row[0])


async def test_new_database_is_private_wal_and_migrated(tmp_path: Path) -> None:
    """A new file is 0600, in WAL mode, at the latest schema version, with foreign keys on."""
    db = tmp_path / "sub" / "botasync.db"
    async with await Store.open(db) as store:
        assert (await one_row(store, "PRAGMA journal_mode"))[0] == "wal"
        assert (await one_row(store, "PRAGMA user_version"))[0] == migrations.LATEST
        assert (await one_row(store, "PRAGMA foreign_keys"))[0] == 1
        async with store.transaction() as conn:
            await conn.execute("INSERT INTO state (key, value) VALUES ('k', 'v')")
        assert (tmp_path / "sub" / "botasync.db-wal").exists()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    async with await Store.open(db) as store:  # reopening migrates nothing and keeps data
        assert (await one_row(store, "SELECT value FROM state WHERE key = 'k'"))[0] == "v"


async def test_a_new_database_is_migrated_and_keeps_its_rows(database: TestDb) -> None:
    """A new database opens at the latest schema version; reopening migrates nothing and
    keeps what was written."""
    async with await database.open() as store:
        assert await schema_version(store) == migrations.LATEST
        async with store.transaction() as conn:
            await conn.execute("INSERT INTO state (key, value) VALUES ('k', 'v')")
    async with await database.open() as store:
        assert await schema_version(store) == migrations.LATEST
        assert (await one_row(store, "SELECT value FROM state WHERE key = 'k'"))[0] == "v"
        assert (await one_row(store, "SELECT project FROM state"))["project"] == "default"


async def test_transaction_rolls_back_on_error(database: TestDb) -> None:
    """An exception inside a transaction leaves nothing behind."""
    async def fail_inside(store: Database) -> None:
        async with store.transaction() as conn:
            await conn.execute("INSERT INTO state (key, value) VALUES ('k', 'v')")
            raise RuntimeError("boom")

    async with await database.open() as store:
        with pytest.raises(RuntimeError):
            await fail_inside(store)
        assert await store.fetchone("SELECT * FROM state") is None


async def test_background_work_waits_for_a_foreground_pass(tmp_path: Path) -> None:
    """A background transaction does not run while a foreground pass does, even one that
    began while it queued for the connection; the pass's reads and writes never wait for it,
    and it runs once the pass ends."""
    async with await Store.open(tmp_path / "f.db") as store:
        order: list[str] = []

        async def background() -> None:
            async with store.transaction(background=True) as conn:
                await conn.execute("INSERT INTO state (key, value) VALUES ('bg', 'x')")
            order.append("background")

        async with contextlib.AsyncExitStack() as the_pass:
            async with store.transaction() as conn:  # holds the connection ...
                task = asyncio.create_task(background())
                await asyncio.sleep(0)  # ... while the background task queues for it
                await the_pass.enter_async_context(store.foreground())  # then a pass begins
            for i in range(3):  # the pass uses the store as it likes
                async with store.transaction() as conn:
                    await conn.execute("INSERT INTO state (key, value) VALUES (?, 'y')",
                                       (f"fg{i}",))
                bg = await store.fetchone("SELECT count(*) FROM state WHERE key = 'bg'")
                assert bg is not None and bg[0] == 0
            order.append("pass done")
        await wait_for(task.done)
        assert order == ["pass done", "background"]
        row = await store.fetchone("SELECT value FROM state WHERE key = 'bg'")
        assert row is not None and row[0] == "x"


async def test_newer_schema_is_refused(database: TestDb) -> None:
    """A database written by a newer botasync is refused with a clear error."""
    async with await database.open():
        pass
    if database.backend == "postgres":
        database.execute("UPDATE schema_version SET version = ?", (migrations.LATEST + 1,))
    else:
        database.execute(f"PRAGMA user_version = {migrations.LATEST + 1}")
    with pytest.raises(MigrationError, match="newer than this botasync"):
        await database.open()
    with pytest.raises(MigrationError, match="newer than this botasync"):
        await database.open(readonly=True)


async def test_rows_read_by_index_and_name_and_writes_count(database: TestDb) -> None:
    """The connection's surface is the same on both backends: rows by index and by name,
    `rowcount` (executemany's summed), `lastrowid`, `fetchmany`, `async with` a cursor."""
    async with await database.open() as store:
        async with store.transaction() as conn:
            cur = await conn.executemany(
                "INSERT INTO state (project, key, value) VALUES (?, ?, ?)",
                [("p", f"k{i}", f"v{i}") for i in range(5)])
            assert cur.rowcount == 5
            cur = await conn.execute("UPDATE state SET value = 'x' WHERE key IN ('k1', 'k2')")
            assert cur.rowcount == 2
            cur = await conn.execute(
                "INSERT INTO sync_runs (project, kind, started_at) VALUES (?, ?, ?)",
                ("p", "hot", "2026-01-01T00:00:00.000Z"))
            first = cur.lastrowid
            cur = await conn.execute(
                "INSERT INTO sync_runs (project, kind, started_at) VALUES (?, ?, ?)",
                ("p", "hot", "2026-01-01T00:00:01.000Z"))
            assert first is not None and cur.lastrowid == first + 1
            async with conn.execute("SELECT key FROM state ORDER BY key") as cur:
                assert [r[0] for r in await cur.fetchmany(2)] == ["k0", "k1"]
                assert [r[0] for r in await cur.fetchmany(10)] == ["k2", "k3", "k4"]
                assert await cur.fetchmany(10) == []
        row = await store.fetchone("SELECT key, value, 1 + 1 AS two FROM state WHERE key = ?",
                                   ("k1",))
        assert row is not None
        assert (row[0], row["value"], row["two"]) == ("k1", "x", 2)
        assert list(row.keys()) == ["key", "value", "two"]
        assert tuple(row) == ("k1", "x", 2)
        assert dict(zip(row.keys(), tuple(row), strict=True))["key"] == "k1"
        total = await store.fetchone("SELECT sum(pages + 2), count(*) FROM sync_runs")
        assert total is not None
        assert tuple(total) == (4, 2) and all(type(v) is int for v in total)


async def test_a_reader_is_refused_a_write_and_an_empty_database(database: TestDb) -> None:
    """`open_readonly` never migrates: a database with no schema is one line, and a write
    through a read-only store fails."""
    if database.backend == "sqlite":
        with pytest.raises(StoreError, match="no database at"):
            await database.open(readonly=True)
    else:
        with pytest.raises(StoreError, match="no botasync database at"):
            await database.open(readonly=True)
    async with await database.open():
        pass
    async with await database.open(readonly=True) as store:
        assert store.readonly
        with pytest.raises(StoreError):
            async with store.transaction() as conn:
                await conn.execute("INSERT INTO state (key, value) VALUES ('k', 'v')")
        assert await store.fetchone("SELECT * FROM state") is None


async def test_writers_are_serialised_across_stores(database: TestDb) -> None:
    """Two stores on one database (two processes): a write transaction waits for the other
    to end, so the read-then-write code written for SQLite stays correct."""
    async with await database.open() as one, await database.open() as two:
        await Mirror(one).set_state("n", "0")
        order: list[str] = []

        async def bump(store: Database, name: str, hold_s: float) -> None:
            async with store.transaction() as conn:
                async with conn.execute("SELECT value FROM state WHERE key = 'n'") as cur:
                    n = int((await cur.fetchone())[0])
                order.append(f"{name} read {n}")
                await asyncio.sleep(hold_s)
                await conn.execute("UPDATE state SET value = ? WHERE key = 'n'", (str(n + 1),))
                order.append(f"{name} wrote {n + 1}")

        first = asyncio.create_task(bump(one, "one", 0.3))
        while not order:
            await asyncio.sleep(0.01)
        await bump(two, "two", 0)
        await first
        assert order == ["one read 0", "one wrote 1", "two read 1", "two wrote 2"]
        assert await Mirror(one).get_state("n") == "2"


async def test_failed_open_leaves_no_worker_thread(tmp_path: Path) -> None:
    """A database that cannot open fails with one error and leaves no thread to outlive the loop.

    aiosqlite's worker thread, left running, printed a traceback once the CLI's loop closed.
    """
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(StoreError, match="cannot open database"):
        await Store.open(tmp_path / "a-directory")
    assert [t for t in threading.enumerate() if "_connection_worker" in t.name] == []


async def test_a_version_1_database_upgrades_in_place(tmp_path: Path) -> None:
    """A database written at schema 1 opens at the latest version with every row kept."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(migrations.STEPS[0])
        conn.execute("INSERT INTO recordings (id, status, raw, first_seen_at, synced_at) "
                     "VALUES ('rec_1', 'completed', '{}', '2025-01-01', '2025-01-01')")
        conn.execute("INSERT INTO media (id, recording_id, position, raw) "
                     "VALUES ('med_1', 'rec_1', 0, '{}')")
        conn.execute("INSERT INTO events (id, type, created_at, payload) "
                     "VALUES ('evt_1', 'recording.created', '2025-01-01', '{}')")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    async with await Store.open(db) as store:
        assert (await one_row(store, "PRAGMA user_version"))[0] == migrations.LATEST
        media = await store.fetchone("SELECT id, local_path, download_attempts FROM media")
        assert media is not None and tuple(media) == ("med_1", None, 0)
        assert (await one_row(store, "SELECT count(*) FROM recordings"))[0] == 1
        assert (await one_row(store, "SELECT id FROM events"))[0] == "evt_1"
        assert (await one_row(store, "PRAGMA integrity_check"))[0] == "ok"


def test_statements_split_ignores_comments() -> None:
    """A `;` inside a comment does not split a statement."""
    sql = "CREATE TABLE a (x INT); -- one; two\nCREATE TABLE b (y INT); -- three"
    assert migrations._statements(sql) == ["CREATE TABLE a (x INT)", "CREATE TABLE b (y INT)"]


async def test_prune_keeps_what_matters(database: TestDb) -> None:
    """Old quiet ticks are pruned; ticks that changed something and walks are kept."""
    async with await database.open() as store:
        mirror = Mirror(store)
        quiet = await mirror.start_run("hot", "2026-01-01T00:00:00.000Z")
        busy = await mirror.start_run("head", "2026-01-01T00:00:00.000Z")
        await mirror.update_run(busy, {"created": 1})
        walk = await mirror.start_run("full", "2026-01-01T00:00:00.000Z")
        recent = await mirror.start_run("hot", "2026-06-01T00:00:00.000Z")
        assert await mirror.prune_runs("2026-03-01T00:00:00.000Z") == 1
        left = {r[0] for r in await store.fetchall("SELECT id FROM sync_runs")}
        assert left == {busy, walk, recent} and quiet not in left
        assert await mirror.interrupted_walk(["full"]) is None


async def test_a_postgres_that_does_not_answer_is_one_line_without_its_password() -> None:
    """A URL whose server is not there: `cannot open database`, the password never shown."""
    url = "postgresql://botasync:hunter2secret@127.0.0.1:1/botasync"
    with pytest.raises(StoreError, match="cannot open database") as caught:
        await open_store(DatabaseConfig(url=url))
    assert "hunter2secret" not in str(caught.value)
    assert "postgresql://botasync:***@127.0.0.1:1/botasync" in str(caught.value)
