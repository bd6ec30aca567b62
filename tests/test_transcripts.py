"""Transcripts and summaries mirrored: the queue against the simulator over loopback, in
both dialects (`dialect` fixture), on real SQLite files (and the core cases on PostgreSQL
too: `rig_database`).

What the world serves is the truth: after a run, every transcription (and summary) the
API shows for a recording that can have one is stored exactly as served, its segments
row by row, the FTS index equal to the rows, and one event per terminal object.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import signal
import sqlite3
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from botasync import config
from botasync.api.budget import RequestBudget, Token
from botasync.api.client import BotaClient
from botasync.cli.transcripts import transcripts as transcripts_cli
from botasync.service import status
from botasync.service.daemon import Daemon
from botasync.simulator import Dialect, Simulator, World
from botasync.store.base import Database
from botasync.store.sqlite import Store
from botasync.sync.syncer import Syncer
from botasync.transcripts.fetcher import TranscriptFetcher
from tests import zygote
from tests.conftest import SimulatorFactory, wait_for
from tests.pgserver import TestDb
from tests.test_daemon import Collect
from tests.test_transcripts_unit import fts_matches_rows

KEY = "sk_test_botasync"
FINISHED = ("completed", "failed")
TRANSCRIPT_PATHS = ("/v1/transcriptions", "/v1/summaries")


@dataclass
class Rig:
    """A simulator, a store, a client, a syncer and a transcript fetcher wired as the app does."""

    sim: Simulator
    cfg: config.Config
    store: Database
    client: BotaClient
    syncer: Syncer
    fetcher: TranscriptFetcher

    database: TestDb

    @property
    def db(self) -> TestDb:
        return self.database

    async def mirror(self, timeout: float = 60.0) -> None:
        """Sync every recording, then fetch every transcript that is due."""
        await self.syncer.full()
        await self.fetcher.start()
        assert await self.fetcher.drain(timeout)


RigFactory = Callable[..., Awaitable[Rig]]


def make_cfg(url: str, db: Path | TestDb, **transcripts: Any) -> config.Config:
    return config.load(env={}, overrides={
        "api": {"base_url": url, "api_key": KEY, "requests_per_minute": 100_000},
        "database": db.config if isinstance(db, TestDb) else {"path": str(db)},
        "transcripts": {"download": True, "concurrency": 4, "refresh_every_s": 0,
                        **transcripts},
    })


@pytest.fixture
def rig_database(request: pytest.FixtureRequest, tmp_path: Path) -> TestDb:
    """The rig's database: a SQLite file, unless a test asks for both backends
    (`@pytest.mark.parametrize("rig_database", BACKENDS, indirect=True)`)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return TestDb("sqlite", tmp_path / "botasync.db")
    db: TestDb = request.getfixturevalue("pg_database")
    return db


BACKENDS = ["sqlite", "postgres"]
both_backends = pytest.mark.parametrize("rig_database", BACKENDS, indirect=True)


@pytest.fixture
async def rig_factory(
    rig_database: TestDb, simulator_factory: SimulatorFactory
) -> AsyncIterator[RigFactory]:
    """Build rigs; everything they opened is closed at teardown, newest first."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(world: World, *, budget: RequestBudget | None = None,
                       share: RequestBudget | None = None, sim: dict[str, Any] | None = None,
                       **transcripts: Any) -> Rig:
            served = await simulator_factory(world, **{"transcription_rate_limit": None,
                                                       **(sim or {})})
            cfg = make_cfg(served.url, rig_database, **transcripts)
            store = await rig_database.open()
            stack.push_async_callback(store.aclose)
            client = BotaClient(cfg.api, budget=budget or RequestBudget(None),
                                transcripts_budget=share or RequestBudget(None),
                                backoff_base=0.01, backoff_cap=0.05)
            stack.push_async_callback(client.aclose)
            fetcher = TranscriptFetcher(store, client, cfg.transcripts, poll=(0.05, 0.2),
                                        retry=(0.05, 0.2))
            stack.push_async_callback(fetcher.aclose)
            syncer = Syncer(cfg, client, store, on_commit=fetcher.notify)
            return Rig(served, cfg, store, client, syncer, fetcher, rig_database)

        yield make


@pytest.fixture(params=["documented", "deployed"])
def dialect(request: pytest.FixtureRequest) -> Dialect:
    """Each test that takes it runs against a world of each dialect."""
    return request.param  # type: ignore[no-any-return]


# --- what the world serves, and what the mirror holds -------------------------------------


def served(world: World) -> dict[str, tuple[str, dict[str, Any]]]:
    """txn id -> (recording id, the transcription as served) for every live recording that
    can have a transcript: it names one (documented), or it finished (deployed)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for rec in world.all():
        if world.deployed:
            items = world.transcriptions_of(rec["id"]) if rec["status"] in FINISHED else []
        else:
            one = world.transcription(rec["transcription_id"]) if rec.get(
                "transcription_id") else None
            items = [one] if one is not None else []
        out.update({t["id"]: (rec["id"], t) for t in items})
    return out


