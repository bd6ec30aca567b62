"""Transcript search: the query language, its SQL on a real database, ranking and filters."""

from __future__ import annotations

import functools
import itertools
import json
import re
import sqlite3
import string
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from botasync.api.transcription import parse_transcription
from botasync.cli.search import search
from botasync.store import migrations
from botasync.store.base import Database
from botasync.store.dialect import translate
from botasync.store.transcripts import Fetched, write
from botasync.transcripts.search import (
    MARK_CLOSE,
    MARK_OPEN,
    OPERATORS,
    QuerySyntaxError,
    SearchRequest,
    fts_query,
    plain_snippet,
    rich_snippet,
    search_sql,
    search_sql_pg,
    time_label,
)
from tests.pgserver import PgServer, TestDb

ROOT = Path(__file__).resolve().parents[1]

# --- fixture rows --------------------------------------------------------------------------------
# Files are filled as botasync fills them: recording rows by SQL (as a sync writes them),
# transcriptions through the transcripts writer (`botasync.transcripts.store.write`, what
# a fetch stores). The in-memory databases of the property tests take the same rows by
# plain SQL (`add_recording`, `add_transcript`): hypothesis runs them synchronously.

Seg = tuple[float | None, float | None, str | None, str]  # start_s, end_s, speaker, text
NOW = "2026-11-28T12:00:00.000Z"
_ids = itertools.count(1)
_RECORDING = (
    "INSERT INTO recordings (id, name, status, created_at, raw, first_seen_at, synced_at, "
    "deleted_at, project) VALUES (?, ?, ?, ?, '{}', ?, ?, ?, ?)")


def transcription(rec_id: str, txn_id: str, segments: Sequence[Seg], *,
                  status: str = "completed", text: str | None = None,
                  created_at: str = "2026-11-01T10:05:00.000Z") -> dict[str, Any]:
    """A transcription as the documented API sends it."""
    full = text if text is not None else " ".join(s[3] for s in segments)
    return {
        "id": txn_id, "recording_id": rec_id, "status": status, "language": "en",
        "provider": "bota", "text": full, "word_count": len(full.split()), "error": None,
        "segments": [{"start": a, "end": b, "text": t, "confidence": 0.9,
                      **({"speaker": who} if who is not None else {})}
                     for a, b, who, t in segments],
        "summary_id": None, "created_at": created_at, "updated_at": created_at,
        "completed_at": created_at if status == "completed" else None,
    }


async def put_recording(store: Database, rec_id: str, *, name: str | None = None,
                        created_at: str = "2026-11-01T10:00:00.000Z",
                        deleted_at: str | None = None, project: str = "default") -> None:
    """A mirrored recording row (the columns a sync writes that the reads here need)."""
    async with store.transaction() as conn:
        await conn.execute(_RECORDING, (rec_id, name, "completed", created_at, created_at,
                                        created_at, deleted_at, project))


async def put_transcription(store: Database, rec_id: str, txn_id: str, segments: Sequence[Seg],
                            *, project: str = "default", **fields: Any) -> None:
    """One fetch of a recording's transcription, stored by the transcripts writer."""
    fetched = Fetched(rec_id, [parse_transcription(transcription(rec_id, txn_id, segments,
                                                                 **fields))])
    async with store.transaction() as conn:
        await write(conn, fetched, now=NOW, new_id=lambda: f"evt_{next(_ids):026d}",
                    project=project)


def add_recording(conn: sqlite3.Connection, rec_id: str) -> None:
    """`put_recording` by plain SQL, for an in-memory database."""
    conn.execute(_RECORDING, (rec_id, None, "completed", NOW, NOW, NOW, None, "default"))


