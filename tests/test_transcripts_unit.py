"""Transcripts, the parts that need no API: reading either dialect's objects, the queue's
SQL, the one-transaction write with its FTS index and events, and the ETA arithmetic.

Real SQLite files throughout; `fts_matches_rows` proves the index holds exactly what the
segments table holds (SQLite's own integrity-check does not compare an external-content
index with its content before 3.44).
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from botasync.api.budget import RequestBudget
from botasync.api.models import parse_recording
from botasync.api.transcription import (
    InvalidObject,
    error_text,
    parse_segments,
    parse_summary,
    parse_transcription,
)
from botasync.config import TranscriptsConfig
from botasync.envelope import EVENT_TYPES, EventIds, utc_now
from botasync.errors import BotasyncError
from botasync.store import transcript_queue as queue
from botasync.store import transcripts as tstore
from botasync.store.sqlite import Mirror, PageWrite, Store, Upsert
from botasync.transcripts.admin import eta_seconds, eta_text, human_duration, transcripts_status
from botasync.transcripts.fetcher import (
    RESERVE_NAP_S,
    FetchStats,
    lock_for,
    room_wait,
    sync_reserve,
)
from botasync.transcripts.progress import fetch_progress, time_left
from tests.pgserver import TestDb

NOW = "2026-11-25T10:00:00.000Z"
P = "default"  # the project of `[api]` alone


def fts_matches_rows(db: str | Path | TestDb) -> None:
    """The FTS index passes its integrity-check and equals an index rebuilt from the rows
    (on PostgreSQL: the index PostgreSQL keeps itself is there and valid)."""
    if isinstance(db, TestDb):
        if db.backend == "postgres":
            assert db.rows("SELECT indisvalid FROM pg_index "
                           "WHERE indexrelid = 'transcript_fts'::regclass") == [(True,)]
            return
        db = db.path
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("INSERT INTO transcript_fts(transcript_fts) VALUES('integrity-check')")
        conn.execute("CREATE VIRTUAL TABLE temp.fv USING fts5vocab(main, 'transcript_fts', "
                     "'instance')")
        sql = "SELECT term, doc, col, offset FROM temp.fv ORDER BY 1, 2, 3, 4"
        kept = conn.execute(sql).fetchall()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO transcript_fts(transcript_fts) VALUES('rebuild')")
        rebuilt = conn.execute(sql).fetchall()
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    assert kept == rebuilt


def search(db: str | Path, words: str) -> list[str]:
    """Transcription ids whose segments match an FTS query."""
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute(
            "SELECT DISTINCT s.transcription_id FROM transcript_fts f "
            "JOIN transcript_segments s ON s.id = f.rowid WHERE transcript_fts MATCH ?",
            (words,))]
    finally:
        conn.close()


def txn(tid: str, rec: str, status: str = "completed", words: str = "hello there",
        dialect: str = "documented", **extra: Any) -> dict[str, Any]:
    """A transcription object of either dialect with two speakers' segments."""
    segments: list[dict[str, Any]] = [
        {"start": 0.0, "end": 1.5, "text": f"{words} one", "speaker": "A"},
        {"start": 1.5, "end": 3.25, "text": f"{words} two", "speaker": "B", "confidence": 0.9}]
    body: dict[str, Any] = {
        "id": tid, "recording_id": rec, "status": status, "language": "en",
        "provider": "deepgram", "segments": segments if status == "completed" else None,
        "word_count": 6, "error": None, "created_at": "2026-11-25T09:00:00Z",
        "updated_at": "2026-11-25T09:01:00Z", "completed_at": None, **extra}
    text = " ".join(s["text"] for s in segments) if status == "completed" else None
    if dialect == "documented":
        body.update(text=text, summary_id=None)
    else:
        body.update(full_text=text)
    return body


# --- reading either dialect -------------------------------------------------------------


def test_documented_and_deployed_transcriptions_read_alike() -> None:
    """`text` or `full_text`, an error object or a string: the same columns."""
    doc = parse_transcription(txn("txn_a", "rec_1", error={"code": "x", "message": "y"}))
    dep = parse_transcription(txn("txn_a", "rec_1", dialect="deployed", error="y"))
    assert doc.text == dep.text == "hello there one hello there two"
    assert (doc.error, dep.error) == ("x: y", "y")
    assert (doc.links_summary, dep.links_summary) == (True, False)
    assert doc.segments == dep.segments
    assert doc.segments is not None and doc.segments[1].confidence == 0.9
    assert doc.terminal and doc.created_at == "2026-11-25T09:00:00Z"


