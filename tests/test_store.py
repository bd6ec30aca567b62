"""Store: the file, the schema, transactions and the pass log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from botasync.errors import MigrationError, StoreError
from botasync.store import migrations
from botasync.store.sqlite import Mirror, Store
from tests.conftest import wait_for


async def test_new_database_is_private_wal_and_migrated(tmp_path: Path) -> None:
    """A new file is 0600, in WAL mode, at the latest schema version, with foreign keys on."""
    db = tmp_path / "sub" / "botasync.db"
    async with await Store.open(db) as store:
        assert (await store.fetchone("PRAGMA journal_mode"))[0] == "wal"
        assert (await store.fetchone("PRAGMA user_version"))[0] == migrations.LATEST
        assert (await store.fetchone("PRAGMA foreign_keys"))[0] == 1
        async with store.transaction() as conn:
            await conn.execute("INSERT INTO state (key, value) VALUES ('k', 'v')")
        assert (tmp_path / "sub" / "botasync.db-wal").exists()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    async with await Store.open(db) as store:  # reopening migrates nothing and keeps data
        assert (await store.fetchone("SELECT value FROM state WHERE key = 'k'"))[0] == "v"


async def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    """An exception inside a transaction leaves nothing behind."""
    async def fail_inside(store: Store) -> None:
        async with store.transaction() as conn:
            await conn.execute("INSERT INTO state (key, value) VALUES ('k', 'v')")
            raise RuntimeError("boom")

    async with await Store.open(tmp_path / "b.db") as store:
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


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer botasync is refused with a clear error."""
    db = tmp_path / "b.db"
    async with await Store.open(db) as store:
        async with store.transaction() as conn:
            await conn.execute(f"PRAGMA user_version = {migrations.LATEST + 1}")
    with pytest.raises(MigrationError, match="newer than this botasync"):
        await Store.open(db)


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
        assert (await store.fetchone("PRAGMA user_version"))[0] == migrations.LATEST
        media = await store.fetchone("SELECT id, local_path, download_attempts FROM media")
        assert media is not None and tuple(media) == ("med_1", None, 0)
        assert (await store.fetchone("SELECT count(*) FROM recordings"))[0] == 1
        assert (await store.fetchone("SELECT id FROM events"))[0] == "evt_1"
        assert (await store.fetchone("PRAGMA integrity_check"))[0] == "ok"


def test_statements_split_ignores_comments() -> None:
    """A `;` inside a comment does not split a statement."""
    sql = "CREATE TABLE a (x INT); -- one; two\nCREATE TABLE b (y INT); -- three"
    assert migrations._statements(sql) == ["CREATE TABLE a (x INT)", "CREATE TABLE b (y INT)"]


async def test_prune_keeps_what_matters(tmp_path: Path) -> None:
    """Old quiet ticks are pruned; ticks that changed something and walks are kept."""
    async with await Store.open(tmp_path / "b.db") as store:
        mirror = Mirror(store)
        quiet = await mirror.start_run("hot", "2026-01-01T00:00:00.000Z")
        busy = await mirror.start_run("head", "2026-01-01T00:00:00.000Z")
        await mirror.update_run(busy, {"created": 1})
        walk = await mirror.start_run("full", "2026-01-01T00:00:00.000Z")
        recent = await mirror.start_run("hot", "2026-06-01T00:00:00.000Z")
        assert await mirror.prune_runs("2026-03-01T00:00:00.000Z") == 1
        left = {r[0] for r in await store.fetchall("SELECT id FROM sync_runs")}
        assert left == {busy, walk, recent} and quiet not in left
    assert os.path.exists(tmp_path / "b.db")