def add_transcript(conn: sqlite3.Connection, rec_id: str, txn_id: str,
                   segments: Sequence[Seg]) -> None:
    """The rows the writer makes for a completed transcription, by plain SQL."""
    conn.execute(
        "INSERT INTO transcriptions (id, recording_id, status, text, raw, fetched_at) "
        "VALUES (?, ?, 'completed', ?, '{}', ?)",
        (txn_id, rec_id, " ".join(s[3] for s in segments), NOW))
    for position, (start, end, speaker, text) in enumerate(segments):
        cur = conn.execute(
            "INSERT INTO transcript_segments (transcription_id, position, start_s, end_s, "
            "speaker, text) VALUES (?, ?, ?, ?, ?, ?)", (txn_id, position, start, end, speaker,
                                                         text))
        conn.execute("INSERT INTO transcript_fts(rowid, text, speaker) VALUES (?, ?, ?)",
                     (cur.lastrowid, text, speaker))


@functools.cache
def _migrated() -> sqlite3.Connection:
    """An in-memory database with every schema step applied, as `Store.open` applies them."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    for step in migrations.STEPS:
        conn.executescript(step)
    conn.execute(f"PRAGMA user_version = {migrations.LATEST}")
    return conn


def schema(conn: sqlite3.Connection) -> None:
    """Every schema step in `conn`: a copy of the one database migrated (35 ms a time, and
    the property tests below make hundreds)."""
    _migrated().backup(conn)


@pytest.fixture
async def db(database: TestDb) -> TestDb:
    """A database with a few transcripts, one of a deleted recording (SQLite, PostgreSQL)."""
    async with await database.open() as store:
        await put_recording(store, "rec_standup", name="Standup",
                            created_at="2026-10-01T09:00:00.000Z")
        await put_transcription(store, "rec_standup", "txn_standup", [
            (0.0, 4.0, "Alice", "Good morning everyone, let's start with the budget."),
            (4.0, 9.5, "Bob", "The budget review moved to Friday."),
            (9.5, 15.0, "Alice", "I don't think C++ is the right tool for the importer."),
        ])
        await put_recording(store, "rec_review", name="Quarterly review",
                            created_at="2026-11-20T14:00:00.000Z")
        await put_transcription(store, "rec_review", "txn_review", [
            (3725.0, 3730.0, "Carol", "Budget numbers first, the budget is tight this year."),
            (3730.0, 3736.0, "Dan", "Send the e-mail to finance after the call."),
        ])
        await put_recording(store, "rec_gone", name="Deleted call",
                            created_at="2026-11-02T08:00:00.000Z",
                            deleted_at="2026-11-03T08:00:00.000Z")
        await put_transcription(store, "rec_gone", "txn_gone", [
            (61.0, 65.0, "Alice", "The archived budget memo is in the shared drive."),
        ])
    return database


async def run_search(db: TestDb, query: str, **filters: object) -> list[dict[str, Any]]:
    """The command's code path: a read-only store, `search`, the JSON form of each hit."""
    async with await db.open(readonly=True) as store:
        hits = await search(store, SearchRequest(query=query, **filters))  # type: ignore[arg-type]
    return [h.as_dict() for h in hits]


# --- the query language: case tables -------------------------------------------------------------


@pytest.mark.parametrize(("typed", "expression"), [
    ("budget", 'text : ("budget")'),
    ("budget review", 'text : ("budget" "review")'),
    ("don't", 'text : ("don\'t")'),
    ("C++", 'text : ("C++")'),
    ("e-mail", 'text : ("e-mail")'),
    ('"budget review"', 'text : ("budget review")'),
    ("bud*", 'text : ("bud"*)'),
    ('"budget re"*', 'text : ("budget re"*)'),
    ("budget OR memo", 'text : ("budget" OR "memo")'),
    ("budget AND NOT memo", 'text : ("budget" NOT "memo")'),
    ("budget NOT memo", 'text : ("budget" NOT "memo")'),
    ("(budget OR memo) friday", 'text : (( "budget" OR "memo" ) AND "friday")'),
    ("a (b) (c) d", 'text : ("a" AND ( "b" ) AND ( "c" ) AND "d")'),
    ("budget and memo", 'text : ("budget" "and" "memo")'),
    ("NEAR(budget memo)", 'text : ("NEAR" AND ( "budget" "memo" ))'),
    ("speaker:alice", 'text : ("speaker:alice")'),
    ("budget +++ --", 'text : ("budget")'),
    ("budget\x00memo", 'text : ("budget" "memo")'),
    ("a**", 'text : ("a"*)'),
    ("  café  ", 'text : ("café")'),
])
def test_fts_query_cases(typed: str, expression: str) -> None:
    """What a person types becomes the FTS5 expression shown, on the text column."""
    assert fts_query(typed) == expression


