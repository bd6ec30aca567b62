"""Core sync: an exact mirror at the API's minimum cost, against the simulator over loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from blockbuster import blockbuster_ctx

from botasync import config
from botasync.api.budget import RequestBudget
from botasync.service.app import App
from botasync.simulator import Simulator, World, serve
from botasync.sync.syncer import PassStats
from tests.conftest import wait_for
from tests.mirror import mirror_diff
from tests.pgserver import TestDb

KEY = "sk_test_botasync"


def make_cfg(sim: Simulator, db: TestDb | Path, **sync: Any) -> config.Config:
    return config.load(env={}, overrides={
        "api": {"base_url": sim.url, "api_key": KEY, "requests_per_minute": 100_000},
        "database": db.config if isinstance(db, TestDb) else {"path": str(db)},
        "sync": sync,
    })


def kinds(sim: Simulator, since: int = 0) -> dict[str, int]:
    """Requests the simulator saw since a point in its log, by kind."""
    out = {"list": 0, "detail": 0}
    for r in sim.requests[since:]:
        if r.path == "/v1/recordings":
            out["list"] += 1
        elif r.path.startswith("/v1/recordings/"):
            out["detail"] += 1
    return out


async def full_sync(cfg: config.Config) -> PassStats:
    """One full pass through the app's own code path; any blocking call on the loop fails it."""
    with blockbuster_ctx():
        async with await App.open(cfg) as app:
            return await app.syncer.full()


def table_rows(db: TestDb | Path, sql: str) -> list[tuple[Any, ...]]:
    return (db if isinstance(db, TestDb) else TestDb("sqlite", db)).rows(sql)


@pytest.fixture
async def big_sim() -> AsyncIterator[Simulator]:
    async with serve(World(seed=7, recordings=1500), rate_limit=None) as sim:
        yield sim


async def test_first_sync_is_exact_and_cheap(big_sim: Simulator, database: TestDb) -> None:
    """1,500 recordings mirror exactly from about 15 list pages and no detail request."""
    db = database
    stats = await full_sync(make_cfg(big_sim, db))
    assert mirror_diff(db, big_sim.world.all()) == []
    seen = kinds(big_sim)
    assert seen["detail"] == 0
    assert 15 <= seen["list"] <= 15 + 3  # at most concurrency-1 pages fetched ahead past the end
    assert (stats.created, stats.updated, stats.invalid, stats.complete) == (1500, 0, 0, True)
    media = table_rows(db, "SELECT count(*) FROM media")[0][0]
    assert media == sum(len(i["media"]) for i in big_sim.world.all())
    unknown = [i for i in big_sim.world.all() if "language" in i]
    assert unknown, "the world should hold items with undocumented fields"
    raws = dict(table_rows(db, "SELECT id, raw FROM recordings"))
    assert all(json.loads(raws[i["id"]])["language"] == i["language"] for i in unknown)


async def test_detail_always_fetches_every_detail(big_sim: Simulator, database: TestDb) -> None:
    """With detail = "always", a first sync asks for all 1,500 details."""
    db = database
    await full_sync(make_cfg(big_sim, db, detail="always"))
    assert kinds(big_sim)["detail"] == 1500
    assert mirror_diff(db, big_sim.world.all()) == []


async def test_unchanged_rerun_writes_nothing(big_sim: Simulator, database: TestDb) -> None:
    """A second sync with nothing changed fetches no detail, walks once, writes only its run row."""
    db = database
    cfg = make_cfg(big_sim, db)
    await full_sync(cfg)
    before = table_rows(db, "SELECT id, raw, fingerprint, synced_at FROM recordings ORDER BY id")
    events_before = table_rows(db, "SELECT count(*) FROM events")
    mark = len(big_sim.requests)
    stats = await full_sync(cfg)
    assert kinds(big_sim, mark) == {"list": 15, "detail": 0}
    assert (stats.created, stats.updated, stats.unchanged) == (0, 0, 1500)
    assert table_rows(db, "SELECT id, raw, fingerprint, synced_at FROM recordings ORDER BY id") == before
    assert table_rows(db, "SELECT count(*) FROM events") == events_before
    assert table_rows(db, "SELECT count(*) FROM sync_runs")[0][0] == 2