def served_summaries(world: World, txns: dict[str, tuple[str, dict[str, Any]]]
                     ) -> dict[str, tuple[str, dict[str, Any]]]:
    """sum id -> (transcription id, the summary as served) of the completed transcriptions."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for tid, (_, t) in txns.items():
        if t["status"] != "completed":
            continue
        if world.deployed:
            items = world.summaries_of(tid)
        else:
            one = world.summary(t["summary_id"]) if t["summary_id"] else None
            items = [one] if one is not None else []
        out.update({s["id"]: (tid, s) for s in items})
    return out


def rows(db: str | Path | TestDb, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    if isinstance(db, TestDb):
        return db.rows(sql, params)
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def assert_mirrored(db: str | Path | TestDb, want: dict[str, tuple[str, dict[str, Any]]]) -> None:
    """Exactly these transcriptions are stored, each as served, with its text and segments."""
    got = {r[0]: (r[1], json.loads(r[2]), r[3]) for r in rows(
        db, "SELECT id, recording_id, raw, text FROM transcriptions")}
    assert {k: v[:2] for k, v in got.items()} == want
    segments: dict[str, list[tuple[Any, ...]]] = {}
    for r in rows(db, "SELECT transcription_id, start_s, end_s, speaker, text, confidence "
                      "FROM transcript_segments ORDER BY transcription_id, position"):
        segments.setdefault(r[0], []).append(r[1:])
    for tid, (_, t) in want.items():
        assert got[tid][2] == t.get("text", t.get("full_text"))
        assert segments.get(tid, []) == [
            (s["start"], s["end"], s.get("speaker"), s["text"], s.get("confidence"))
            for s in t["segments"] or []], tid
    fts_matches_rows(db)


def stored(db: str | Path | TestDb) -> int:
    """Transcriptions stored; 0 before the database has its tables."""
    with contextlib.suppress(sqlite3.OperationalError):
        return int(rows(db, "SELECT count(*) FROM transcriptions")[0][0])
    return 0


def events_of(db: str | Path | TestDb, prefix: str) -> list[dict[str, Any]]:
    return [json.loads(r[0]) for r in rows(
        db, "SELECT payload FROM events WHERE type LIKE ? ORDER BY seq", (f"{prefix}.%",))]


def assert_one_event_each(db: str | Path | TestDb, want: dict[str, tuple[str, dict[str, Any]]],
                          prefix: str = "transcription") -> None:
    """One `<prefix>.<status>` event per terminal object, its `data` as served."""
    got = sorted((e["type"], e["data"]["id"], json.dumps(e["data"], sort_keys=True))
                 for e in events_of(db, prefix))
    expect = sorted((f"{prefix}.{o['status']}", oid, json.dumps(o, sort_keys=True))
                    for oid, (_, o) in want.items() if o["status"] in FINISHED)
    assert got == expect


# --- mirrored exactly ---------------------------------------------------------------------


@both_backends
async def test_every_transcript_mirrored_exactly(rig_factory: RigFactory, dialect: Dialect) -> None:
    """Each recording that can have a transcript gets it: text, segments, index, one event."""
    world = World(seed=3, recordings=120, dialect=dialect)
    rig = await rig_factory(world)
    await rig.mirror()
    want = served(world)
    assert len(want) >= 80
    assert {t["status"] for _, t in want.values()} == {"completed", "failed"}
    assert_mirrored(rig.db, want)
    assert_one_event_each(rig.db, want)
    events = {r[0]: r[1] for r in rows(rig.db, "SELECT json_extract(payload, '$.data.id'), "
                                               "recording_id FROM events WHERE type LIKE 't%'")}
    assert events == {tid: rec for tid, (rec, _) in want.items()}
    assert rows(rig.db, "SELECT count(*) FROM transcript_queue") == [(0,)]
    per_recording = 1  # one GET by id, or one list page
    assert rig.fetcher.stats.requests == len(want) * per_recording


@both_backends
async def test_summaries_mirrored_with_events(rig_factory: RigFactory, dialect: Dialect) -> None:
    """With `summaries = true` each completed transcription's summaries are stored as served."""
    world = World(seed=4, recordings=80, dialect=dialect)
    rig = await rig_factory(world, summaries=True)
    await rig.mirror()
    want = served_summaries(world, served(world))
    assert len(want) >= 30
    got = {r[0]: (r[1], json.loads(r[2])) for r in rows(
        rig.db, "SELECT id, transcription_id, raw FROM summaries")}
    assert got == want
    outputs = dict(rows(rig.db, "SELECT id, output FROM summaries"))
    assert all(json.loads(outputs[k]) == s["output"] for k, (_, s) in want.items()
               if s["output"] is not None)
    assert_one_event_each(rig.db, want, "summary")


