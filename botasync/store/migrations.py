"""Numbered schema steps, applied at start; `PRAGMA user_version` says which ran.

The tables and columns are a public contract: people query them directly. A step
is never edited once released; a change is a new step (and a note in the README).
"""

from __future__ import annotations

from typing import Any

from botasync.errors import MigrationError

STEPS: tuple[str, ...] = (
    # 1: the mirror, the outbox and the pass log
    """
    CREATE TABLE recordings (
        id               TEXT PRIMARY KEY,
        device_id        TEXT,
        end_user_id      TEXT,
        name             TEXT,
        status           TEXT NOT NULL,
        duration_ms      INTEGER,
        started_at       TEXT,
        ended_at         TEXT,
        transcription_id TEXT,
        metadata         TEXT,            -- JSON text, or NULL
        created_at       TEXT,
        raw              TEXT NOT NULL,   -- the JSON as received, unknown fields kept
        fingerprint      TEXT,            -- of the list item, see sync/fingerprint.py
        first_seen_at    TEXT NOT NULL,
        synced_at        TEXT NOT NULL,
        deleted_at       TEXT             -- tombstone: confirmed gone remotely
    );
    CREATE INDEX recordings_status ON recordings(status);
    CREATE INDEX recordings_device_id ON recordings(device_id);
    CREATE INDEX recordings_end_user_id ON recordings(end_user_id);
    CREATE INDEX recordings_created_at ON recordings(created_at);

    CREATE TABLE media (
        id               TEXT PRIMARY KEY,
        recording_id     TEXT NOT NULL REFERENCES recordings(id) ON DELETE CASCADE,
        position         INTEGER NOT NULL, -- order within the recording's media list
        type             TEXT,
        mime_type        TEXT,
        file_size_bytes  INTEGER,
        status           TEXT,
        captured_at      TEXT,
        created_at       TEXT,
        raw              TEXT NOT NULL
    );
    CREATE INDEX media_recording_id ON media(recording_id);

    CREATE TABLE events (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        id               TEXT NOT NULL UNIQUE,
        type             TEXT NOT NULL,
        recording_id     TEXT,
        created_at       TEXT NOT NULL,
        payload          TEXT NOT NULL,    -- the JSON envelope, exactly as delivered
        backfill         INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX events_type ON events(type);
    CREATE INDEX events_recording_id ON events(recording_id);

    CREATE TABLE handler_cursors (
        handler          TEXT PRIMARY KEY,
        seq              INTEGER NOT NULL  -- every event up to here is settled
    );

    CREATE TABLE deliveries (
        handler          TEXT NOT NULL,
        event_seq        INTEGER NOT NULL REFERENCES events(seq),
        state            TEXT NOT NULL,    -- pending | delivered | dead
        attempts         INTEGER NOT NULL DEFAULT 0,
        last_error       TEXT,
        last_attempt_at  TEXT,
        next_attempt_at  TEXT,
        delivered_at     TEXT,
        PRIMARY KEY (handler, event_seq)
    );
    CREATE INDEX deliveries_state ON deliveries(state);

    CREATE TABLE sync_runs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        kind             TEXT NOT NULL,    -- full | reconcile | head | hot
        started_at       TEXT NOT NULL,
        ended_at         TEXT,
        pages            INTEGER NOT NULL DEFAULT 0,
        requests         INTEGER NOT NULL DEFAULT 0,
        seen             INTEGER NOT NULL DEFAULT 0,
        created          INTEGER NOT NULL DEFAULT 0,
        updated          INTEGER NOT NULL DEFAULT 0,
        unchanged        INTEGER NOT NULL DEFAULT 0,
        invalid          INTEGER NOT NULL DEFAULT 0,
        deleted          INTEGER NOT NULL DEFAULT 0,
        events           INTEGER NOT NULL DEFAULT 0,
        position         INTEGER,          -- checkpoint: the walk's next offset
        complete         INTEGER NOT NULL DEFAULT 0,
        error            TEXT
    );
    CREATE INDEX sync_runs_kind ON sync_runs(kind, id);

    CREATE TABLE state (
        key              TEXT PRIMARY KEY,
        value            TEXT NOT NULL
    );
    """,
    # 2: media files mirrored to disk (`[media] download = true`), and their queue
    """
    ALTER TABLE media ADD COLUMN local_path TEXT;        -- absolute path of the verified file
    ALTER TABLE media ADD COLUMN local_size_bytes INTEGER;
    ALTER TABLE media ADD COLUMN sha256 TEXT;            -- hex digest of the file on disk
    ALTER TABLE media ADD COLUMN downloaded_at TEXT;
    ALTER TABLE media ADD COLUMN download_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE media ADD COLUMN download_error TEXT;    -- the last failure, NULL once it lands
    ALTER TABLE media ADD COLUMN download_next_at TEXT;  -- not before; NULL with an error: gave up
    CREATE INDEX media_downloaded_at ON media(downloaded_at);
    """,
    # 3: outbox retention: events by time (also for people asking "since when"), and
    # deliveries by event, without which every event deleted scans the deliveries (the
    # foreign key's check as much as the delete itself)
    """
    CREATE INDEX events_created_at ON events(created_at);
    CREATE INDEX deliveries_event_seq ON deliveries(event_seq);
    """,
    # 4: the deployed dialect (bota-api.md, last section): its own recording fields as
    # columns, filled from the rows already stored; a walk's checkpoint by cursor
    """
    ALTER TABLE recordings ADD COLUMN recorded_at TEXT;
    ALTER TABLE recordings ADD COLUMN updated_at TEXT;
    ALTER TABLE recordings ADD COLUMN source TEXT;
    ALTER TABLE recordings ADD COLUMN project_id TEXT;
    ALTER TABLE recordings ADD COLUMN file_size_bytes INTEGER;
    ALTER TABLE recordings ADD COLUMN content_sha256 TEXT;
    UPDATE recordings SET
        updated_at = json_extract(raw, '$.updated_at'),
        source = json_extract(raw, '$.source'),
        project_id = json_extract(raw, '$.project_id'),
        content_sha256 = json_extract(raw, '$.content_sha256'),
        file_size_bytes = CAST(json_extract(raw, '$.file_size_bytes') AS INTEGER),
        duration_ms = coalesce(duration_ms,
            CAST(json_extract(raw, '$.duration_seconds') AS REAL) * 1000)
        WHERE json_type(raw, '$.media') IS NULL;
    CREATE INDEX recordings_updated_at ON recordings(updated_at);
    ALTER TABLE sync_runs ADD COLUMN cursor TEXT;
    """,
    # 5: transcripts and summaries, their fetch queue, and full-text search. The FTS5
    # index has the segments table as its external content and is kept in step by the
    # code that writes the segments, in the same transaction (no triggers: under
    # INSERT OR REPLACE they go stale or bloat the index)
    """
    CREATE TABLE transcriptions (
        id               TEXT PRIMARY KEY,   -- txn_*
        recording_id     TEXT NOT NULL REFERENCES recordings(id),
        status           TEXT NOT NULL,      -- pending | processing | completed | failed | ...
        language         TEXT,
        provider         TEXT,
        text             TEXT,               -- `text` (documented) or `full_text` (deployed)
        word_count       INTEGER,
        error            TEXT,               -- the API's error, as text
        created_at       TEXT,
        updated_at       TEXT,
        completed_at     TEXT,
        raw              TEXT NOT NULL,      -- the JSON as received
        fetched_at       TEXT NOT NULL
    );
    CREATE INDEX transcriptions_recording_id ON transcriptions(recording_id);
    CREATE INDEX transcriptions_status ON transcriptions(status);

    CREATE TABLE transcript_segments (
        id               INTEGER PRIMARY KEY, -- the FTS rowid (VACUUM keeps an explicit one)
        transcription_id TEXT NOT NULL REFERENCES transcriptions(id),
        position         INTEGER NOT NULL,    -- order within the transcription
        start_s          REAL,
        end_s            REAL,
        speaker          TEXT,
        text             TEXT NOT NULL,
        confidence       REAL,
        UNIQUE (transcription_id, position)
    );

    CREATE VIRTUAL TABLE transcript_fts USING fts5(
        text, speaker, content='transcript_segments', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2'
    );

    CREATE TABLE summaries (
        id               TEXT PRIMARY KEY,   -- sum_*
        transcription_id TEXT NOT NULL,
        recording_id     TEXT NOT NULL REFERENCES recordings(id),
        status           TEXT NOT NULL,
        template_id      TEXT,
        custom_prompt    TEXT,
        provider         TEXT,
        output           TEXT,               -- JSON text, or NULL
        error            TEXT,
        created_at       TEXT,
        updated_at       TEXT,
        started_at       TEXT,
        completed_at     TEXT,
        raw              TEXT NOT NULL,
        fetched_at       TEXT NOT NULL
    );
    CREATE INDEX summaries_transcription_id ON summaries(transcription_id);
    CREATE INDEX summaries_recording_id ON summaries(recording_id);

    CREATE TABLE transcript_queue (
        recording_id     TEXT PRIMARY KEY REFERENCES recordings(id),
        reason           TEXT NOT NULL,      -- transcription_id | finished | backfill | refresh
        queued_at        TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        last_error       TEXT,
        next_attempt_at  TEXT                -- not before; NULL: as soon as the budget allows
    );
    CREATE INDEX transcript_queue_next ON transcript_queue(next_attempt_at);
    """,
)

LATEST = len(STEPS)


def pending_steps(current: int) -> list[tuple[int, str]]:
    """The steps still to run from version `current`; refuse a newer database."""
    if current > LATEST:
        raise MigrationError(
            f"database schema version {current} is newer than this botasync knows ({LATEST}); "
            "upgrade botasync"
        )
    return [(n, STEPS[n - 1]) for n in range(current + 1, LATEST + 1)]


async def current_version(conn: Any) -> int:
    """The schema version of an open aiosqlite connection's database."""
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0])


async def apply(conn: Any) -> int:
    """Bring an aiosqlite connection to `LATEST`, each step committed with its number."""
    for number, sql in pending_steps(await current_version(conn)):
        # executescript would COMMIT first and run outside our transaction: run the
        # statements one by one inside BEGIN so a crash leaves the step all or nothing.
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _statements(sql):
                await conn.execute(stmt)
            await conn.execute(f"PRAGMA user_version = {number}")
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
    return LATEST


def _statements(sql: str) -> list[str]:
    """Split a step into statements: drop `--` comments, then split on `;`.

    The steps hold no `;` or `--` inside string literals or triggers.
    """
    text = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [stmt.strip() for stmt in text.split(";") if stmt.strip()]