async def test_five_edits_cost_five_details(big_sim: Simulator, database: TestDb) -> None:
    """Status, name, metadata, media status and a new media item: exactly five details."""
    db = database
    cfg = make_cfg(big_sim, db)
    await full_sync(cfg)
    world = big_sim.world
    old = [i["id"] for i in world.all()[700:1500:160]][:5]
    world.update(old[0], status="failed")
    world.update(old[1], name="renamed")
    world.update(old[2], metadata={"project": "x", "n": 2})
    target = next(i for i in world.all()[1000:] if any(m["status"] == "uploaded" for m in i["media"]))
    world.update_media(target["id"], target["media"][0]["id"], status="pending")
    world.add_media(old[4], type="image", status="uploaded")
    mark = len(big_sim.requests)
    stats = await full_sync(cfg)
    details = {r.path.rsplit("/", 1)[1] for r in big_sim.requests[mark:] if r.path != "/v1/recordings"}
    assert details == {old[0], old[1], old[2], target["id"], old[4]}
    assert kinds(big_sim, mark)["detail"] == 5
    assert stats.updated == 5
    assert mirror_diff(db, world.all()) == []


async def test_faults_are_retried_and_the_pass_completes(database: TestDb) -> None:
    """5xx, 429, dropped connections, malformed and HTML bodies are retried; the mirror is exact."""
    async with serve(World(seed=3, recordings=600), rate_limit=None) as sim:
        for kind in ("server_error", "rate_limited", "drop", "malformed", "html_502", "non_utf8",
                     "slow"):
            sim.faults.queue(kind, n=1)
        sim.faults.slow_s = 2.0
        db = database
        cfg = make_cfg(sim, db)
        cfg.api.max_retries, cfg.api.retry_base_s, cfg.api.retry_max_s = 8, 0.01, 0.05
        cfg.api.timeout_s = 0.5  # the slow answer times out and is asked again
        async with await App.open(cfg) as app:
            stats = await app.syncer.full()
        assert stats.complete
        assert mirror_diff(db, sim.world.all()) == []
        statuses = {r.status for r in sim.requests}
        assert {200, 429, 502} <= statuses and statuses & {500, 503}


async def test_only_items_without_a_usable_id_are_skipped(database: TestDb) -> None:
    """No id, or an id unfit for a file name, is skipped and counted; a value botasync does
    not know (a status, a string where a number belongs) is stored, never dropped."""
    async with serve(World(seed=4, recordings=150), rate_limit=None) as sim:
        sim.world.put_raw({"status": "completed", "name": "no id"}, position=3)
        sim.world.put_raw({"id": "rec_../../etc", "status": "completed"}, position=4)
        sim.world.put_raw({"id": "rec_badtype", "status": "completed", "duration_ms": "long",
                           "name": None, "metadata": "not an object"}, 5)
        sim.world.put_raw({"id": "rec_badstatus", "status": "exploded"}, position=7)
        sim.world.put_raw({"id": "rec_strnum", "status": "completed", "duration_ms": "1500"}, 9)
        db = database
        stats = await full_sync(make_cfg(sim, db))
        assert stats.invalid == 2
        rows = dict(table_rows(db, "SELECT id, status || '/' || "
                                   "coalesce(CAST(duration_ms AS TEXT), 'null') || '/' || "
                                   "coalesce(CAST(metadata AS TEXT), 'null') FROM recordings "
                                   "WHERE id IN ('rec_badtype', 'rec_badstatus', 'rec_strnum')"))
        assert rows == {"rec_badtype": "completed/null/null", "rec_badstatus": "exploded/null/null",
                        "rec_strnum": "completed/1500/null"}
        valid = [i for i in sim.world.all() if i.get("id", "").startswith("rec_")
                 and i["id"] not in ("rec_badtype", "rec_badstatus", "rec_strnum", "rec_../../etc")]
        problems = [p for p in mirror_diff(db, valid) if "in the mirror but not" not in p]
        assert problems == []