@pytest.mark.parametrize(("typed", "message"), [
    ('"budget review', "unbalanced quotes"),
    ('budget "review', "unbalanced quotes"),
    ("AND", "AND needs a word before it"),
    ("NOT budget", "NOT needs a word before it"),
    ("budget OR", "OR needs a word after it"),
    ("budget AND OR memo", "AND needs a word after it"),
    ("(budget", "a ( is never closed"),
    ("budget)", "a ) closes nothing"),
    ("budget ()", "() holds no word"),
    ("(budget OR)", "OR needs a word after it"),
    ("", "nothing to search for"),
    ("   ", "nothing to search for"),
    ("+++ ...", "nothing to search for"),
    ('""', "nothing to search for"),
])
def test_fts_query_refuses(typed: str, message: str) -> None:
    """A query FTS5 could not read is refused with one line that says why (exit 2)."""
    with pytest.raises(QuerySyntaxError, match=re.escape(message)) as info:
        fts_query(typed)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def memory_db() -> Iterator[sqlite3.Connection]:
    """An in-memory database with the schema and a few rows, for the property tests."""
    conn = sqlite3.connect(":memory:")
    schema(conn)
    add_recording(conn, "rec_1")
    add_transcript(conn, "rec_1", "txn_1", [
        (0.0, 1.0, "Alice", "don't panic: C++ and e-mail, café NOT and OR"),
        (1.0, 2.0, None, "\"quoted\" (parens) *stars* ^caret col:on {brace}"),
    ])
    yield conn
    conn.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed=st.text() | st.text(alphabet='ab "()*:^-+AND OR NOT\x00{}', max_size=30))