@pytest.mark.parametrize(("value", "want"), [
    (None, None), ("", None), ("boom", "boom"), ({"code": "c", "message": "m"}, "c: m"),
    ({"message": "m"}, "m"), ({"code": "c"}, "c"), ({"other": 1}, '{"other":1}'), (5, "5"),
])
def test_error_text(value: Any, want: str | None) -> None:
    """Every form of error becomes one text, or null."""
    assert error_text(value) == want


def test_liberal_reading() -> None:
    """Decimal strings, wrong types, odd segments and a missing status never drop an object."""
    t = parse_transcription({"id": "txn_b", "word_count": "12", "language": ["en"],
                             "segments": [{"start": "1.5", "end": "x", "text": None},
                                          "junk", {"start": True, "speaker": 2, "text": "hi"}]})
    assert (t.status, t.word_count, t.language, t.text, t.recording_id) == (
        "unknown", 12, None, None, None)
    assert [(s.position, s.start_s, s.end_s, s.speaker, s.text) for s in t.segments or ()] == [
        (0, 1.5, None, None, ""), (2, None, None, "2", "hi")]
    assert parse_segments(None) is None and parse_segments({}) is None
    bad: object
    for bad in ({"id": "rec_1"}, {"id": "txn_../x"}, {}, [], "txn_a"):
        with pytest.raises(InvalidObject):
            parse_transcription(bad)


def test_summaries_read_alike() -> None:
    """`output` is kept as JSON text; the error in either form."""
    s = parse_summary({"id": "sum_1", "transcription_id": "txn_a", "status": "completed",
                       "output": {"bullets": ["a", "b"]}, "error": None,
                       "template_id": "tpl_1", "started_at": "2026-11-25T09:00:00+01:00"})
    assert (s.output, s.started_at, s.terminal) == (
        '{"bullets":["a","b"]}', "2026-11-25T08:00:00Z", True)
    assert parse_summary({"id": "sum_2", "error": {"code": "e", "message": "m"}}).error == "e: m"
    with pytest.raises(InvalidObject):
        parse_summary({"id": "txn_1"})


def test_event_types_include_botas_names() -> None:
    """The four event types carry Bota's own webhook names."""
    for name in ("transcription.completed", "transcription.failed", "summary.completed",
                 "summary.failed"):
        assert name in EVENT_TYPES


# --- what is queued ---------------------------------------------------------------------


@pytest.mark.parametrize(("item", "want"), [
    ({"status": "completed", "transcription_id": "txn_1"}, queue.BY_ID),
    ({"status": "processing", "transcription_id": "txn_1"}, queue.BY_ID),
    ({"status": "completed", "transcription_id": None}, None),  # documented, none yet
    ({"status": "completed"}, queue.FINISHED),  # deployed: ask the list
    ({"status": "failed"}, queue.FINISHED),  # a failed transcription may be why
    ({"status": "processing"}, None),
    ({"status": "integrity_failure"}, None),
])
def test_reason_for(item: dict[str, Any], want: str | None) -> None:
    """A recording can have a transcript when it names one, or has finished naming none."""
    raw = {"id": "rec_1", **item}
    assert queue.reason_for(parse_recording(raw), raw) == want


# --- the ETA ----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "rpm", "summaries", "want"), [
    (100_000, 10, False, "100,000 at 10 a minute: about 7 days"),
    (100_000, 10, True, "100,000 (2 requests each) at 10 a minute: about 14 days"),
    (30, 10, False, "30 at 10 a minute: about 3 min"),
    (1_000, 10, False, "1,000 at 10 a minute: about 2 h"),
    (0, 10, False, "0 at 10 a minute: about 0 s"),
])
def test_eta_text(n: int, rpm: int, summaries: bool, want: str) -> None:
    """The backfill's length at the budget, as `transcripts status` says it."""
    assert eta_text(n, rpm, summaries) == want