@both_backends
async def test_failed_transcription_is_stored_with_its_error_and_event(
    rig_factory: RigFactory, dialect: Dialect
) -> None:
    """A failed transcription: its error as text, no segments, `transcription.failed`."""
    world = World(seed=5, recordings=40, dialect=dialect)
    rec = next(r["id"] for r in world.all() if r["status"] == "completed")
    failed = world.fail_transcription(rec, "audio too quiet")
    rig = await rig_factory(world)
    await rig.mirror()
    want_error = "audio too quiet" if world.deployed else "transcription_failed: audio too quiet"
    assert rows(rig.db, "SELECT status, error, text FROM transcriptions WHERE id = ?",
                (failed["id"],)) == [("failed", want_error, None)]
    assert [e["data"] for e in events_of(rig.db, "transcription")
            if e["data"]["id"] == failed["id"]] == [failed]
    assert [e["type"] for e in events_of(rig.db, "transcription")
            if e["data"]["id"] == failed["id"]] == ["transcription.failed"]


# --- re-runs, in progress and replaced ------------------------------------------------------


def marked(world: World, rec: str, word: str) -> str:
    """Give a recording's transcription a word no other transcript has; its id."""
    (own,) = [t for t in world.transcriptions_of(rec) if t["status"] == "completed"]
    segments = [*own["segments"], {"start": 99.0, "end": 99.5, "text": f"{word} said",
                                   "speaker": "SPEAKER_0"}]
    world.update_transcription(own["id"], segments=segments)
    return str(own["id"])


def hits(db: str | Path | TestDb, words: str) -> list[str]:
    if isinstance(db, TestDb) and db.backend == "postgres":
        return [r[0] for r in rows(
            db, "SELECT DISTINCT transcription_id FROM transcript_segments WHERE "
                "to_tsvector('simple'::regconfig, text) @@ phraseto_tsquery('simple'::regconfig, ?)",
            (words,))]
    return [r[0] for r in rows(
        db, "SELECT DISTINCT s.transcription_id FROM transcript_fts f JOIN transcript_segments s "
            "ON s.id = f.rowid WHERE transcript_fts MATCH ?", (words,))]


async def notice_rerun(rig: Rig) -> None:
    """What makes botasync look again after a re-run: documented, the recording names a new
    transcription (a reconcile walk finds it); deployed, the refresh of finished ones."""
    if rig.sim.world.deployed:
        rig.fetcher.cfg = rig.cfg.transcripts.model_copy(update={"refresh_every_s": 0.2})
    else:
        await rig.syncer.full(kind="reconcile")
    rig.fetcher.notify()