def test_no_query_fails_in_sqlite(memory_db: sqlite3.Connection, typed: str) -> None:
    """Any string is either refused with a QuerySyntaxError or runs: never an SQLite error."""
    try:
        sql, params = search_sql(SearchRequest(query=typed, speaker=typed, since=typed))
    except QuerySyntaxError:
        return
    memory_db.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def pg_memory_db(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    """`memory_db` on PostgreSQL: a database of the module's, the schema and the same rows."""
    name = pg_server.create_database()
    try:
        with pg_server.connect(name) as conn:
            for step in migrations.PG_STEPS:  # the schema as a new database gets it
                for stmt in migrations._statements(step):
                    conn.execute(stmt)
            conn.execute(translate(_RECORDING), ("rec_1", None, "completed", NOW, NOW, NOW,
                                                 None, "default"))
            conn.execute("INSERT INTO transcriptions (id, recording_id, status, raw, "
                         "fetched_at) VALUES ('txn_1', 'rec_1', 'completed', '{}', %s)", (NOW,))
            for position, text in enumerate([
                    "don't panic: C++ and e-mail, café NOT and OR",
                    "\"quoted\" (parens) *stars* ^caret col:on {brace} it's 100%"]):
                conn.execute("INSERT INTO transcript_segments (transcription_id, position, "
                             "speaker, text) VALUES ('txn_1', %s, 'Alice', %s)",
                             (position, text))
            yield conn
    finally:
        pg_server.drop_database(name)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(typed=st.text() | st.text(alphabet='ab "()*:^-+AND OR NOT\x00{}\'&|!<>%', max_size=30))
def test_no_query_fails_in_postgres(pg_memory_db: psycopg.Connection[Any], typed: str) -> None:
    """On PostgreSQL too: refused with a QuerySyntaxError, or it runs (no tsquery syntax
    error, whatever the words hold)."""
    try:
        sql, params = search_sql_pg(SearchRequest(query=typed, speaker=typed, since=typed))
    except QuerySyntaxError:
        return
    pg_memory_db.execute(translate(sql), params).fetchall()


def test_postgres_reads_the_query_language_as_fts5_does(
        pg_memory_db: psycopg.Connection[Any]) -> None:
    """Phrases, prefixes, implied and written AND, OR, NOT and parentheses, case folded."""
    def found(typed: str) -> list[int]:
        sql, params = search_sql_pg(SearchRequest(query=typed))
        return sorted(r[6] for r in pg_memory_db.execute(translate(sql), params).fetchall())

    assert found("PANIC") == [0]
    assert found("don't") == [0] and found("C++") == [0] and found("e-mail") == [0]
    assert found('"and e-mail"') == [0] and found('"e-mail and"') == []
    assert found("pan*") == [0] and found('"don t pa"*') == [0] and found("par*") == [1]
    assert found("panic quoted") == [] and found("panic OR quoted") == [0, 1]
    assert found("stars NOT panic") == [1] and found("stars AND NOT quoted") == []
    assert found("(panic OR stars) caret") == [1]
    assert found("panic OR stars caret") == [0, 1]  # AND binds tighter than OR
    assert found("100") == [1] and found("it's") == [1]


_WORD = st.text(alphabet=string.ascii_letters + string.digits + "'-+.é", min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(words=st.lists(_WORD, min_size=1, max_size=6), pick=st.integers(min_value=0))
def test_a_typed_word_finds_the_segment_it_came_from(words: list[str], pick: int) -> None:
    """Any word of a segment, typed as it reads there, finds that segment."""
    word = words[pick % len(words)]
    if word in OPERATORS or not any(c.isalnum() for c in word):
        return
    conn = sqlite3.connect(":memory:")
    try:
        schema(conn)
        add_recording(conn, "rec_1")
        add_transcript(conn, "rec_1", "txn_1", [(0.0, 1.0, None, " ".join(words))])
        sql, params = search_sql(SearchRequest(query=word))
        assert len(conn.execute(sql, params).fetchall()) == 1
    finally:
        conn.close()


def test_past_the_cap_the_newest_matches_that_pass_the_filters_are_ranked() -> None:
    """Past RANK_CAP matches (2 here) only the newest are ranked; a filter applies first."""
    conn = sqlite3.connect(":memory:")
    try:
        schema(conn)
        add_recording(conn, "rec_1")
        add_transcript(conn, "rec_1", "txn_1", [
            (0.0, 1.0, "Alice", "budget budget"),        # the best match, stored first
            (1.0, 2.0, "Alice", "the budget is fine"),
            (2.0, 3.0, "Bob", "a budget for the trip"),
        ])

        def texts(cap: int, speaker: str | None = None) -> list[str]:
            sql, params = search_sql(SearchRequest(query="budget", speaker=speaker))
            return [r[10] for r in conn.execute(sql, {**params, "cap": cap})]

        assert texts(5000)[0] == "budget budget"
        assert sorted(texts(2)) == ["a budget for the trip", "the budget is fine"]
        assert texts(2, speaker="alice") == ["budget budget", "the budget is fine"]
        _, params = search_sql(SearchRequest(query="budget", limit=5000))
        assert params["cap"] == 5000  # a --limit past the cap widens it
    finally:
        conn.close()


def test_case_and_accents_do_not_matter(memory_db: sqlite3.Connection) -> None:
    """`CAFE` finds `café`: the index folds case and diacritics, and so does the query."""
    sql, params = search_sql(SearchRequest(query="CAFE"))
    assert len(memory_db.execute(sql, params).fetchall()) == 1


# --- rendering helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "label"), [
    (0.0, "00:00"), (9.99, "00:09"), (61.5, "01:01"), (3599.9, "59:59"), (3600.0, "1:00:00"),
    (3725.0, "1:02:05"), (36000.0, "10:00:00"), (None, ""), (-1.0, ""), (float("nan"), ""),
    (float("inf"), ""),
])
def test_time_label(seconds: float | None, label: str) -> None:
    """`mm:ss` within the first hour, `h:mm:ss` after it, nothing for an unknown time."""
    assert time_label(seconds) == label