async def test_deletion_becomes_tombstone(database: TestDb) -> None:
    """A recording gone from a complete walk and 404 on its detail is tombstoned, not removed."""
    async with serve(World(seed=5, recordings=250), rate_limit=None) as sim:
        db = database
        cfg = make_cfg(sim, db)
        await full_sync(cfg)
        victim = sim.world.all()[100]["id"]
        sim.world.delete(victim)
        stats = await full_sync(cfg)
        assert stats.deleted == 1
        rows = table_rows(db, f"SELECT deleted_at FROM recordings WHERE id = '{victim}'")
        assert rows and rows[0][0] is not None
        assert table_rows(db, f"SELECT type FROM events WHERE recording_id = '{victim}' "
                              "ORDER BY seq DESC LIMIT 1") == [("recording.deleted",)]
        assert mirror_diff(db, sim.world.all()) == []


async def test_budget_holds_during_a_walk(database: TestDb) -> None:
    """With a budget of 12 requests per 0.25 s, no 0.25 s window of the server's log holds more."""
    async with serve(World(seed=6, recordings=150), rate_limit=None) as sim:
        db = database
        cfg = make_cfg(sim, db, detail="always")
        async with await App.open(cfg) as app:
            budget = RequestBudget(12, window_s=0.25)
            app.client.budget = budget
            app.syncer.client = app.client
            sim.world.update(sim.world.all()[0]["id"], name="x")
            stats = await app.syncer.full()
        assert stats.complete
        times = sorted(r.t for r in sim.requests)
        worst = max(sum(1 for u in times if t <= u < t + 0.25) for t in times)
        assert len(times) > 150 and worst <= 12


async def test_quick_pass_finds_new_and_moved(database: TestDb) -> None:
    """The tick (head + hot) picks up a new recording and a status change with a few requests."""
    async with serve(World(seed=8, recordings=1500), rate_limit=None) as sim:
        db = database
        cfg = make_cfg(sim, db)
        world = sim.world
        in_flight = world.update(world.all()[700]["id"], status="processing", transcription_id=None)
        await full_sync(cfg)
        world.update(in_flight["id"], status="completed", transcription_id="txn_quick1")
        world.create(name="brand new")
        mark = len(sim.requests)
        async with await App.open(cfg) as app:
            head, hot = await app.syncer.quick()
        assert head.created == 1 and hot.updated == 1
        assert len(sim.requests) - mark <= 8
        assert mirror_diff(db, world.all()) == []



async def test_progress_estimates_the_archive_cheaply(big_sim: Simulator, database: TestDb) -> None:
    """With a progress bar, a first sync probes the archive's size within a page, cheaply."""
    seen: list[tuple[int, int | None]] = []
    cfg = make_cfg(big_sim, database)
    async with await App.open(cfg, on_progress=lambda s, off, total: seen.append((s.pages, total))) as app:
        stats = await app.syncer.full()
    probes = [r for r in big_sim.requests if "limit=1&" in r.query + "&"]
    assert seen and all(t is not None and 1400 <= t <= 1600 for _, t in seen)
    assert len(probes) <= 20 and stats.pages == 15


async def test_invalid_item_at_the_top_does_not_make_every_tick_a_walk(database: TestDb) -> None:
    """A permanently broken item on the first page is skipped; the head pass still stops there."""
    async with serve(World(seed=9, recordings=600), rate_limit=None) as sim:
        db = database
        cfg = make_cfg(sim, db)
        await full_sync(cfg)
        sim.world.put_raw({"id": "rec_broken!", "status": "completed"}, position=0)
        async with await App.open(cfg) as app:
            first = await app.syncer.head()
            second = await app.syncer.head()
        assert (first.pages, first.invalid) == (1, 1)
        assert (second.pages, second.invalid) == (1, 1)


async def test_tick_skips_hot_lists_the_head_page_covered(database: TestDb) -> None:
    """When every in-flight recording sits on the head page, a tick costs one request."""
    async with serve(World(seed=10, recordings=1000), rate_limit=None) as sim:
        world = sim.world
        for item in world.all()[100:]:  # in flight only on the first page
            if item["status"] in ("pending", "uploaded", "processing"):
                world.update(item["id"], status="completed")
        deep = world.all()[500]["id"]
        db = database
        cfg = make_cfg(sim, db)
        await full_sync(cfg)
        async with await App.open(cfg) as app:
            mark = len(sim.requests)
            first = await app.syncer.quick()  # the full walk counts as a full hot pass
            assert len(sim.requests) - mark == 1
            assert [s.pages for s in first] == [1, 0]
            await app.syncer.mirror.set_state("hot_full_at", "2000-01-01T00:00:00Z")
            second = await app.syncer.quick()  # overdue: all three statuses are listed
            assert sum(s.requests for s in second) == 4
            world.update(deep, status="processing")  # deep in the archive: reconcile finds it
            await app.syncer.full()
            world.update(deep, status="completed", transcription_id="txn_deep")
            mark = len(sim.requests)
            _, hot = await app.syncer.quick()
            assert len(sim.requests) - mark == 3  # head page, processing list, detail of deep
            assert hot.updated == 1
        assert mirror_diff(db, world.all()) == []