@both_backends
async def test_rerun_replaces_the_stored_transcript_with_an_event(
    rig_factory: RigFactory, dialect: Dialect
) -> None:
    """A re-run: the old one stays searchable while the new one runs, then is replaced in one
    transaction whose event names it; the index forgets the old words."""
    world = World(seed=6, recordings=40, dialect=dialect)
    rec = next(r["id"] for r in world.all() if r["status"] == "completed"
               and any(t["status"] == "completed" for t in world.transcriptions_of(r["id"])))
    old = marked(world, rec, "xylophonics")
    rig = await rig_factory(world)
    await rig.mirror()
    assert hits(rig.db, "xylophonics") == [old]

    new = world.retranscribe(rec, status="processing")
    await notice_rerun(rig)
    await wait_for(lambda: rows(rig.db, "SELECT status FROM transcriptions WHERE id = ?",
                                (new["id"],)) == [("processing",)], timeout=20)
    assert sorted(r[0] for r in rows(rig.db, "SELECT id FROM transcriptions WHERE "
                                             "recording_id = ?", (rec,))) == sorted([old, new["id"]])
    assert hits(rig.db, "xylophonics") == [old]  # still there while the re-run runs

    done = world.update_transcription(new["id"], status="completed")  # found by its polls
    await wait_for(lambda: not rows(rig.db, "SELECT 1 FROM transcriptions WHERE id = ?", (old,)),
                   timeout=20)
    await rig.fetcher.aclose()
    (event,) = [e for e in events_of(rig.db, "transcription") if e["data"]["id"] == new["id"]]
    assert (event["type"], event["data"], event["previous"]["id"]) == (
        "transcription.completed", done, old)
    assert event["previous"]["status"] == "processing"
    assert hits(rig.db, "xylophonics") == []
    assert rows(rig.db, "SELECT count(*) FROM transcript_segments WHERE transcription_id = ?",
                (old,)) == [(0,)]
    assert_mirrored(rig.db, served(world))


@both_backends
async def test_rerun_completed_at_once_replaces_at_once(
    rig_factory: RigFactory, dialect: Dialect
) -> None:
    """A re-run found completed replaces the stored transcript in the write that finds it."""
    world = World(seed=8, recordings=30, dialect=dialect)
    rig = await rig_factory(world)
    await rig.mirror()
    rec, (old, *_) = next((r["id"], [t["id"] for t in world.transcriptions_of(r["id"])])
                          for r in world.all() if r["status"] == "completed"
                          and world.transcriptions_of(r["id"]))
    new = world.retranscribe(rec)
    await notice_rerun(rig)
    await wait_for(lambda: rows(rig.db, "SELECT id FROM transcriptions WHERE recording_id = ?",
                                (rec,)) == [(new["id"],)], timeout=20)
    await rig.fetcher.aclose()
    (event,) = [e for e in events_of(rig.db, "transcription") if e["data"]["id"] == new["id"]]
    assert (event["previous"], event["data"]) == ({"id": old}, new)
    assert_mirrored(rig.db, served(world))


@both_backends
async def test_a_tombstoned_recording_keeps_its_transcript(rig_factory: RigFactory) -> None:
    """A recording deleted remotely is tombstoned; its transcript and segments stay."""
    world = World(seed=9, recordings=30, dialect="deployed")
    rig = await rig_factory(world)
    await rig.mirror()
    before = rows(rig.db, "SELECT id, raw FROM transcriptions ORDER BY id")
    rec = rows(rig.db, "SELECT recording_id FROM transcriptions LIMIT 1")[0][0]
    world.delete(rec)
    await rig.syncer.full()
    assert rows(rig.db, "SELECT deleted_at IS NOT NULL FROM recordings WHERE id = ?", (rec,)) == [
        (1,)]
    assert rows(rig.db, "SELECT id, raw FROM transcriptions ORDER BY id") == before
    fts_matches_rows(rig.db)


# --- budget and the sync ------------------------------------------------------------------


