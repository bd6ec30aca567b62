"""Defects the torture runs found, each pinned by a deterministic case that failed before its fix."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from botasync import config
from botasync.service.app import App
from botasync.simulator import Simulator, World
from botasync.store.sqlite import Store
from tests.conftest import SimulatorFactory
from tests.mirror import mirror_diff
from tests.torture.harness import API_KEYS, KEY, rows

pytestmark = pytest.mark.torture


def app_config(sim: Simulator, db: Path, **sections: dict[str, Any]) -> config.Config:
    base: dict[str, dict[str, Any]] = {
        "api": {"base_url": sim.url, "api_key": KEY, "requests_per_minute": 100_000},
        "database": {"path": str(db)},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    return config.load(env={}, overrides=base)


async def test_two_passes_seeing_one_new_recording_announce_it_once(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    """A tick and a reconcile that both find a new recording store it once, with one created event.

    Found by the kill -9 run (the daemon runs them side by side): each pass read only the
    rows it already knew inside its write, so both announced `recording.created`.
    """
    sim = await simulator_factory(World(seed=41, recordings=30), api_keys=API_KEYS)
    db = tmp_path / "botasync.db"
    async with await App.open(app_config(sim, db)) as app:
        await app.syncer.full()
        fresh = sim.world.create(name="seen by both passes")
        edited = sim.world.all()[3]["id"]
        sim.world.update(edited, name="edited: both passes fetch its detail")
        # every answer takes 50 ms: both passes list the page before either writes it
        sim.faults.latency_s = 0.05
        await asyncio.gather(app.syncer.head(), app.syncer.full(kind="reconcile"))
    created = rows(db, "SELECT count(*) FROM events WHERE type = 'recording.created' AND "
                       "recording_id = ? AND backfill = 0", (fresh["id"],))
    updated = rows(db, "SELECT count(*) FROM events WHERE type = 'recording.updated' AND "
                       "recording_id = ?", (edited,))
    assert (created[0][0], updated[0][0]) == (1, 1)
    assert mirror_diff(db, sim.world.all()) == []


async def test_a_stale_page_never_turns_a_newer_row_back(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    """A reconcile page read before a tick stored a newer state does not write its older copy.

    Found by probing what the kill -9 run's event checks guard against: a reconcile page
    waiting on one slow detail wrote its copy of another recording (processing) over the
    completed one a tick had stored meanwhile, with backwards events.
    """
    sim = await simulator_factory(World(seed=43, recordings=30), api_keys=API_KEYS)
    world, db = sim.world, tmp_path / "botasync.db"
    moving, slow = world.ids()[2], world.ids()[4]
    world.update(moving, status="uploaded", transcription_id=None)
    async with await App.open(app_config(sim, db)) as app:
        await app.syncer.full()
        world.update(moving, status="processing")
        world.update(slow, name="its detail will be slow")
        sim.faults.slow_s = 1.0
        sim.faults.queue("slow", 1, path_prefix=f"/v1/recordings/{slow}")
        reconcile = asyncio.create_task(app.syncer.full(kind="reconcile"))
        await _until_requested(sim, f"/v1/recordings/{moving}")
        world.update(moving, status="completed", transcription_id="txn_stale_probe")
        await app.syncer.hot()  # sees `moving` completed and stores it
        await reconcile  # its page, read before that, must not store `processing` back
    statuses = [json.loads(p)["data"]["status"] for (p,) in rows(
        db, "SELECT payload FROM events WHERE recording_id = ? AND backfill = 0 AND type = "
            "'recording.status_changed' ORDER BY seq", (moving,))]
    assert statuses == ["completed"]
    assert rows(db, "SELECT status FROM recordings WHERE id = ?", (moving,)) == [("completed",)]


async def _until_requested(sim: Simulator, path: str) -> None:
    for _ in range(500):
        if any(r.path == path for r in sim.requests):
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{path} was never requested")


async def test_a_transaction_cancelled_at_its_begin_leaves_none_open(tmp_path: Path) -> None:
    """Cancelled while its BEGIN runs, a transaction is undone; the next one starts cleanly.

    Found by the bad-input case `key_rejected_daemon`: the daemon cancelled its own state
    save at shutdown, and every later transaction failed "within a transaction".
    """
    async with await Store.open(tmp_path / "botasync.db") as store:

        async def write() -> None:
            async with store.transaction() as conn:
                await conn.execute("INSERT INTO state (key, value) VALUES ('a', '1')")

        task = asyncio.create_task(write())
        await asyncio.sleep(0)  # it now waits on its BEGIN, which the database thread runs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with store.transaction() as conn:
            await conn.execute("INSERT INTO state (key, value) VALUES ('b', '2')")
        assert [tuple(r) for r in await store.fetchall("SELECT key FROM state")] == [("b",)]
