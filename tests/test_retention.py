"""Outbox retention: old settled events go; pending, dead, recent ones and the mirror stay."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from botasync.simulator import World
from botasync.store import retention
from botasync.store.base import Database
from botasync.store.sqlite import Store
from tests.pgserver import TestDb
from tests.test_cli import ThreadedSim, cli_env, run
from tests.test_outbox import add_events, created

OLD = "2025-01-01T00:00:00.000Z"  # add_events' created_at
RECENT = "2026-11-24T00:00:00.000Z"
NOW = datetime(2026, 11, 25, tzinfo=UTC)


def seqs(db: Path | TestDb, sql: str = "SELECT seq FROM events ORDER BY seq") -> list[int]:
    if isinstance(db, TestDb):
        return [int(r[0]) for r in db.rows(sql)]
    with sqlite3.connect(db) as conn:
        return [int(r[0]) for r in conn.execute(sql)]


async def settle(store: Database, handler: str, cursor: int, states: dict[int, str]) -> None:
    """What the dispatcher writes: a cursor and per-event delivery records."""
    async with store.transaction() as conn:
        await conn.execute(
            "INSERT INTO handler_cursors (handler, seq) VALUES (?, ?) "
            "ON CONFLICT (handler) DO UPDATE SET seq = excluded.seq", (handler, cursor))
        for seq, state in states.items():
            await conn.execute(
                "INSERT INTO deliveries (handler, event_seq, state, attempts) VALUES (?, ?, ?, 1)",
                (handler, seq, state))


async def test_forgets_only_old_settled_events(database: TestDb) -> None:
    """Old and past every cursor: gone with its deliveries. Pending, dead or new: kept."""
    db = database
    async with await db.open() as store:
        await add_events(store, *created("rec_1", "rec_2", "rec_3", "rec_4", "rec_5"))
        async with store.transaction() as conn:  # the fifth is recent
            await conn.execute("UPDATE events SET created_at = ? WHERE seq = 5", (RECENT,))
        # a: settled up to 4, event 2 dead for it; b: settled up to 3 only
        await settle(store, "a", 4, {1: "delivered", 2: "dead", 3: "delivered", 4: "delivered"})
        await settle(store, "b", 3, {1: "delivered"})
        before = retention.cutoff(90, NOW)
        dry = await retention.prune_events(store, before, ["a", "b"], dry_run=True)
        assert dry.events == 2 and seqs(db) == [1, 2, 3, 4, 5]
        result = await retention.prune_events(store, before, ["a", "b"])
    assert (result.events, result.deliveries) == (2, 3)
    assert seqs(db) == [2, 4, 5]  # 2 dead for a, 4 past b's cursor, 5 recent
    assert seqs(db, "SELECT event_seq FROM deliveries ORDER BY event_seq") == [2, 4]


async def test_a_removed_handler_holds_nothing_back(database: TestDb) -> None:
    """Only the configured handlers' cursors count; with none, every old event may go."""
    db = database
    async with await db.open() as store:
        await add_events(store, *created("rec_1", "rec_2"))
        await settle(store, "gone", 0, {})
        assert (await retention.prune_events(store, retention.cutoff(1, NOW), ["a"])).events == 2
        await add_events(store, *created("rec_3"))
        assert (await retention.prune_events(store, retention.cutoff(1, NOW), [])).events == 1
    assert seqs(db) == []
    async with await db.open() as store:  # seq is never reused after a prune
        await add_events(store, *created("rec_4"))
    assert seqs(db) == [4]


