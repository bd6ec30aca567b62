"""The SQL translation to PostgreSQL: small, pure, and refusing what it does not know."""

from __future__ import annotations

import re

import pytest

from botasync.store import migrations
from botasync.store.dialect import (
    TranslationError,
    dialect_of,
    glob_condition,
    glob_regex,
    translate,
)


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT id FROM recordings WHERE project = ? AND id = ?",
     "SELECT id FROM recordings WHERE project = %s AND id = %s"),
    ("SELECT * FROM t WHERE a = :a AND b >= :since",
     "SELECT * FROM t WHERE a = %(a)s AND b >= %(since)s"),
    # a literal % is doubled everywhere (psycopg reads the whole text), placeholders not
    ("SELECT 1 FROM t WHERE name LIKE '50%' AND x = ?",
     "SELECT 1 FROM t WHERE name LIKE '50%%' AND x = %s"),
    # a ? or :name inside a literal, a quoted name or a comment is text
    ("SELECT '?', ':x', \"a?\" FROM t -- why?\nWHERE a = ?",
     "SELECT '?', ':x', \"a?\" FROM t -- why?\nWHERE a = %s"),
    ("SELECT 'it''s ?' FROM t WHERE a = ?", "SELECT 'it''s ?' FROM t WHERE a = %s"),
    # PostgreSQL's cast is not a named parameter
    ("SELECT x::text FROM t WHERE y = :y", "SELECT x::text FROM t WHERE y = %(y)s"),
    ("INSERT OR IGNORE INTO handler_cursors (handler, seq) VALUES (?, ?)",
     "INSERT INTO handler_cursors (handler, seq) VALUES (%s, %s) ON CONFLICT DO NOTHING"),
    ("insert or ignore into t (a) values (?);",
     "insert into t (a) values (%s) ON CONFLICT DO NOTHING"),
    ("UPDATE handler_cursors SET seq = MAX(seq, ?) WHERE handler = ?",
     "UPDATE handler_cursors SET seq = GREATEST(seq, %s) WHERE handler = %s"),
    ("SELECT min(a, b, c), max(seq), MIN(created_at) FROM t",
     "SELECT LEAST(a, b, c), max(seq), MIN(created_at) FROM t"),
    ("SELECT max(coalesce(a, 0), min(b, ?)) FROM t",
     "SELECT GREATEST(coalesce(a, 0), LEAST(b, %s)) FROM t"),
    ("SELECT max (a, b) FROM t", "SELECT GREATEST(a, b) FROM t"),
    ("SELECT json_extract(m.raw, '$.sha256') FROM media m",
     "SELECT (m.raw ->> 'sha256') FROM media m"),
    ("SELECT 1 WHERE json_type(r.raw, '$.transcription_id') IS NULL",
     "SELECT 1 WHERE (r.raw -> 'transcription_id') IS NULL"),
    ("SELECT max(json_extract(raw, '$.a'), ?)", "SELECT GREATEST((raw ->> 'a'), %s)"),
    ("SELECT json_extract(payload, '$.data.id'), json_type(raw, '$.a.b') FROM events",
     "SELECT (payload #>> '{data,id}'), (raw #> '{a,b}') FROM events"),
    ("SELECT count(*) FROM events", "SELECT count(*) FROM events"),
    # SQLite's null-safe comparisons; IS [NOT] NULL/TRUE/FALSE stay
    ("SELECT 1 WHERE m.a IS NOT m.b AND c IS NOT NULL AND d IS NULL AND e IS ?",
     "SELECT 1 WHERE m.a IS DISTINCT FROM m.b AND c IS NOT NULL AND d IS NULL "
     "AND e IS NOT DISTINCT FROM %s"),
    ("SELECT a IS TRUE, b IS NOT FALSE, c IS DISTINCT FROM d, e IS NOT (f)",
     "SELECT a IS TRUE, b IS NOT FALSE, c IS DISTINCT FROM d, e IS DISTINCT FROM (f)"),
])
def test_translate(sql: str, expected: str) -> None:
    assert translate(sql) == expected


@pytest.mark.parametrize(("sql", "why"), [
    ("PRAGMA user_version", "PRAGMA"),
    ("  pragma foreign_keys = ON", "PRAGMA"),
    ("SELECT * FROM events WHERE type GLOB ?", "GLOB"),
    ("SELECT 1 WHERE a = ? COLLATE NOCASE", "NOCASE"),
    ("INSERT OR REPLACE INTO t (a) VALUES (?)", "conflict target"),
    ("REPLACE INTO t (a) VALUES (?)", "conflict target"),
    ("SELECT * FROM t WHERE a = ?1", "numbered"),
    ("SELECT * FROM t WHERE a = ? AND b = :b", "mixes"),
    ("SELECT json_extract(raw, '$.a[0]') FROM t", "path"),
    ("SELECT json_extract(raw, '$') FROM t", "path"),
    ("SELECT json_extract(raw) FROM t", "json_extract"),
    ("SELECT max(a, b FROM t", "unbalanced"),
    ("SELECT 'open FROM t", "unterminated"),
])
def test_translate_refuses(sql: str, why: str) -> None:
    with pytest.raises(TranslationError, match=why):
        translate(sql)


def test_glob_regex() -> None:
    assert glob_regex("recording.*") == r"^recording\..*$"
    assert glob_regex("*") == "^.*$"
    assert glob_regex("a?c") == "^a.c$"
    assert glob_regex("[!t]*") == "^[^t].*$"
    assert glob_regex("[ab]x") == "^[ab]x$"
    assert glob_regex("a+b(c)") == r"^a\+b\(c\)$"
    for pattern, text, hit in [("recording.*", "recording.created", True),
                               ("recording.*", "recordingXcreated", False),
                               ("*.failed", "transcription.failed", True),
                               ("[!r]*", "recording.created", False),
                               ("[!r]*", "summary.completed", True)]:
        assert bool(re.search(glob_regex(pattern), text)) is hit, (pattern, text)


def test_glob_condition_per_dialect() -> None:
    assert glob_condition("sqlite", "type", "[!r]*") == ("type GLOB ?", "[^r]*")
    assert glob_condition("postgres", "e.type", "a*") == ("e.type ~ ?", "^a.*$")


def test_dialect_of_a_connection() -> None:
    class Pg:
        dialect = "postgres"

    assert dialect_of(object()) == "sqlite"
    assert dialect_of(Pg()) == "postgres"


def test_postgres_steps_keep_the_numbering() -> None:
    """One schema step number for both dialects; the PostgreSQL schema names every table
    SQLite's has (the FTS table is an index there)."""
    assert len(migrations.PG_STEPS) == len(migrations.STEPS) == migrations.LATEST
    sqlite_tables = {t for t in re.findall(r"CREATE (?:VIRTUAL )?TABLE (\w+)",
                                           "".join(migrations.STEPS))
                     if not re.search(r"_\d+$", t)}
    pg_tables = set(re.findall(r"CREATE TABLE (\w+)", "".join(migrations.PG_STEPS)))
    pg_indexes = set(re.findall(r"CREATE INDEX (\w+)", "".join(migrations.PG_STEPS)))
    assert sqlite_tables - pg_tables == {"transcript_fts"}
    assert "transcript_fts" in pg_indexes