def test_snippets_plain_and_rich() -> None:
    """Matches read `[x]` in plain text; on a terminal they are styled, the text as it is."""
    snip = f"the {MARK_OPEN}budget{MARK_CLOSE} [draft] {MARK_OPEN}memo{MARK_CLOSE}\\"
    assert plain_snippet(snip) == "the [budget] [draft] [memo]\\"
    console = Console(record=True, force_terminal=True, color_system="truecolor", width=200)
    console.print(rich_snippet(snip))
    assert console.export_text(clear=False).rstrip("\n") == "the budget [draft] memo\\"
    assert "\x1b[1;33mbudget\x1b[0m" in console.export_text(styles=True)
    assert rich_snippet(f"a {MARK_CLOSE}b{MARK_OPEN} c").plain == "a b c"


# --- on a real database --------------------------------------------------------------------------


async def test_ranking_twice_above_once(db: TestDb) -> None:
    """A segment with the term twice ranks above segments with it once; ranks ascend."""
    hits = await run_search(db, "budget")
    assert [h["segment_id"] for h in hits][:1] == [_seg(hits, "Budget numbers first")]
    assert len(hits) == 4
    ranks = [h["bm25"] for h in hits]
    assert ranks == sorted(ranks)


def _seg(hits: list[dict[str, object]], text_start: str) -> object:
    return next(h["segment_id"] for h in hits if str(h["text"]).startswith(text_start))


async def test_a_hit_carries_its_recording_speaker_time_and_snippet(db: TestDb) -> None:
    """Each hit names its recording, speaker, `mm:ss` (h:mm:ss past an hour) and snippet
    (PostgreSQL's marks each part of a hyphenated word)."""
    hits = await run_search(db, "e-mail")
    marked = "[e-mail]" if db.backend == "sqlite" else "[e]-[mail]"
    assert hits == [{
        "project": "default", "recording_id": "rec_review", "recording_name": "Quarterly review",
        "recording_created_at": "2026-11-20T14:00:00.000Z", "recording_deleted": False,
        "transcription_id": "txn_review", "segment_id": hits[0]["segment_id"], "position": 1,
        "speaker": "Dan", "start_s": 3730.0, "end_s": 3736.0, "time": "1:02:10",
        "snippet": f"Send the {marked} to finance after the call.",
        "text": "Send the e-mail to finance after the call.", "bm25": hits[0]["bm25"],
    }]
    (cpp,) = await run_search(db, "C++")
    assert cpp["time"] == "00:09" and cpp["snippet"].startswith("I don't think [C]++")
    assert [h["speaker"] for h in await run_search(db, "don't")] == ["Alice"]


async def test_speaker_and_since_filter(db: TestDb) -> None:
    """--speaker keeps one speaker's segments (any case); --since the recordings created since."""
    alice = await run_search(db, "budget", speaker="alice")
    assert {h["speaker"] for h in alice} == {"Alice"} and len(alice) == 2
    assert await run_search(db, "budget", speaker="Nobody") == []
    recent = await run_search(db, "budget", since="2026-11-02")
    assert {h["recording_id"] for h in recent} == {"rec_review", "rec_gone"}
    both = await run_search(db, "budget", since="2026-11-02", speaker="ALICE")
    assert [h["recording_id"] for h in both] == ["rec_gone"]


async def test_deleted_recordings_are_searched(db: TestDb) -> None:
    """A tombstoned recording keeps its transcript, and search finds it, marked deleted."""
    (hit,) = await run_search(db, "archived")
    assert hit["recording_id"] == "rec_gone" and hit["recording_deleted"] is True


async def test_speaker_names_are_not_matched_as_text(db: TestDb) -> None:
    """The query matches what was said, not who said it: --speaker is for that."""
    assert await run_search(db, "Carol") == []