async def test_budget_share_holds_in_every_window(rig_factory: RigFactory, dialect: Dialect) -> None:
    """No window of the share's length ever holds more transcript requests than it allows,
    summaries included."""
    limit, window = 3, 0.25
    world = World(seed=10, recordings=24, dialect=dialect)
    rig = await rig_factory(world, share=RequestBudget(limit, window_s=window), summaries=True)
    await rig.mirror()
    times = sorted(r.t for r in rig.sim.requests if r.path.startswith(TRANSCRIPT_PATHS))
    assert len(times) >= 20
    worst = max(bisect.bisect_left(times, t + window, lo=i) - i for i, t in enumerate(times))
    assert worst <= limit
    assert_mirrored(rig.db, served(world))


class WatchedBudget(RequestBudget):
    """A real budget that counts the requests which, while `watching`, found no free slot."""

    watching = False
    waited = 0

    async def acquire(self) -> Token:
        if self.watching and self.delay() > 0:
            self.waited += 1
        return await super().acquire()


async def test_recording_events_are_not_delayed_by_a_transcript_backlog(
    rig_factory: RigFactory,
) -> None:
    """Ticks while a backlog of transcripts is fetched at its share: no request of a tick
    finds the budget full, and every status change is an event after the next tick, as
    with transcripts off. (How fast, side by side: `bench/transcripts.py`.)

    Budgets are Bota's (90 and 10 a minute) on a window of 1.5 s instead of 60.
    """
    window = 1.5
    world = World(seed=11, recordings=400)
    moving = [world.create(status="processing")["id"] for _ in range(80)]
    budget = WatchedBudget(90, window_s=window)
    rig = await rig_factory(world, budget=budget, share=RequestBudget(10, window_s=window))
    await rig.syncer.full()
    await wait_for(lambda: budget.used() == 0, timeout=2 * window)  # slots freed

    async def late_after_one_tick(changes: int, fetched: int = 0) -> list[str]:
        """Change a status before each tick (paced as the daemon's interval), until
        `changes` ticks and `fetched` transcripts: the changes not an event after it."""
        late = []
        done = 0
        while done < changes or rig.fetcher.stats.recordings < fetched:
            rid = moving.pop()
            world.update(rid, status="failed")
            budget.watching = True
            await rig.syncer.quick()
            budget.watching = False
            if not rows(rig.db, "SELECT 1 FROM events WHERE recording_id = ? "
                                "AND type = 'recording.failed'", (rid,)):
                late.append(rid)
            done += 1
            await asyncio.sleep(0.1)  # the tick's interval: the worker's turn to fetch
        return late

    assert await late_after_one_tick(10) == []
    await rig.fetcher.start()
    assert await late_after_one_tick(10, fetched=10) == []
    backlog = rows(rig.db, "SELECT count(*) FROM transcript_queue")[0][0]
    assert backlog > 100  # the backlog was there, and fetched from meanwhile
    assert budget.waited == 0  # no request of a tick found the budget full
    await rig.fetcher.aclose(grace_s=0.1)


async def test_a_tick_has_the_store_to_itself(rig_factory: RigFactory) -> None:
    """A background write asked for in the middle of a tick (here: by the tick's own commit)
    waits for the tick to end; the tick never queues behind one."""
    world = World(seed=12, recordings=30)
    rig = await rig_factory(world)
    await rig.syncer.full()
    order: list[str] = []
    tasks: list[asyncio.Task[None]] = []

    async def background() -> None:
        async with rig.store.transaction(background=True):
            order.append("background")

    rig.syncer.on_commit = lambda: tasks.append(asyncio.create_task(background()))
    world.create(status="processing")  # the head pass writes it: a commit inside the tick
    await rig.syncer.quick()
    order.append("tick done")
    await wait_for(lambda: len(order) == 1 + len(tasks))
    assert tasks and order[0] == "tick done", order


async def test_transcript_writes_wait_for_the_foreground(rig_factory: RigFactory) -> None:
    """While a foreground pass runs, fetched transcripts are not written (nor the queue
    read); they are once it ends."""
    world = World(seed=13, recordings=60)
    # one request every 50 ms: most of the four fetches in flight wait for the budget
    rig = await rig_factory(world, share=RequestBudget(1, window_s=0.05))
    await rig.syncer.full()
    count = "SELECT count(*) FROM transcriptions"

    def asked() -> int:
        return sum(1 for r in rig.sim.requests if r.path.startswith(TRANSCRIPT_PATHS))

    await rig.fetcher.start()
    await wait_for(lambda: rows(rig.db, count)[0][0] > 0)
    async with rig.store.foreground():
        held = (await rig.store.fetchone(count))[0]  # type: ignore[index]
        before = asked()
        # the fetches in flight are answered meanwhile, and their writes wait
        await wait_for(lambda: asked() >= before + 2)
        for _ in range(20):  # the pass goes on using the store; nothing lands in between
            assert (await rig.store.fetchone(count))[0] == held  # type: ignore[index]
    assert await rig.fetcher.drain(30.0)
    assert_mirrored(rig.db, served(world))