def test_eta_and_time_left() -> None:
    """The budget's pace is a floor: a fast start does not promise a short wait."""
    assert eta_seconds(10, 10, False) == 60.0
    assert human_duration(89) == "89 s" and human_duration(3 * 86400) == "3 days"
    assert time_left(10, 5, 1.0, 10, False) == 60.0  # measured 2 s, budget 60 s
    assert time_left(10, 5, 500.0, 10, False) == 1000.0  # measured slower than the budget
    assert time_left(0, 5, 1.0, 10, False) == 0.0


# --- the write, the index and the queue in SQLite ---------------------------------------


async def put_recordings(store: Store, *items: dict[str, Any], backfill: bool = False,
                         project: str = P) -> None:
    """Write recordings through the sync's own page write (which also queues them)."""
    raws = [{"created_at": f"2026-11-2{i}T00:00:00Z", **item} for i, item in enumerate(items)]

    def build(old: dict[str, Any], newer: set[str]) -> PageWrite:
        return PageWrite(upserts=[Upsert(parse_recording(r), r, None, r["id"] not in old)
                                  for r in raws], backfill=backfill)

    await Mirror(store, project).apply([r["id"] for r in raws], build, NOW)


IDS = EventIds()


async def write(store: Store, rec: str, *objs: dict[str, Any],
                summaries: dict[str, list[dict[str, Any]]] | None = None,
                project: str = P) -> tstore.Written:
    fetched = tstore.Fetched(rec, [parse_transcription(o) for o in objs], {
        k: [parse_summary(s) for s in v] for k, v in (summaries or {}).items()})
    async with store.transaction() as conn:
        return await tstore.write(conn, fetched, now=NOW, new_id=lambda: IDS.new(utc_now()),
                                  project=project)