async def test_phrases_prefixes_and_operators(db: TestDb) -> None:
    """Phrases, prefixes and AND/OR/NOT reach FTS5 as FTS5 syntax."""
    assert len(await run_search(db, '"budget review"')) == 1
    assert len(await run_search(db, "budg*")) == 4
    assert len(await run_search(db, "budget NOT archived")) == 3
    assert len(await run_search(db, "friday OR finance")) == 2
    assert await run_search(db, "friday AND finance") == []


async def test_limit_and_stable_order(db: TestDb) -> None:
    """--limit keeps the best; the same query gives the same hits in the same order."""
    first = await run_search(db, "the", limit=2)
    assert len(first) == 2
    assert first == (await run_search(db, "the", limit=10))[:2]
    assert await run_search(db, "the", limit=10) == await run_search(db, "the", limit=10)


def test_search_bench_runs(tmp_path: Path) -> None:
    """`bench/search.py` builds its database, times its queries and one process, small."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "search.py"), "--segments", "1000", "--queries",
         "20", "--e2e-runs", "1"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["build"]["segments"] == 1000 and result["measured"]["queries"] >= 20
    assert result["measured"]["no_hits"] < result["measured"]["queries"]
    assert result["end_to_end"]["runs"] == 1


# --- two projects in one database ----------------------------------------------------------------


@pytest.fixture
async def two_projects(database: TestDb) -> TestDb:
    """Projects alpha and beta with the same recording and transcription ids, said apart."""
    async with await database.open() as store:
        for project, said, when in (("alpha", "Aardvark budget talk.", "2026-11-01"),
                                    ("beta", "Buffalo budget talk.", "2026-11-05")):
            await put_recording(store, "rec_1", name=f"{project} call", project=project,
                                created_at=f"{when}T10:00:00.000Z")
            await put_transcription(store, "rec_1", "txn_1", [(0.0, 2.0, "Ann", said)],
                                    project=project)
    return database


async def test_the_same_ids_in_two_projects_are_searched_apart(two_projects: TestDb) -> None:
    """Every project's segments are searched, each hit naming its project and its own
    recording; `project` keeps one project's, with every other filter too."""
    hits = await run_search(two_projects, "budget")
    assert sorted((h["project"], h["recording_id"], h["transcription_id"], h["recording_name"],
                   h["text"]) for h in hits) == [
        ("alpha", "rec_1", "txn_1", "alpha call", "Aardvark budget talk."),
        ("beta", "rec_1", "txn_1", "beta call", "Buffalo budget talk.")]
    assert len({h["segment_id"] for h in hits}) == 2
    for project in ("alpha", "beta"):
        (hit,) = await run_search(two_projects, "budget", project=project)
        assert hit["project"] == project and hit["recording_name"] == f"{project} call"
        assert len(await run_search(two_projects, "talk", project=project, speaker="ann",
                                    since="2026-10-01")) == 1
    assert await run_search(two_projects, "aardvark", project="beta") == []
    assert await run_search(two_projects, "budget", project="gamma") == []
    assert [h["project"] for h in await run_search(two_projects, "budget",
                                                   since="2026-11-03")] == ["beta"]
    if two_projects.backend == "postgres":  # past the cap, the newest of alpha's alone
        sql, params = search_sql_pg(SearchRequest(query="budget", project="alpha"))
        assert [r["project"] for r in two_projects.dict_rows(sql, {**params, "cap": 1})] == [
            "alpha"]
        return
    with sqlite3.connect(two_projects.path) as conn:
        sql, params = search_sql(SearchRequest(query="budget", project="alpha"))
        assert [r["project"] for r in _dict_rows(conn, sql, {**params, "cap": 1})] == ["alpha"]
        conn.execute("INSERT INTO transcript_fts(transcript_fts) VALUES('integrity-check')")
    conn.close()


def _dict_rows(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> list[sqlite3.Row]:
    conn.row_factory = sqlite3.Row
    return conn.execute(sql, params).fetchall()