# --- the daemon, the command line, kill -9 ------------------------------------------------


async def test_daemon_mirrors_transcripts_and_status_shows_the_queue(
    simulator_factory: SimulatorFactory, tmp_path: Path, dialect: Dialect
) -> None:
    """`download = true`: the daemon mirrors transcripts (the first sync's as a backfill, not
    delivered); a recording finished later is delivered; `status` shows the queue."""
    world = World(seed=12, recordings=60, dialect=dialect)
    sim = await simulator_factory(world, transcription_rate_limit=None)
    db = tmp_path / "botasync.db"
    cfg = config.load(env={}, overrides={
        "api": {"base_url": sim.url, "api_key": KEY, "requests_per_minute": 100_000},
        "database": {"path": str(db)}, "sync": {"interval_s": 0.2, "reconcile_every_s": 3600},
        "transcripts": {"download": True, "concurrency": 4, "requests_per_minute": 100_000}})
    handler = Collect()
    daemon = Daemon(cfg, handle_signals=False, extra_handlers=[handler])
    task = asyncio.create_task(daemon.run())
    try:
        want = served(world)
        await wait_for(lambda: stored(db) == len(want), timeout=30)
        data = await status.collect(cfg)
        assert data["transcripts"]["done"]["recordings"] == len(want)
        assert data["transcripts"]["queued"]["recordings"] == 0
        assert not [e for e in handler.events if e["type"].startswith("transcription.")]
        rec = next(r for r in world.all() if r["status"] in ("uploaded", "processing"))
        named = {} if world.deployed else {"transcription_id": "txn_finishedlater"}
        world.update(rec["id"], status="completed", **named)
        txn = await wait_for(lambda: next((e for e in handler.events
                                           if e["type"].startswith("transcription.")), None),
                             timeout=30)
        assert rows(db, "SELECT recording_id FROM events WHERE id = ?", (txn["id"],)) == [
            (rec["id"],)]
        assert txn["data"]["recording_id"] == rec["id"]
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 10) == 0
    assert_mirrored(db, served(world))


def write_config(tmp_path: Path, url: str, db: str, **transcripts: Any) -> Path:
    conf = tmp_path / "botasync.toml"
    extra = "\n".join(f"{k} = {json.dumps(v)}" for k, v in transcripts.items())
    conf.write_text(textwrap.dedent(f"""
        [api]
        base_url = "{url}"
        api_key = "{KEY}"
        requests_per_minute = 100000
        [database]
        path = "{db}"
        [logging]
        level = "error"
        [transcripts]
    """) + extra + "\n")
    return conf