def rows(db: Path, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    async with await Store.open(tmp_path / "botasync.db") as s:
        yield s


async def test_write_stores_rows_segments_index_and_one_event(store: Store) -> None:
    """A completed transcription: its row, its segments, their index, one event; again: nothing."""
    await put_recordings(store, {"id": "rec_1", "status": "completed"})
    obj = txn("txn_a", "rec_1", words="zebra")
    w = await write(store, "rec_1", obj)
    assert (w.transcriptions, w.segments, w.done) == (1, 2, True)
    assert [(e.type, e.recording_id, e.data, e.previous) for e in w.events] == [
        ("transcription.completed", "rec_1", obj, {})]
    assert rows(store.path, "SELECT position, start_s, end_s, speaker, text, confidence "
                            "FROM transcript_segments ORDER BY position") == [
        (0, 0.0, 1.5, "A", "zebra one", None), (1, 1.5, 3.25, "B", "zebra two", 0.9)]
    assert search(store.path, "zebra") == ["txn_a"]
    assert search(store.path, "speaker:B") == ["txn_a"]
    again = await write(store, "rec_1", obj)
    assert (again.transcriptions, again.events) == (0, [])
    fts_matches_rows(store.path)


async def test_pending_then_completed_then_failed(store: Store) -> None:
    """No event while pending; completed once; a later change of status is reported with it."""
    await put_recordings(store, {"id": "rec_1", "status": "processing"})
    w = await write(store, "rec_1", txn("txn_a", "rec_1", status="processing"))
    assert (w.done, w.events, w.segments) == (False, [], 0)
    w = await write(store, "rec_1", txn("txn_a", "rec_1"))
    assert [(e.type, e.previous["status"]) for e in w.events] == [
        ("transcription.completed", "processing")]
    w = await write(store, "rec_1", txn("txn_a", "rec_1", status="failed", error="gone bad"))
    assert [(e.type, e.previous["status"], e.previous["error"]) for e in w.events] == [
        ("transcription.failed", "completed", None)]
    assert rows(store.path, "SELECT count(*) FROM transcript_segments") == [(0,)]
    fts_matches_rows(store.path)


async def test_replacement_waits_for_its_replacement_to_finish(store: Store) -> None:
    """A re-run: the old one stays while the new one runs, then goes with an event naming it."""
    await put_recordings(store, {"id": "rec_1", "status": "completed"},
                         {"id": "rec_2", "status": "completed"})
    await write(store, "rec_1", txn("txn_old", "rec_1", words="aardvark"))
    await write(store, "rec_2", txn("txn_other", "rec_2", words="aardvark"))
    w = await write(store, "rec_1", txn("txn_new", "rec_1", status="processing"))
    assert (w.replaced, w.events, w.done) == ([], [], False)
    assert sorted(search(store.path, "aardvark")) == ["txn_old", "txn_other"]
    w = await write(store, "rec_1", txn("txn_new", "rec_1", words="buffalo"))
    assert w.replaced == ["txn_old"]
    assert [(e.type, e.data["id"], e.previous) for e in w.events] == [
        ("transcription.completed", "txn_new", {"id": "txn_old", "status": "processing", "text": None})]
    assert search(store.path, "aardvark") == ["txn_other"]
    assert search(store.path, "buffalo") == ["txn_new"]
    assert rows(store.path, "SELECT id FROM transcriptions ORDER BY id") == [
        ("txn_new",), ("txn_other",)]
    fts_matches_rows(store.path)


async def test_summaries_stored_with_events_and_removed_with_their_transcription(
    store: Store,
) -> None:
    """Summaries: stored and announced once terminal; gone when their transcription is replaced."""
    await put_recordings(store, {"id": "rec_1", "status": "completed"})
    pending = {"id": "sum_1", "transcription_id": "txn_a", "status": "processing", "output": None}
    done = {**pending, "status": "completed", "output": {"summary": "short"}}
    w = await write(store, "rec_1", txn("txn_a", "rec_1"), summaries={"txn_a": [pending]})
    assert w.done is False and [e.type for e in w.events] == ["transcription.completed"]
    w = await write(store, "rec_1", txn("txn_a", "rec_1"), summaries={"txn_a": [done]})
    assert (w.done, [(e.type, e.data, e.previous) for e in w.events]) == (
        True, [("summary.completed", done, {"status": "processing", "output": None})])
    assert rows(store.path, "SELECT id, transcription_id, recording_id, output FROM summaries") == [
        ("sum_1", "txn_a", "rec_1", '{"summary":"short"}')]
    await write(store, "rec_1", txn("txn_b", "rec_1"))
    assert rows(store.path, "SELECT count(*) FROM summaries") == [(0,)]


async def test_nothing_is_queued_before_transcripts_are_on(store: Store) -> None:
    """The sync queues nothing until `enable`; `enable` queues what is stored, once."""
    await put_recordings(
        store, {"id": "rec_1", "status": "completed"},  # deployed: ask the list
        {"id": "rec_2", "status": "completed", "transcription_id": "txn_2"},
        {"id": "rec_3", "status": "processing"},
        {"id": "rec_4", "status": "completed", "transcription_id": None},
        {"id": "rec_5", "status": "completed"})
    async with store.transaction() as conn:
        await conn.execute("UPDATE recordings SET deleted_at = ? WHERE id = 'rec_5'", (NOW,))
    assert rows(store.path, "SELECT count(*) FROM transcript_queue") == [(0,)]
    async with store.transaction() as conn:
        assert await queue.enable(conn, P, NOW, summaries=False) == 2
        assert await queue.enable(conn, P, NOW, summaries=False) == 0
    assert rows(store.path, "SELECT recording_id, reason FROM transcript_queue ORDER BY 1") == [
        ("rec_1", "backfill"), ("rec_2", "backfill")]
    await put_recordings(store, {"id": "rec_3", "status": "completed", "created_at": "2026-12-01"},
                         {"id": "rec_6", "status": "processing", "transcription_id": "txn_6",
                          "created_at": "2026-12-02"})
    assert rows(store.path, "SELECT recording_id, reason FROM transcript_queue ORDER BY 1") == [
        ("rec_1", "backfill"), ("rec_2", "backfill"), ("rec_3", "finished"),
        ("rec_6", "transcription_id")]
    async with store.read() as conn:  # newest first; a tombstoned one never
        assert [j.recording_id for j in await queue.due(conn, P, NOW, 10)] == [
            "rec_6", "rec_3", "rec_2", "rec_1"]


async def test_a_row_queued_again_while_fetched_is_not_finished(store: Store) -> None:
    """The sync queues a recording again while it is being fetched: the fetch leaves it queued."""
    async with store.transaction() as conn:
        await queue.enable(conn, P, NOW, summaries=False)
    await put_recordings(store, {"id": "rec_1", "status": "completed", "transcription_id": "t"})
    async with store.read() as conn:
        (job,) = await queue.due(conn, P, NOW, 10)
    assert job.by_id and job.transcription_id == "t"
    async with store.transaction() as conn:
        await conn.execute("UPDATE transcript_queue SET queued_at = 'later'")
        assert not await queue.finish(conn, job)
        assert not await queue.again(conn, job, None, "x", 1)
    assert rows(store.path, "SELECT queued_at, last_error FROM transcript_queue") == [
        ("later", None)]


async def test_stored_terminal_transcription_is_not_queued_again(store: Store) -> None:
    """A recording naming a transcription stored terminal is not queued by its next write."""
    async with store.transaction() as conn:
        await queue.enable(conn, P, NOW, summaries=False)
    await put_recordings(store, {"id": "rec_1", "status": "completed", "transcription_id": "txn_a"})
    await write(store, "rec_1", txn("txn_a", "rec_1"))
    async with store.transaction() as conn:
        await conn.execute("DELETE FROM transcript_queue")
    await put_recordings(store, {"id": "rec_1", "status": "completed", "transcription_id": "txn_a",
                                 "name": "renamed"})
    assert rows(store.path, "SELECT count(*) FROM transcript_queue") == [(0,)]
    async with store.transaction() as conn:  # summaries turned on later: it is queued for them
        assert await queue.enable(conn, P, NOW, summaries=True) == 1


async def test_first_sync_queues_as_backfill(store: Store) -> None:
    """Rows written by the first sync are queued as a backfill (their events are one too)."""
    async with store.transaction() as conn:
        await queue.enable(conn, P, NOW, summaries=False)
    await put_recordings(store, {"id": "rec_1", "status": "completed"}, backfill=True)
    assert rows(store.path, "SELECT reason FROM transcript_queue") == [("backfill",)]


async def test_worker_leaves_the_sync_its_reserve() -> None:
    """The worker sends nothing while only the sync's reserve of the overall budget is free,
    nor while its own share is spent; an unlimited overall budget reserves nothing."""
    now = [0.0]
    overall = RequestBudget(10, clock=lambda: now[0])
    share = RequestBudget(2, clock=lambda: now[0])
    assert (sync_reserve(90), sync_reserve(10), sync_reserve(None)) == (9, 1, 0)
    for _ in range(8):
        overall.release(await overall.acquire())
    assert room_wait(overall, share) == 0
    overall.release(await overall.acquire())  # 9 of 10 used: 1 free, the reserve
    assert room_wait(overall, share) == RESERVE_NAP_S
    now[0] = 61.0  # the window passed: all free again
    assert room_wait(overall, share) == 0
    for _ in range(2):
        share.release(await share.acquire())
    assert room_wait(overall, share) == 60.0
    assert room_wait(RequestBudget(None), None) == 0


async def test_refresh_queues_stale_finished_recordings_naming_no_transcription(
    store: Store,
) -> None:
    """A deployed recording whose transcriptions were fetched before the cutoff is queued
    again, stalest first; one naming its transcription (documented), a tombstoned one, one
    already queued, and a fresh one are not."""
    async with store.transaction() as conn:
        await queue.enable(conn, P, NOW, summaries=False)
    await put_recordings(store, {"id": "rec_1", "status": "completed"},
                         {"id": "rec_2", "status": "completed"},
                         {"id": "rec_3", "status": "completed", "transcription_id": "txn_3"},
                         {"id": "rec_4", "status": "completed"},
                         {"id": "rec_5", "status": "completed"})
    for n in (1, 2, 3, 4, 5):
        await write(store, f"rec_{n}", txn(f"txn_{n}", f"rec_{n}"))
    async with store.transaction() as conn:
        await conn.execute("DELETE FROM transcript_queue WHERE recording_id != 'rec_5'")
        await conn.executemany("UPDATE transcriptions SET fetched_at = ? WHERE id = ?", [
            ("2026-01-02", "txn_1"), ("2026-01-01", "txn_2"), ("2026-01-01", "txn_3"),
            ("2026-01-01", "txn_4"), ("2026-01-01", "txn_5"), ])
        await conn.execute("UPDATE recordings SET deleted_at = ? WHERE id = 'rec_4'", (NOW,))
        assert await queue.refresh(conn, P, "2026-06-01", NOW, 1) == 1
        assert await queue.refresh(conn, P, "2026-06-01", NOW, 10) == 1
        assert await queue.refresh(conn, P, "2026-06-01", NOW, 10) == 0
    assert rows(store.path, "SELECT recording_id, reason FROM transcript_queue "
                            "WHERE reason = 'refresh' ORDER BY queued_at, rowid") == [
        ("rec_2", "refresh"), ("rec_1", "refresh")]
    await write(store, "rec_1", txn("txn_1", "rec_1"))  # fetched again, unchanged: fresh
    assert rows(store.path, "SELECT fetched_at FROM transcriptions WHERE id = 'txn_1'") == [
        (NOW,)]


def test_progress_bar_counts_recordings_and_says_the_time_left() -> None:
    """On a terminal the bar counts recordings against the queue (up to --limit) and says
    how long the rest takes at the budget; elsewhere there is no bar."""
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    with fetch_progress(console, requests_per_minute=10, summaries=False) as bar:
        assert bar is not None
        bar.begin({"queued": {"due": 900}}, limit=600)
        bar(FetchStats(recordings=3, transcriptions=3, segments=120, failures=1))
        console.print(bar.progress.get_renderable())
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "recordings 4/600, 3 transcripts, 120 segments, 1 failed" in shown
    assert "about 60 min left" in shown  # 596 at 10 a minute
    with fetch_progress(Console(file=io.StringIO()), 10, False) as none:
        assert none is None


async def test_a_transcription_without_segments_is_searchable(tmp_path: Any) -> None:
    """`segments: null` with a text: one segment without times holds the text, indexed."""
    from botasync.api.transcription import parse_transcription
    from botasync.store.sqlite import Store
    from botasync.store.transcripts import _put_transcription

    store = await Store.open(tmp_path / "botasync.db")
    try:
        async with store.transaction() as conn:
            await conn.execute(
                "INSERT INTO recordings (id, status, raw, first_seen_at, synced_at) "
                "VALUES ('rec_a', 'completed', '{}', 't', 't')")
            t = parse_transcription({"id": "txn_a", "recording_id": "rec_a",
                                     "status": "completed", "full_text": "quarterly budget",
                                     "segments": None})
            assert await _put_transcription(conn, "default", t, "rec_a", "t") == 1
        rows = await store.fetchall(
            "SELECT s.position, s.start_s, s.text FROM transcript_fts f JOIN transcript_segments s "
            "ON s.id = f.rowid WHERE transcript_fts MATCH 'budget'")
        assert [tuple(r) for r in rows] == [(0, None, "quarterly budget")]
    finally:
        await store.aclose()


# --- two projects in one database -------------------------------------------------------


def by_project(db: str | Path, words: str) -> list[tuple[str, str]]:
    """(project, transcription id) of the segments an FTS query matches."""
    return sorted(set(rows(Path(db), (
        "SELECT s.project, s.transcription_id FROM transcript_fts f "
        "JOIN transcript_segments s ON s.id = f.rowid WHERE transcript_fts MATCH ?"),
        (words,))))


async def test_two_projects_with_the_same_ids_keep_their_own_transcripts(store: Store) -> None:
    """The same recording, transcription and summary ids in two projects: each has its own
    queue, settings, rows, segments, index entries, summaries and events, and a re-run in
    one replaces nothing of the other's."""
    for project in ("alpha", "beta"):
        await put_recordings(store, {"id": "rec_1", "status": "completed",
                                     "transcription_id": "txn_a"},
                             {"id": "rec_2", "status": "completed"}, project=project)
    async with store.transaction() as conn:  # alpha's turned on: alpha's rows alone queued
        assert await queue.enable(conn, "alpha", NOW, summaries=False) == 2
        assert await queue.settings(conn, "beta") is None
        assert await queue.due(conn, "beta", NOW, 10) == []
    assert rows(store.path, "SELECT project, recording_id FROM transcript_queue "
                            "ORDER BY 1, 2") == [("alpha", "rec_1"), ("alpha", "rec_2")]
    async with store.transaction() as conn:
        assert await queue.enable(conn, "beta", NOW, summaries=False) == 2
    assert rows(store.path, "SELECT project FROM state WHERE key = ? ORDER BY 1",
                (queue.STATE_KEY,)) == [("alpha",), ("beta",)]

    summary = {"id": "sum_1", "transcription_id": "txn_a", "status": "completed"}
    alpha = await write(store, "rec_1", txn("txn_a", "rec_1", words="aardvark"), project="alpha",
                        summaries={"txn_a": [{**summary, "output": {"said": "aardvark"}}]})
    beta = await write(store, "rec_1", txn("txn_a", "rec_1", words="buffalo"), project="beta",
                       summaries={"txn_a": [{**summary, "output": {"said": "buffalo"}}]})
    assert [(e.project, e.type) for e in alpha.events + beta.events] == [
        ("alpha", "transcription.completed"), ("alpha", "summary.completed"),
        ("beta", "transcription.completed"), ("beta", "summary.completed")]
    assert [e.previous for e in beta.events] == [{}, {}]  # first stored in beta
    assert rows(store.path, "SELECT project, json_extract(payload, '$.project'), "
                            "json_extract(payload, '$.data.id') FROM events ORDER BY seq") == [
        ("alpha", "alpha", "txn_a"), ("alpha", "alpha", "sum_1"),
        ("beta", "beta", "txn_a"), ("beta", "beta", "sum_1")]
    assert rows(store.path, "SELECT project, id, recording_id, text FROM transcriptions "
                            "ORDER BY 1") == [
        ("alpha", "txn_a", "rec_1", "aardvark one aardvark two"),
        ("beta", "txn_a", "rec_1", "buffalo one buffalo two")]
    assert rows(store.path, "SELECT project, transcription_id, count(*) FROM "
                            "transcript_segments GROUP BY 1, 2 ORDER BY 1") == [
        ("alpha", "txn_a", 2), ("beta", "txn_a", 2)]
    assert rows(store.path, "SELECT project, id, output FROM summaries ORDER BY 1") == [
        ("alpha", "sum_1", '{"said":"aardvark"}'), ("beta", "sum_1", '{"said":"buffalo"}')]
    assert by_project(store.path, "aardvark") == [("alpha", "txn_a")]
    assert by_project(store.path, "buffalo") == [("beta", "txn_a")]
    fts_matches_rows(store.path)

    async with store.transaction() as conn:  # alpha's fetches done: beta's rows stay
        for job in await queue.due(conn, "alpha", NOW, 10):
            assert job.project == "alpha" and await queue.finish(conn, job)
        (gone,) = [j for j in await queue.due(conn, "beta", NOW, 10) if j.recording_id == "rec_2"]
        assert await queue.again(conn, gone, None, "boom", 10)  # beta's rec_2 gives up
        assert (await queue.counts(conn, "alpha", NOW))["rows"] == 0
        assert {k: v for k, v in (await queue.counts(conn, "beta", NOW)).items() if v} == {
            "queued": 1, "due": 1, "gave_up": 1, "rows": 2}
        assert await queue.gave_up_items(conn, "alpha", 10) == []
        assert await queue.retry_gave_up(conn, "alpha") == 0
        assert await queue.retry_gave_up(conn, "beta") == 1
    assert rows(store.path, "SELECT project, recording_id, attempts FROM transcript_queue "
                            "ORDER BY 1, 2") == [("beta", "rec_1", 0), ("beta", "rec_2", 0)]

    rerun = await write(store, "rec_1", txn("txn_new", "rec_1", words="cheetah"),
                        project="alpha")  # a re-run in alpha replaces alpha's txn_a alone
    assert rerun.replaced == ["txn_a"] and rerun.events[0].previous == {"id": "txn_a"}
    assert rows(store.path, "SELECT project, id FROM transcriptions ORDER BY 1, 2") == [
        ("alpha", "txn_new"), ("beta", "txn_a")]
    assert rows(store.path, "SELECT project, id FROM summaries") == [("beta", "sum_1")]
    assert by_project(store.path, "aardvark") == []
    assert by_project(store.path, "buffalo") == [("beta", "txn_a")]
    assert by_project(store.path, "cheetah") == [("alpha", "txn_new")]
    fts_matches_rows(store.path)

    # a recording naming txn_a is queued again in alpha (its txn_a is gone), not in beta
    # (its txn_a is stored terminal)
    async with store.transaction() as conn:
        await conn.execute("DELETE FROM transcript_queue")
    for project in ("alpha", "beta"):
        await put_recordings(store, {"id": "rec_1", "status": "completed",
                                     "transcription_id": "txn_a", "name": "renamed"},
                             project=project)
    assert rows(store.path, "SELECT project, recording_id FROM transcript_queue") == [
        ("alpha", "rec_1")]
    # a third project turned on: its rec_1 is queued, whatever the others hold of theirs
    await put_recordings(store, {"id": "rec_1", "status": "completed"}, project="gamma")
    async with store.transaction() as conn:
        assert await queue.enable(conn, "gamma", NOW, summaries=True) == 1


async def test_refresh_summaries_and_status_are_per_project(store: Store) -> None:
    """The refresh of stale transcriptions, the summaries backfill and `transcripts status`
    each read one project: the other's same ids are not touched nor counted."""
    for project in ("alpha", "beta"):
        async with store.transaction() as conn:
            await queue.enable(conn, project, NOW, summaries=False)
        await put_recordings(store, {"id": "rec_1", "status": "completed"},
                             {"id": "rec_2", "status": "completed"}, project=project)
        await write(store, "rec_1", txn("txn_1", "rec_1"), project=project)
    await write(store, "rec_2", txn("txn_2", "rec_2"), project="beta", summaries={"txn_2": [
        {"id": "sum_1", "transcription_id": "txn_2", "status": "completed"}]})
    async with store.transaction() as conn:  # beta's stay queued: alpha's are refreshed
        await conn.execute("DELETE FROM transcript_queue WHERE project = 'alpha'")
        await conn.execute("UPDATE transcriptions SET fetched_at = '2026-01-01'")
        assert await queue.refresh(conn, "alpha", "2026-06-01", NOW, 10) == 1
    assert rows(store.path, "SELECT project, recording_id, reason FROM transcript_queue "
                            "ORDER BY 1, 2") == [
        ("alpha", "rec_1", "refresh"), ("beta", "rec_1", "finished"),
        ("beta", "rec_2", "finished")]
    async with store.transaction() as conn:
        await conn.execute("DELETE FROM transcript_queue")
        assert await queue.enable(conn, "beta", NOW, summaries=True) == 2  # its rec_1, rec_2
    assert rows(store.path, "SELECT project, recording_id FROM transcript_queue "
                            "ORDER BY 2") == [("beta", "rec_1"), ("beta", "rec_2")]
    async with store.read() as conn:
        assert (await queue.settings(conn, "alpha"), (await queue.settings(conn, "beta"))) == (
            queue.Settings(NOW, False), queue.Settings(NOW, True))
        assert await queue.next_due_at(conn, "alpha") is None

    tcfg = TranscriptsConfig()
    alpha = await transcripts_status(store, tcfg, "alpha")
    beta = await transcripts_status(store, tcfg, "beta")
    assert (alpha["project"], alpha["done"], alpha["queued"]["recordings"]) == (
        "alpha", {"recordings": 1, "transcriptions": 1, "segments": 2, "summaries": 0}, 0)
    assert (beta["project"], beta["done"], beta["queued"]["recordings"]) == (
        "beta", {"recordings": 2, "transcriptions": 2, "segments": 4, "summaries": 1}, 2)
    assert (await transcripts_status(store, tcfg))["done"]["recordings"] == 0  # `default`


def test_each_project_has_its_own_fetch_lock(tmp_path: Path) -> None:
    """A fetcher per project may run at once; two of one project may not. The project
    `default` keeps the lock file it always had."""
    db = tmp_path / "botasync.db"
    assert lock_for(db).path.name == "botasync.db.transcripts.lock"
    alpha, beta = lock_for(db, "alpha"), lock_for(db, "beta")
    alpha.acquire()
    try:
        beta.acquire()
        beta.release()
        with pytest.raises(BotasyncError, match=r"fetching transcripts for .* \(project alpha\)"):
            lock_for(db, "alpha").acquire()
    finally:
        alpha.release()