async def test_server_ignoring_offset_stops_the_walk(database: TestDb) -> None:
    """Pages that keep coming back the same end the walk with one clear error, not a spin."""
    from botasync.api.pages import REPEAT_LIMIT
    from botasync.errors import ApiError

    async with serve(World(seed=8, recordings=500), rate_limit=None) as sim:
        sim.ignore_offset = True
        db = database
        with pytest.raises(ApiError, match="ignore `offset`"):
            await full_sync(make_cfg(sim, db))
        assert kinds(sim)["list"] <= REPEAT_LIMIT + 4  # plus the pages read ahead
        assert table_rows(db, "SELECT count(*) FROM recordings")[0][0] == 100  # page one kept
        sim.ignore_offset = False
        stats = await full_sync(make_cfg(sim, db))
        assert stats.complete and mirror_diff(db, sim.world.all()) == []


def test_repeat_guard_tolerates_what_a_busy_archive_does() -> None:
    """A page repeated a few times, or a short last page, is not a broken server."""
    from botasync.api.client import Page
    from botasync.api.pages import REPEAT_LIMIT, RepeatGuard

    page = Page([{"id": "rec_a"}, {"id": "rec_b"}], has_more=True)
    guard = RepeatGuard()
    assert not any(guard.repeated(n * 2, page) for n in range(REPEAT_LIMIT - 1))
    assert not guard.repeated(99, Page([{"id": "rec_c"}], has_more=True))  # a reset
    assert not any(guard.repeated(n * 2, page) for n in range(REPEAT_LIMIT - 1))
    empty = Page([], has_more=True)
    assert not guard.repeated(0, empty) and not guard.repeated(0, empty)
    end = Page([{"id": "rec_a"}], has_more=False)  # the end, read again and again
    assert not any(guard.repeated(0, end) for _ in range(REPEAT_LIMIT + 1))
    broken = RepeatGuard()
    assert [broken.repeated(10 + n * 2, page) for n in range(REPEAT_LIMIT)] == \
        [False] * (REPEAT_LIMIT - 1) + [True]
    assert broken.since == 10 and f"for {REPEAT_LIMIT} pages" in str(broken.error(18))


async def test_a_reconcile_due_during_the_first_walk_waits_its_turn(database: TestDb) -> None:
    """The daemon's reconcile comes due while the tick still makes the first walk: it is
    skipped instead of resuming that same walk beside it (the two walks then took each
    other's changes for the backfill's, and a change after the first walk reached no one)."""
    async with serve(World(seed=9, recordings=400), rate_limit=None, latency_s=0.02) as sim:
        cfg = make_cfg(sim, database)
        async with await App.open(cfg) as app:
            first = asyncio.create_task(app.syncer.quick())
            await wait_for(lambda: len(sim.requests) >= 1, timeout=10)
            assert await app.syncer.reconcile() == []
            head, _ = await first
            assert head.kind == "full" and head.complete and head.created == 400
            moving = sim.world.all()[350]["id"]
            sim.world.update(moving, status="failed")
            (walk,) = await app.syncer.reconcile()
            assert walk.complete and walk.updated == 1
        runs = table_rows(database, "SELECT kind, complete FROM sync_runs ORDER BY id")
        assert runs == [("full", 1), ("hot", 1), ("reconcile", 1)]
        assert table_rows(database, "SELECT type, backfill FROM events WHERE recording_id = "
                                    f"'{moving}' ORDER BY seq") == [
            ("recording.created", 1), ("recording.status_changed", 0), ("recording.failed", 0)]