async def test_large_outbox_goes_in_batches(
    database: TestDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More than a batch is forgotten in several transactions, all of it."""
    monkeypatch.setattr(retention, "BATCH", 7)
    db = database
    async with await db.open() as store:
        await add_events(store, *created(*(f"rec_{i}" for i in range(30))))
        result = await retention.prune_events(store, retention.cutoff(1, NOW), [])
    assert result.events == 30 and seqs(db) == []


async def test_prune_reads_by_index(tmp_path: Path) -> None:
    """The prune query walks the created_at index and finds dead letters by event, no scans."""
    async with await Store.open(tmp_path / "r.db") as store:
        plan = " / ".join(r[3] for r in await store.fetchall(
            "EXPLAIN QUERY PLAN " + retention._PRUNABLE["sqlite"], ("2026", "[]", 10)))
    assert "USING COVERING INDEX events_created_at (created_at<?)" in plan, plan
    assert "USING INDEX deliveries_event_seq (event_seq=?)" in plan, plan
    assert "SCAN e" not in plan and "SCAN d" not in plan, plan


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(World(seed=5, recordings=40)) as s:
        yield s


def test_events_prune_command_and_sync(sim: ThreadedSim, tmp_path: Path) -> None:
    """`events prune` counts and forgets aged events; the mirror stays; `sync` prunes too."""
    db = tmp_path / "botasync.db"
    env = cli_env(sim, db)
    assert run(["sync"], env).exit_code == 0
    assert len(seqs(db)) == 40
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET created_at = ? WHERE seq <= 10", (OLD,))
    dry = run(["events", "prune", "--dry-run", "--json"], env)
    assert dry.exit_code == 0 and json.loads(dry.stdout)["events"] == 10
    assert len(seqs(db)) == 40
    assert run(["events", "prune", "--days", "100000"], env).stdout.startswith("forgot 0 ")
    done = run(["events", "prune"], env)
    assert done.exit_code == 0 and done.stdout.startswith("forgot 10 settled events")
    assert seqs(db)[0] == 11
    assert seqs(db, "SELECT count(*) FROM recordings") == [40]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET created_at = ? WHERE seq <= 20", (OLD,))
    assert run(["sync"], env).exit_code == 0  # a full pass prunes after it
    assert seqs(db)[0] == 21


def test_zero_retention_keeps_everything(sim: ThreadedSim, tmp_path: Path) -> None:
    """`retention_days = 0`: the sync forgets nothing and `events prune` wants --days."""
    db = tmp_path / "botasync.db"
    cfg = tmp_path / "botasync.toml"
    cfg.write_text("[events]\nretention_days = 0\n")
    env = cli_env(sim, db, cfg)
    assert run(["sync"], env).exit_code == 0
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET created_at = ?", (OLD,))
    assert run(["sync"], env).exit_code == 0
    assert len(seqs(db)) == 40
    refused = run(["events", "prune"], env)
    assert refused.exit_code == 2 and "--days" in refused.stderr
    everything = run(["events", "prune", "--days", "0", "--json"], env)
    assert everything.exit_code == 0 and json.loads(everything.stdout)["events"] == 40


@st.composite
def outboxes(draw: st.DrawFn) -> tuple[list[tuple[bool, bool]], dict[str, int], list[str]]:
    """Events (old?, dead for some handler?), handler cursors, and the configured handlers."""
    events = draw(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=25))
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=3))
    cursors = {n: draw(st.integers(0, len(events))) for n in names}
    configured = draw(st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=3))
    return events, cursors, configured


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=outboxes())
async def test_prune_takes_exactly_the_settled_old_events(
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[list[tuple[bool, bool]], dict[str, int], list[str]],
) -> None:
    """Whatever the cursors and dead letters: gone iff old, settled everywhere and not dead."""
    events, cursors, configured = case
    db = tmp_path_factory.mktemp("prop") / "r.db"
    async with await Store.open(db) as store:
        await add_events(store, *created(*(f"rec_{i}" for i in range(len(events)))))
        async with store.transaction() as conn:
            for seq, (old, dead) in enumerate(events, start=1):
                if not old:
                    await conn.execute("UPDATE events SET created_at = ? WHERE seq = ?",
                                       (RECENT, seq))
                if dead:
                    await conn.execute("INSERT INTO deliveries (handler, event_seq, state) "
                                       "VALUES ('a', ?, 'dead')", (seq,))
            for name, cursor in cursors.items():
                await conn.execute("INSERT INTO handler_cursors VALUES (?, ?)", (name, cursor))
        await retention.prune_events(store, retention.cutoff(90, NOW), configured)
    bound = min((cursors[n] for n in configured if n in cursors), default=len(events))
    kept = [seq for seq, (old, dead) in enumerate(events, start=1)
            if not old or dead or seq > bound]
    assert seqs(db) == kept
