"""The same exact mirror at the same cost against both dialects of the Bota API.

The documented dialect pages by offset and lists `media[]`; the deployed one pages by
cursor, ignores `offset`, signs `audio_url` anew on every answer and has seven statuses.
botasync is told neither: it learns which from the answers.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from botasync.api.budget import RequestBudget
from botasync.api.client import Page
from botasync.api.pages import Pager
from botasync.errors import PaginationError
from botasync.service.app import App
from botasync.simulator import Dialect, Simulator, World, serve
from botasync.simulator.deployed import encode_cursor
from tests.mirror import mirror_diff
from tests.test_sync import full_sync, kinds, make_cfg, table_rows

DIALECTS: tuple[Dialect, ...] = ("documented", "deployed")


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> Dialect:
    return cast(Dialect, request.param)  # one of DIALECTS; pytest types it Any


@pytest.fixture
async def sim(dialect: Dialect) -> AsyncIterator[Simulator]:
    async with serve(World(seed=21, recordings=1500, dialect=dialect), rate_limit=None) as s:
        yield s


def detail_ids(sim: Simulator, since: int) -> set[str]:
    return {r.path.rsplit("/", 1)[1] for r in sim.requests[since:]
            if r.path.startswith("/v1/recordings/")}


async def test_first_sync_and_rerun_cost_the_minimum(sim: Simulator, tmp_path: Path) -> None:
    """N/100 list requests and no detail for a first sync; no detail for a re-run."""
    db = tmp_path / "botasync.db"
    cfg = make_cfg(sim, db)
    stats = await full_sync(cfg)
    assert mirror_diff(db, sim.world.all()) == []
    assert kinds(sim)["detail"] == 0 and 15 <= kinds(sim)["list"] <= 15 + 3
    assert (stats.created, stats.invalid, stats.complete) == (1500, 0, True)
    learned = json.loads(table_rows(db, "SELECT value FROM state WHERE key = 'dialect'")[0][0])
    assert learned["paging"] == ("cursor" if sim.world.dialect == "deployed" else "offset")
    mark = len(sim.requests)
    again = await full_sync(cfg)
    assert kinds(sim, mark) == {"list": 15, "detail": 0}
    assert (again.updated, again.unchanged, again.events) == (0, 1500, 0)


async def test_changes_cost_one_detail_each(sim: Simulator, tmp_path: Path) -> None:
    """Status changes (to the deployed dialect's own statuses too), renames and deletions."""
    db = tmp_path / "botasync.db"
    cfg = make_cfg(sim, db)
    await full_sync(cfg)
    world = sim.world
    ids = world.ids()
    deployed = world.dialect == "deployed"
    odd, bad = ("streaming", "integrity_failure") if deployed else ("processing", "failed")
    world.update(ids[10], status=odd)
    world.update(ids[600], status=bad)
    world.update(ids[70], name="renamed one")
    world.update(ids[900], name="renamed two")
    world.update(ids[1300], metadata={"edited": True})
    gone = [ids[300], ids[1450]]
    for rid in gone:
        world.delete(rid)
    mark = len(sim.requests)
    stats = await full_sync(cfg)
    assert kinds(sim, mark)["detail"] <= 7 + 2
    assert detail_ids(sim, mark) >= {ids[10], ids[600], ids[70], ids[900], ids[1300], *gone}
    assert (stats.updated, stats.deleted) == (5, 2)
    assert mirror_diff(db, world.all()) == []
    statuses = dict(table_rows(db, f"SELECT id, status FROM recordings "
                                   f"WHERE id IN ('{ids[10]}', '{ids[600]}')"))
    assert statuses == {ids[10]: odd, ids[600]: bad}
    tombstones = table_rows(db, "SELECT id FROM recordings WHERE deleted_at IS NOT NULL")
    assert sorted(r[0] for r in tombstones) == sorted(gone)
    types = [r[0] for r in table_rows(db, "SELECT type FROM events WHERE backfill = 0")]
    assert types.count("recording.deleted") == 2
    assert f"recording.{bad}" in types and f"recording.{odd}" in types


async def test_tick_finds_new_and_moved_in_both(sim: Simulator, tmp_path: Path) -> None:
    """The head and hot passes work by cursor as by offset."""
    db = tmp_path / "botasync.db"
    cfg = make_cfg(sim, db)
    world = sim.world
    moving = world.update(world.ids()[700], status="processing")
    await full_sync(cfg)
    world.update(moving["id"], status="completed")
    world.create(name="brand new")
    mark = len(sim.requests)
    async with await App.open(cfg) as app:
        head, hot = await app.syncer.quick()
        assert head.created == 1 and hot.updated == 1
        assert len(sim.requests) - mark <= 8
        mark = len(sim.requests)
        quiet = await app.syncer.quick()
        assert sum(s.requests for s in quiet) <= 4 and not any(s.created for s in quiet)
    assert mirror_diff(db, world.all()) == []


async def test_progress_never_probes_offsets_of_a_cursor_api(
    sim: Simulator, tmp_path: Path,
) -> None:
    """By offset the size is probed cheaply; by cursor it stays unknown and nothing spins."""
    seen: list[tuple[int, int | None]] = []
    cfg = make_cfg(sim, tmp_path / "botasync.db")
    async with await App.open(cfg, on_progress=lambda s, pos, total: seen.append((pos, total))
                              ) as app:
        stats = await app.syncer.full()
    probes = [r for r in sim.requests if "limit=1" in r.query.split("&")]
    assert stats.complete and stats.pages == 15
    if sim.world.dialect == "deployed":
        assert len(probes) <= 1 and all(total is None for _, total in seen)
        assert max(pos for pos, _ in seen) == 1500
    else:
        assert len(probes) <= 20 and all(t is not None and 1400 <= t <= 1600 for _, t in seen)


async def test_an_ignored_status_filter_is_noticed_and_worked_around(tmp_path: Path) -> None:
    """A filtered page holding other statuses: the in-flight ones are asked for by id."""
    async with serve(World(seed=22, recordings=800, dialect="deployed"), rate_limit=None) as sim:
        world = sim.world
        deep = world.ids()[500]
        world.update(deep, status="processing")
        db = tmp_path / "botasync.db"
        cfg = make_cfg(sim, db)
        await full_sync(cfg)
        sim.ignore_status_filter = True
        world.update(deep, status="completed")
        async with await App.open(cfg) as app:
            await app.syncer.mirror.set_state("hot_full_at", "2000-01-01T00:00:00Z")
            await app.syncer.quick()
            learned = json.loads(await app.syncer.mirror.get_state("dialect") or "{}")
            assert learned["filter_ignored_at"] is not None
            for _ in range(20):  # the watch takes turns, a few per tick
                if table_rows(db, f"SELECT status FROM recordings WHERE id = '{deep}'") == [
                        ("completed",)]:
                    break
                await app.syncer.quick()
            mark = len(sim.requests)
            await app.syncer.quick()
            assert not any("status=" in r.query for r in sim.requests[mark:])
            # the API mends its ways: after reconcile_every_s the filter is tried again
            sim.ignore_status_filter = False
            stale = dict(learned, filter_ignored_at="2000-01-01T00:00:00Z")
            await app.syncer.mirror.set_state("dialect", json.dumps(stale))
            await app.syncer.mirror.set_state("hot_full_at", "2000-01-01T00:00:00Z")
            mark = len(sim.requests)
            await app.syncer.quick()
            assert any("status=" in r.query for r in sim.requests[mark:])
            learned = json.loads(await app.syncer.mirror.get_state("dialect") or "{}")
            assert learned["filter_ignored_at"] is None
        assert table_rows(db, f"SELECT status FROM recordings WHERE id = '{deep}'") == [
            ("completed",)]


async def test_an_unknown_status_is_stored_and_watched(tmp_path: Path) -> None:
    """A status botasync does not know is stored as sent, never sent as a filter."""
    async with serve(World(seed=23, recordings=300, dialect="deployed"), rate_limit=None) as sim:
        world = sim.world
        odd = world.ids()[150]
        world.update(odd, status="archived")
        db = tmp_path / "botasync.db"
        cfg = make_cfg(sim, db)
        await full_sync(cfg)
        assert table_rows(db, f"SELECT status FROM recordings WHERE id = '{odd}'") == [
            ("archived",)]
        world.update(odd, status="completed")
        async with await App.open(cfg) as app:
            _, hot = await app.syncer.quick()
        assert hot.updated == 1
        assert not any("status=archived" in r.query for r in sim.requests)
        assert table_rows(db, f"SELECT status FROM recordings WHERE id = '{odd}'") == [
            ("completed",)]


# -- the pager's chain checks, on pages made here ------------------------------------------


def _pager(pages: dict[str | None, Page], depth: int = 1) -> Pager:
    async def fetch(offset: int, cursor: str | None) -> Page:
        return pages[cursor]

    return Pager(fetch, limit=2, depth=depth, cap=1 << 62, now=lambda: "t")


async def _drain(pager: Pager) -> list[Any]:
    return [[i["id"] for i in read.page.items] async for read in pager.pages()]


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize(("pages", "message"), [
    ({None: Page([{"id": "a"}], True, "c1"), "c1": Page([{"id": "b"}], True, "c1")},
     "already followed"),
    ({None: Page([{"id": "a"}], True, "c1"), "c1": Page([{"id": "b"}], True, None)},
     "no `next_cursor`"),
])
async def test_a_broken_cursor_chain_stops_after_the_last_good_page(
    pages: dict[str | None, Page], message: str, depth: int,
) -> None:
    """Every page that came is handed out, then one clear error: never a loop."""
    got: list[Any] = []

    async def collect() -> None:
        async for read in _pager(pages, depth).pages():
            got.append([i["id"] for i in read.page.items])

    with pytest.raises(PaginationError, match=message):
        await collect()
    assert got == [["a"], ["b"]]


async def test_a_cursor_chain_ends_where_has_more_is_false() -> None:
    pages = {None: Page([{"id": "a"}], True, "c1"), "c1": Page([{"id": "b"}], False, None)}
    assert await _drain(_pager(pages, depth=4)) == [["a"], ["b"]]


# -- a walk's checkpoint by cursor ------------------------------------------------------


class _Stop(Exception):
    """Stands for a process stopped mid-walk (the kill -9 torture does it for real)."""


async def _interrupted_at(cfg: Any, items: int) -> None:
    def stop_past(stats: Any, position: int, total: int | None) -> None:
        if position >= items:
            raise _Stop

    with pytest.raises(_Stop):
        async with await App.open(cfg, on_progress=stop_past) as app:
            await app.syncer.full()


@pytest.fixture
async def deployed_sim() -> AsyncIterator[Simulator]:
    async with serve(World(seed=24, recordings=1500, dialect="deployed"), rate_limit=None) as s:
        yield s


async def test_a_cursor_walk_resumes_where_it_stopped(
    deployed_sim: Simulator, tmp_path: Path,
) -> None:
    """The checkpoint holds the cursor: a resumed walk asks for no page twice."""
    db = tmp_path / "botasync.db"
    cfg = make_cfg(deployed_sim, db)
    await _interrupted_at(cfg, 500)
    (position, cursor), = table_rows(db, "SELECT position, cursor FROM sync_runs")
    assert position == 500 and cursor
    deployed_sim.world.create(name="made while stopped")  # at the top: shifts no cursor
    mark = len(deployed_sim.requests)
    stats = await full_sync(cfg)
    queries = [r.query for r in deployed_sim.requests[mark:] if r.path == "/v1/recordings"]
    assert len(queries) == 10 and "cursor=" in queries[0]
    assert stats.complete and stats.deleted == 0
    # the one created at the top while stopped is found by the next walk (or the head pass)
    await full_sync(cfg)
    assert mirror_diff(db, deployed_sim.world.all()) == []


@pytest.mark.parametrize("saved", ["refused", "first_page"])
async def test_a_lost_cursor_restarts_the_walk_once(
    deployed_sim: Simulator, tmp_path: Path, saved: str,
) -> None:
    """A saved cursor the API refuses (400) or answers with the first page: start again."""
    db = tmp_path / "botasync.db"
    cfg = make_cfg(deployed_sim, db)
    await _interrupted_at(cfg, 500)
    # a cursor above the newest recording names the list's first page
    cursor = "not-a-cursor!" if saved == "refused" else encode_cursor(0, 1 << 62)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sync_runs SET cursor = ?", (cursor,))
    mark = len(deployed_sim.requests)
    with capture_logs() as logs:
        stats = await full_sync(cfg)
    restarts = [e for e in logs if e["event"] == "walk_restarted"]
    assert len(restarts) == 1
    lists = [r for r in deployed_sim.requests[mark:] if r.path == "/v1/recordings"]
    assert 15 <= len(lists) <= 17 and stats.complete
    assert mirror_diff(db, deployed_sim.world.all()) == []


# -- the rate limit without headers ------------------------------------------------------


async def _limited_sync(sim: Simulator, db: Path, budget: int, window_s: float) -> Any:
    cfg = make_cfg(sim, db)
    async with await App.open(cfg) as app:
        app.client.budget = RequestBudget(budget, window_s=window_s)
        app.syncer.client = app.client
        return await app.syncer.full()


async def test_the_budget_holds_with_no_rate_limit_header(tmp_path: Path) -> None:
    """The deployed API sends no X-RateLimit-*: the client budget alone keeps it under."""
    async with serve(World(seed=25, recordings=2000, dialect="deployed"), rate_limit=10) as sim:
        sim.limiter.window_s = 0.5
        stats = await _limited_sync(sim, tmp_path / "botasync.db", 9, 0.5)
        assert stats.complete and stats.created == 2000
        assert not any(r.status == 429 for r in sim.requests)
        assert not any("x-ratelimit" in r.query.lower() for r in sim.requests)


async def test_429s_without_hints_back_off_and_the_sync_completes(tmp_path: Path) -> None:
    """Another client shares the limit: 429s with no Retry-After are waited out, doubling."""
    async with serve(World(seed=26, recordings=1000, dialect="deployed"), rate_limit=3) as sim:
        sim.limiter.window_s = 1.0
        stats = await _limited_sync(sim, tmp_path / "botasync.db", 100, 1.0)  # budget too high
        refused = [r for r in sim.requests if r.status == 429]
        assert stats.complete and stats.created == 1000
        assert refused and len(refused) <= len(sim.requests) // 2
        assert mirror_diff(tmp_path / "botasync.db", sim.world.all()) == []