async def test_cli_status_download_and_retry(rig_factory: RigFactory, tmp_path: Path) -> None:
    """`transcripts status --json` before and after `download --limit`, then the rest."""
    world = World(seed=13, recordings=30, dialect="deployed")
    rig = await rig_factory(world)
    await rig.syncer.full()
    conf = write_config(tmp_path, rig.sim.url, str(rig.db.path), requests_per_minute=100_000)
    runner = CliRunner()

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(runner.invoke, transcripts_cli, [*args, "--config", str(conf)])

    before = await cli("status", "--json")
    assert before.exit_code == 0, before.output
    assert json.loads(before.output)["queued"]["recordings"] == 0  # not turned on yet
    want = served(world)
    result = await cli("download", "--limit", "5", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["recordings"] == 5
    mid = json.loads((await cli("status", "--json")).output)
    assert (mid["done"]["recordings"], mid["queued"]["recordings"]) == (5, len(want) - 5)
    assert mid["queued"]["eta"] == f"{len(want) - 5} at 100000 a minute: about 0 s"
    text = (await cli("status")).output
    assert "queued" in text and "a minute: about" in text
    result = await cli("download")
    assert result.exit_code == 0 and f"{len(want) - 5} recordings fetched" in result.output
    assert_mirrored(rig.db, want)
    assert "0 recordings re-queued" in (await cli("retry")).output
    await rig.fetcher.start()  # a daemon fetching transcripts for this database
    refused = await cli("download")
    assert refused.exit_code == 1
    assert "another botasync process is fetching transcripts for" in refused.output


async def test_sigkill_while_fetching_loses_and_duplicates_nothing(
    rig_factory: RigFactory, tmp_path: Path, dialect: Dialect
) -> None:
    """`transcripts download` killed with SIGKILL twice mid-queue, then run to the end: every
    transcript exact, one event each, the index equal to the rows, the file sound."""
    world = World(seed=14, recordings=120, dialect=dialect)
    rig = await rig_factory(world, sim={"latency_s": 0.03})
    await rig.syncer.full()
    want = served(world)
    conf = write_config(tmp_path, rig.sim.url, str(rig.db.path), requests_per_minute=100_000,
                        concurrency=3, summaries=True)
    command = ("--config", str(conf), "transcripts", "download")
    env = {**os.environ, "BOTASYNC_CONFIG": ""}

    for at in (len(want) // 4, len(want) // 2):
        proc = await zygote.botasync(*command, env=env)

        # a def, not a lambda: mypy cannot type a lambda's defaults (python/mypy#15459)
        def reached(at: int = at, proc: Any = proc) -> bool:
            return stored(rig.db) >= at or proc.returncode is not None

        await wait_for(reached, timeout=60)
        assert proc.returncode is None, "it finished before the kill"
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        assert stored(rig.db) < len(want)
    proc = await zygote.botasync(*command, env=env)
    assert await asyncio.wait_for(proc.wait(), 90) == 0
    assert_mirrored(rig.db, want)
    assert_one_event_each(rig.db, want)
    assert_one_event_each(rig.db, served_summaries(world, want), "summary")
    assert rows(rig.db, "PRAGMA integrity_check") == [("ok",)]
    assert rows(rig.db, "SELECT count(*) FROM transcript_queue") == [(0,)]


# --- two projects in one database ---------------------------------------------------------


def project_rows(db: str | Path | TestDb, project: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """One project's stored transcriptions: id -> (recording id, raw)."""
    return {r[0]: (r[1], json.loads(r[2])) for r in rows(
        db, "SELECT id, recording_id, raw FROM transcriptions WHERE project = ?", (project,))}


async def test_two_projects_serving_the_same_ids_are_mirrored_apart(
    simulator_factory: SimulatorFactory, tmp_path: Path, dialect: Dialect
) -> None:
    """Two projects whose APIs serve the same recording and transcription ids, said
    differently, into one database: each project's fetcher (its own key, budget and lock)
    stores its own transcripts, segments, index entries and events; the queues drain apart;
    `transcripts status --json` and `download --project` speak per project."""
    worlds = {p: World(seed=15, recordings=30, dialect=dialect) for p in ("alpha", "beta")}
    rec = next(r["id"] for r in worlds["alpha"].all() if r["status"] == "completed" and any(
        t["status"] == "completed" for t in worlds["alpha"].transcriptions_of(r["id"])))
    said = {p: marked(w, rec, word) for (p, w), word in zip(
        worlds.items(), ("quokka", "zeppelin"), strict=True)}
    sims = {p: await simulator_factory(w, transcription_rate_limit=None)
            for p, w in worlds.items()}
    db = tmp_path / "botasync.db"
    conf = tmp_path / "botasync.toml"
    conf.write_text(textwrap.dedent(f"""
        [database]
        path = "{db}"
        [logging]
        level = "error"
        [transcripts]
        download = true
        concurrency = 4
        refresh_every_s = 0
    """) + "".join(f'[[projects]]\nname = "{p}"\nbase_url = "{s.url}"\napi_key = "{KEY}"\n'
                   "requests_per_minute = 100000\n" for p, s in sims.items()))
    cfg = config.load(conf, env={})
    async with contextlib.AsyncExitStack() as stack:
        store = await Store.open(db)
        stack.push_async_callback(store.aclose)
        fetchers: dict[str, TranscriptFetcher] = {}
        for view in cfg.each_project():
            client = BotaClient(view.api, budget=RequestBudget(None),
                                transcripts_budget=RequestBudget(None), backoff_base=0.01,
                                backoff_cap=0.05)
            stack.push_async_callback(client.aclose)
            fetcher = TranscriptFetcher(store, client, view.transcripts, project=view.project,
                                        poll=(0.05, 0.2), retry=(0.05, 0.2))
            stack.push_async_callback(fetcher.aclose)
            await Syncer(view, client, store, on_commit=fetcher.notify).full()
            fetchers[view.project] = fetcher
        for fetcher in fetchers.values():  # side by side: one lock each
            await fetcher.start()
        for fetcher in fetchers.values():
            assert await fetcher.drain(60)

    want = {p: served(w) for p, w in worlds.items()}
    assert want["alpha"].keys() == want["beta"].keys() and len(want["alpha"]) >= 15
    for project in ("alpha", "beta"):
        assert project_rows(db, project) == want[project]
        assert fetchers[project].stats.requests == len(want[project])
        got = sorted((e["data"]["id"], e["project"]) for e in events_of(db, "transcription")
                     if e["project"] == project)
        assert got == sorted((tid, project) for tid, (_, t) in want[project].items()
                             if t["status"] in FINISHED)
    assert rows(db, "SELECT DISTINCT project FROM events WHERE json_extract(payload, "
                    "'$.project') != project") == []
    for project, other in (("alpha", "beta"), ("beta", "alpha")):
        word = "quokka" if project == "alpha" else "zeppelin"
        assert rows(db, "SELECT DISTINCT s.project, s.transcription_id FROM transcript_fts f "
                        "JOIN transcript_segments s ON s.id = f.rowid "
                        "WHERE transcript_fts MATCH ?", (word,)) == [(project, said[project])]
        assert said[project] in project_rows(db, other)  # the same id, the other's words
    fts_matches_rows(db)
    assert rows(db, "SELECT count(*) FROM transcript_queue") == [(0,)]

    runner = CliRunner()

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(runner.invoke, transcripts_cli,
                                       [*args, "--config", str(conf)])

    status_all = json.loads((await cli("status", "--json")).output)
    assert [(s["project"], s["done"]["recordings"], s["queued"]["recordings"])
            for s in status_all] == [("alpha", len(want["alpha"]), 0),
                                     ("beta", len(want["beta"]), 0)]
    one = json.loads((await cli("status", "--json", "--project", "beta")).output)
    assert (one["project"], one["done"]["transcriptions"]) == ("beta", len(want["beta"]))
    text = (await cli("status")).output
    assert "project alpha" in text and "project beta" in text
    for world in worlds.values():  # a re-run in both; beta's alone is asked for
        world.retranscribe(rec)
    beta = cfg.for_project("beta")  # what makes beta look again (see `notice_rerun`)
    async with await Store.open(db) as store, BotaClient(
            beta.api, budget=RequestBudget(None)) as client:
        await Syncer(beta, client, store).full(kind="reconcile")  # documented: the new id
        async with store.transaction() as conn:  # deployed: as a refresh would
            await conn.execute("INSERT INTO transcript_queue (project, recording_id, reason, "
                               "queued_at) VALUES ('beta', ?, 'refresh', 'now') "
                               "ON CONFLICT DO NOTHING", (rec,))
    report = json.loads((await cli("download", "--json", "--project", "beta")).output)
    assert (report["project"], report["recordings"]) == ("beta", 1)
    assert project_rows(db, "beta") == served(worlds["beta"])
    assert project_rows(db, "alpha") == want["alpha"]  # alpha's re-run not fetched yet
    both = json.loads((await cli("download", "--json")).output)
    assert [(r["project"], r["recordings"]) for r in both] == [("alpha", 0), ("beta", 0)]
    assert (await cli("retry")).output.strip() == "0 recordings re-queued (alpha: 0, beta: 0)"
    fts_matches_rows(db)
