"""Numbered schema steps, applied at start; `PRAGMA user_version` says which ran.

The tables and columns are a public contract: people query them directly. A step
is never edited once released; a change is a new step (and a note in the README).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
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
    # 6: many Bota projects in one database. `project` (the `[[projects]]` name; `default`
    # for `[api]` alone) joins the key of every table that holds API data; the rows stored
    # so far are the project `default`'s. SQLite changes a key by rebuilding the table:
    # each is copied whole (the segments keep their ids, so the FTS index stays valid),
    # with foreign keys off for the step and checked before it commits.
    """
    CREATE TABLE recordings_6 (
        project          TEXT NOT NULL DEFAULT 'default',
        id               TEXT NOT NULL,
        device_id        TEXT,
        end_user_id      TEXT,
        name             TEXT,
        status           TEXT NOT NULL,
        duration_ms      INTEGER,
        started_at       TEXT,
        ended_at         TEXT,
        transcription_id TEXT,
        metadata         TEXT,
        created_at       TEXT,
        raw              TEXT NOT NULL,
        fingerprint      TEXT,
        first_seen_at    TEXT NOT NULL,
        synced_at        TEXT NOT NULL,
        deleted_at       TEXT,
        recorded_at      TEXT,
        updated_at       TEXT,
        source           TEXT,
        project_id       TEXT,
        file_size_bytes  INTEGER,
        content_sha256   TEXT,
        PRIMARY KEY (project, id)
    );
    INSERT INTO recordings_6 (id, device_id, end_user_id, name, status, duration_ms,
        started_at, ended_at, transcription_id, metadata, created_at, raw, fingerprint,
        first_seen_at, synced_at, deleted_at, recorded_at, updated_at, source, project_id,
        file_size_bytes, content_sha256)
    SELECT id, device_id, end_user_id, name, status, duration_ms, started_at, ended_at,
        transcription_id, metadata, created_at, raw, fingerprint, first_seen_at, synced_at,
        deleted_at, recorded_at, updated_at, source, project_id, file_size_bytes,
        content_sha256
    FROM recordings;
    DROP TABLE recordings;
    ALTER TABLE recordings_6 RENAME TO recordings;
    CREATE INDEX recordings_status ON recordings(project, status);
    CREATE INDEX recordings_device_id ON recordings(device_id);
    CREATE INDEX recordings_end_user_id ON recordings(end_user_id);
    CREATE INDEX recordings_created_at ON recordings(project, created_at);
    CREATE INDEX recordings_updated_at ON recordings(updated_at);

    CREATE TABLE media_6 (
        project          TEXT NOT NULL DEFAULT 'default',
        id               TEXT NOT NULL,
        recording_id     TEXT NOT NULL,
        position         INTEGER NOT NULL,
        type             TEXT,
        mime_type        TEXT,
        file_size_bytes  INTEGER,
        status           TEXT,
        captured_at      TEXT,
        created_at       TEXT,
        raw              TEXT NOT NULL,
        local_path       TEXT,
        local_size_bytes INTEGER,
        sha256           TEXT,
        downloaded_at    TEXT,
        download_attempts INTEGER NOT NULL DEFAULT 0,
        download_error   TEXT,
        download_next_at TEXT,
        PRIMARY KEY (project, id),
        FOREIGN KEY (project, recording_id) REFERENCES recordings(project, id) ON DELETE CASCADE
    );
    INSERT INTO media_6 (id, recording_id, position, type, mime_type, file_size_bytes,
        status, captured_at, created_at, raw, local_path, local_size_bytes, sha256,
        downloaded_at, download_attempts, download_error, download_next_at)
    SELECT id, recording_id, position, type, mime_type, file_size_bytes, status,
        captured_at, created_at, raw, local_path, local_size_bytes, sha256, downloaded_at,
        download_attempts, download_error, download_next_at
    FROM media;
    DROP TABLE media;
    ALTER TABLE media_6 RENAME TO media;
    CREATE INDEX media_recording_id ON media(project, recording_id);
    CREATE INDEX media_downloaded_at ON media(downloaded_at);

    CREATE TABLE transcriptions_6 (
        project          TEXT NOT NULL DEFAULT 'default',
        id               TEXT NOT NULL,
        recording_id     TEXT NOT NULL,
        status           TEXT NOT NULL,
        language         TEXT,
        provider         TEXT,
        text             TEXT,
        word_count       INTEGER,
        error            TEXT,
        created_at       TEXT,
        updated_at       TEXT,
        completed_at     TEXT,
        raw              TEXT NOT NULL,
        fetched_at       TEXT NOT NULL,
        PRIMARY KEY (project, id),
        FOREIGN KEY (project, recording_id) REFERENCES recordings(project, id)
    );
    INSERT INTO transcriptions_6 (id, recording_id, status, language, provider, text,
        word_count, error, created_at, updated_at, completed_at, raw, fetched_at)
    SELECT id, recording_id, status, language, provider, text, word_count, error,
        created_at, updated_at, completed_at, raw, fetched_at
    FROM transcriptions;
    DROP TABLE transcriptions;
    ALTER TABLE transcriptions_6 RENAME TO transcriptions;
    CREATE INDEX transcriptions_recording_id ON transcriptions(project, recording_id);
    CREATE INDEX transcriptions_status ON transcriptions(status);

    CREATE TABLE transcript_segments_6 (
        id               INTEGER PRIMARY KEY,
        project          TEXT NOT NULL DEFAULT 'default',
        transcription_id TEXT NOT NULL,
        position         INTEGER NOT NULL,
        start_s          REAL,
        end_s            REAL,
        speaker          TEXT,
        text             TEXT NOT NULL,
        confidence       REAL,
        UNIQUE (project, transcription_id, position),
        FOREIGN KEY (project, transcription_id) REFERENCES transcriptions(project, id)
    );
    INSERT INTO transcript_segments_6 (id, transcription_id, position, start_s, end_s,
        speaker, text, confidence)
    SELECT id, transcription_id, position, start_s, end_s, speaker, text, confidence
    FROM transcript_segments;
    DROP TABLE transcript_segments;
    ALTER TABLE transcript_segments_6 RENAME TO transcript_segments;

    CREATE TABLE summaries_6 (
        project          TEXT NOT NULL DEFAULT 'default',
        id               TEXT NOT NULL,
        transcription_id TEXT NOT NULL,
        recording_id     TEXT NOT NULL,
        status           TEXT NOT NULL,
        template_id      TEXT,
        custom_prompt    TEXT,
        provider         TEXT,
        output           TEXT,
        error            TEXT,
        created_at       TEXT,
        updated_at       TEXT,
        started_at       TEXT,
        completed_at     TEXT,
        raw              TEXT NOT NULL,
        fetched_at       TEXT NOT NULL,
        PRIMARY KEY (project, id),
        FOREIGN KEY (project, recording_id) REFERENCES recordings(project, id)
    );
    INSERT INTO summaries_6 (id, transcription_id, recording_id, status, template_id,
        custom_prompt, provider, output, error, created_at, updated_at, started_at,
        completed_at, raw, fetched_at)
    SELECT id, transcription_id, recording_id, status, template_id, custom_prompt, provider,
        output, error, created_at, updated_at, started_at, completed_at, raw, fetched_at
    FROM summaries;
    DROP TABLE summaries;
    ALTER TABLE summaries_6 RENAME TO summaries;
    CREATE INDEX summaries_transcription_id ON summaries(project, transcription_id);
    CREATE INDEX summaries_recording_id ON summaries(project, recording_id);

    CREATE TABLE transcript_queue_6 (
        project          TEXT NOT NULL DEFAULT 'default',
        recording_id     TEXT NOT NULL,
        reason           TEXT NOT NULL,
        queued_at        TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        last_error       TEXT,
        next_attempt_at  TEXT,
        PRIMARY KEY (project, recording_id),
        FOREIGN KEY (project, recording_id) REFERENCES recordings(project, id)
    );
    INSERT INTO transcript_queue_6 (recording_id, reason, queued_at, attempts, last_error,
        next_attempt_at)
    SELECT recording_id, reason, queued_at, attempts, last_error, next_attempt_at
    FROM transcript_queue;
    DROP TABLE transcript_queue;
    ALTER TABLE transcript_queue_6 RENAME TO transcript_queue;
    CREATE INDEX transcript_queue_next ON transcript_queue(project, next_attempt_at);

    CREATE TABLE state_6 (                 -- project '': the service's own rows
        project          TEXT NOT NULL DEFAULT 'default',
        key              TEXT NOT NULL,
        value            TEXT NOT NULL,
        PRIMARY KEY (project, key)
    );
    -- the daemon's own rows and the demo's mark belong to the service, not a project
    INSERT INTO state_6 (project, key, value)
    SELECT CASE WHEN key IN ('daemon', 'demo_database') THEN '' ELSE 'default' END, key, value
    FROM state;
    DROP TABLE state;
    ALTER TABLE state_6 RENAME TO state;

    ALTER TABLE events ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX events_project ON events(project, seq);
    ALTER TABLE sync_runs ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX sync_runs_project ON sync_runs(project, kind, id);
    """,
    # 7: several workers on one PostgreSQL database: who holds which Bota project and
    # which handler's lane (a lease), and who is alive (a heartbeat). SQLite keeps the
    # tables empty (one daemon per file), so the numbering and the contract stay one.
    """
    CREATE TABLE leases (
        name             TEXT PRIMARY KEY, -- project:<name> | handler:<name>
        holder           TEXT,             -- a workers.id; NULL: free
        acquired_at      TEXT,
        renewed_at       TEXT,
        expires_at       TEXT              -- free for the taking from then on
    );
    CREATE TABLE workers (
        id               TEXT PRIMARY KEY, -- <host>:<pid>:<random>
        host             TEXT NOT NULL,
        pid              INTEGER NOT NULL,
        started_at       TEXT NOT NULL,
        seen_at          TEXT NOT NULL,
        expires_at       TEXT NOT NULL     -- dead from then on, unless seen again
    );
    """,
)

# The same schema on PostgreSQL, by the same numbers. Steps 1 to 5 are empty there: a
# PostgreSQL store starts at botasync's schema 6, created whole by step 6 (the numbering
# stays one, so a step 7 is written for both). What differs from SQLite's types: `raw`,
# `metadata` and `payload` are JSONB (read back as text, with PostgreSQL's key order and
# spacing); integers are BIGINT (SQLite's INTEGER is 64-bit), reals DOUBLE PRECISION;
# `events.seq`, `sync_runs.id` and `transcript_segments.id` are identity columns;
# timestamps stay ISO 8601 TEXT, compared as SQLite compares them. `transcript_fts` is not
# a table but a GIN index on the segments' text (`simple` configuration), kept in step by
# PostgreSQL itself. `schema_version` stands for `PRAGMA user_version`.
PG_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    id               INTEGER PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    version          INTEGER NOT NULL
)
"""

PG_STEPS: tuple[str, ...] = (
    "", "", "", "", "",
    # 6: everything, `project` in every key
    """
    CREATE TABLE recordings (
        project          TEXT NOT NULL DEFAULT 'default',
        id               TEXT NOT NULL,
        device_id        TEXT,
        end_user_id      TEXT,
        name             TEXT,
        status           TEXT NOT NULL,
        duration_ms      BIGINT,
        started_at       TEXT,
        ended_at         TEXT,
        transcription_id TEXT,
        metadata         JSONB,
        created_at       TEXT,
        raw              JSONB NOT NULL,
        fingerprint      TEXT,
        first_seen_at    TEXT NOT NULL,
        synced_at        TEXT NOT NULL,
        deleted_at       TEXT,
        recorded_at      TEXT,
        updated_at       TEXT,
        source           TEXT,
        project_id       TEXT,
        file_size_bytes  BIGINT,
        content_sha256   TEXT,
        PRIMARY KEY (project, id)
    );
    CREATE INDEX recordings_status ON recordings(project, status);
    CREATE INDEX recordings_device_id ON recordings(device_id);
    CREATE INDEX recordings_end_user_id ON recordings(end_user_id);
    -- NULLS FIRST: SQLite's order, so `created_at DESC NULLS LAST` reads it backwards
    CREATE INDEX recordings_created_at ON recordings(project, created_at NULLS FIRST);
    CREATE INDEX recordings_updated_at ON recordings(updated_at);

    CREATE TABLE media (
        project          TEXT NOT NULL DEFAULT 'default',
        id               TEXT NOT NULL,
        recording_id     TEXT NOT NULL,
        position         BIGINT NOT NULL,
        type             TEXT,
        mime_type        TEXT,
        file_size_bytes  BIGINT,
        status           TEXT,
        captured_at      TEXT,
        created_at       TEXT,
        raw              JSONB NOT NULL,
        local_path       TEXT,
        local_size_bytes BIGINT,
        sha256           TEXT,
        downloaded_at    TEXT,
        download_attempts BIGINT NOT NULL DEFAULT 0,
        download_error   TEXT,
        download_next_at TEXT,
        PRIMARY KEY (project, id),
        FOREIGN KEY (project, recording_id) REFERENCES recordings(project, id) ON DELETE CASCADE
    );
    CREATE INDEX media_recording_id ON media(project, recording_id);
    CREATE INDEX media_downloaded_at ON media(downloaded_at);

    CREATE TABLE events (
        seq              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        id               TEXT NOT NULL UNIQUE,
        type             TEXT NOT NULL,
        recording_id     TEXT,
        created_at       TEXT NOT NULL,
        payload          JSONB NOT NULL,
        backfill         BIGINT NOT NULL DEFAULT 0,
        project          TEXT NOT NULL DEFAULT 'default'
    );
    CREATE INDEX events_type ON events(type);
    CREATE INDEX events_recording_id ON events(recording_id);
    CREATE INDEX events_created_at ON events(created_at);
    CREATE INDEX events_project ON events(project, seq);

    CREATE TABLE handler_cursors (
        handler          TEXT PRIMARY KEY,
        seq              BIGINT NOT NULL
    );

    CREATE TABLE deliveries (
        handler          TEXT NOT NULL,
        event_seq        BIGINT NOT NULL REFERENCES events(seq),
        state            TEXT NOT NULL,
        attempts         BIGINT NOT NULL DEFAULT 0,
        last_error       TEXT,
        last_attempt_at  TEXT,
        next_attempt_at  TEXT,
        delivered_at     TEXT,
        PRIMARY KEY (handler, event_seq)
    );
    CREATE INDEX deliveries_state ON deliveries(state);
    CREATE INDEX deliveries_event_seq ON deliveries(event_seq);

    CREATE TABLE sync_runs (
        id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        kind             TEXT NOT NULL,
        started_at       TEXT NOT NULL,
        ended_at         TEXT,
        pages            BIGINT NOT NULL DEFAULT 0,
        requests         BIGINT NOT NULL DEFAULT 0,
        seen             BIGINT NOT NULL DEFAULT 0,
        created          BIGINT NOT NULL DEFAULT 0,
        updated          BIGINT NOT NULL DEFAULT 0,
        unchanged        BIGINT NOT NULL DEFAULT 0,
        invalid          BIGINT NOT NULL DEFAULT 0,
        deleted          BIGINT NOT NULL DEFAULT 0,
        events           BIGINT NOT NULL DEFAULT 0,
        position         BIGINT,
        complete         BIGINT NOT NULL DEFAULT 0,
        error            TEXT,
        cursor           TEXT,
        project          TEXT NOT NULL DEFAULT 'default'
    );
    CREATE INDEX sync_runs_kind ON sync_runs(kind, id);
    CREATE INDEX sync_runs_project ON sync_runs(project, kind, id);

    CREATE TABLE state (
        project          TEXT NOT NULL DEFAULT 'default',
        key              TEXT NOT NULL,
        value            TEXT NOT NULL,
        PRIMARY KEY (project, key)
    );

    CREATE TABLE transcriptions (
        project          TEXT NOT NULL DEFAULT 'default',
        id               TEXT NOT NULL,
        recording_id     TEXT NOT NULL,
        status           TEXT NOT NULL,
        language         TEXT,
        provider         TEXT,
        text             TEXT,
        word_count       BIGINT,
        error            TEXT,
        created_at       TEXT,
        updated_at       TEXT,
        completed_at     TEXT,
        raw              JSONB NOT NULL,
        fetched_at       TEXT NOT NULL,
        PRIMARY KEY (project, id),
        FOREIGN KEY (project, recording_id) REFERENCES recordings(project, id)
    );
    CREATE INDEX transcriptions_recording_id ON transcriptions(project, recording_id);
    CREATE INDEX transcriptions_status ON transcriptions(status);

    CREATE TABLE transcript_segments (
        id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        project          TEXT NOT NULL DEFAULT 'default',
        transcription_id TEXT NOT NULL,
        position         BIGINT NOT NULL,
        start_s          DOUBLE PRECISION,
        end_s            DOUBLE PRECISION,
        speaker          TEXT,
        text             TEXT NOT NULL,
        confidence       DOUBLE PRECISION,
        UNIQUE (project, transcription_id, position),
        FOREIGN KEY (project, transcription_id) REFERENCES transcriptions(project, id)
    );
    CREATE INDEX transcript_fts ON transcript_segments
        USING GIN (to_tsvector('simple'::regconfig, text));

    CREATE TABLE summaries (
        project          TEXT NOT NULL DEFAULT 'default',
        id               TEXT NOT NULL,
        transcription_id TEXT NOT NULL,
        recording_id     TEXT NOT NULL,
        status           TEXT NOT NULL,
        template_id      TEXT,
        custom_prompt    TEXT,
        provider         TEXT,
        output           TEXT,
        error            TEXT,
        created_at       TEXT,
        updated_at       TEXT,
        started_at       TEXT,
        completed_at     TEXT,
        raw              JSONB NOT NULL,
        fetched_at       TEXT NOT NULL,
        PRIMARY KEY (project, id),
        FOREIGN KEY (project, recording_id) REFERENCES recordings(project, id)
    );
    CREATE INDEX summaries_transcription_id ON summaries(project, transcription_id);
    CREATE INDEX summaries_recording_id ON summaries(project, recording_id);

    CREATE TABLE transcript_queue (
        project          TEXT NOT NULL DEFAULT 'default',
        recording_id     TEXT NOT NULL,
        reason           TEXT NOT NULL,
        queued_at        TEXT NOT NULL,
        attempts         BIGINT NOT NULL DEFAULT 0,
        last_error       TEXT,
        next_attempt_at  TEXT,
        PRIMARY KEY (project, recording_id),
        FOREIGN KEY (project, recording_id) REFERENCES recordings(project, id)
    );
    CREATE INDEX transcript_queue_next ON transcript_queue(project, next_attempt_at);
    """,
    # 7: leases and workers (see STEPS): BIGINT for the pid, the rest as on SQLite
    """
    CREATE TABLE leases (
        name             TEXT PRIMARY KEY,
        holder           TEXT,
        acquired_at      TEXT,
        renewed_at       TEXT,
        expires_at       TEXT
    );
    CREATE TABLE workers (
        id               TEXT PRIMARY KEY,
        host             TEXT NOT NULL,
        pid              BIGINT NOT NULL,
        started_at       TEXT NOT NULL,
        seen_at          TEXT NOT NULL,
        expires_at       TEXT NOT NULL
    );
    """,
)

LATEST = len(STEPS)
assert len(PG_STEPS) == LATEST, "a schema step is written for both dialects"


def pending_steps(current: int, steps: tuple[str, ...] = STEPS) -> list[tuple[int, str]]:
    """The steps still to run from version `current`; refuse a newer database."""
    if current > LATEST:
        raise MigrationError(
            f"database schema version {current} is newer than this botasync knows ({LATEST}); "
            "upgrade botasync"
        )
    return [(n, steps[n - 1]) for n in range(current + 1, LATEST + 1)]


async def current_version(conn: Any) -> int:
    """The schema version of an open aiosqlite connection's database."""
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0])


async def apply(conn: Any) -> int:
    """Bring an aiosqlite connection to `LATEST`, each step committed with its number.

    Foreign keys are off while the steps run (a step that rebuilds a table drops the old
    one, which must not cascade to its children) and checked before each commit.
    """
    steps = pending_steps(await current_version(conn))
    if not steps:
        return LATEST
    async with conn.execute("PRAGMA foreign_keys") as cur:
        enforced = (await cur.fetchone())[0]
    await conn.execute("PRAGMA foreign_keys = OFF")  # a no-op inside a transaction: first
    try:
        for number, sql in steps:
            await _apply_step(conn, number, sql)
    finally:
        await conn.execute(f"PRAGMA foreign_keys = {'ON' if enforced else 'OFF'}")
    return LATEST


async def _apply_step(conn: Any, number: int, sql: str) -> None:
    # The step in one call, so one trip to the connection's thread instead of one per
    # statement (they made most of the 100 ms a new database took). executescript commits
    # what is pending, then runs the script as written: the script opens the transaction
    # itself, so a crash still leaves the step all or nothing.
    try:
        await conn.executescript(f"BEGIN IMMEDIATE;\n{sql}")
        async with conn.execute("PRAGMA foreign_key_check") as cur:
            broken = await cur.fetchall()
        if broken:
            raise MigrationError(
                f"schema step {number} would leave {len(broken)} rows whose parent is missing "
                f"(first: {broken[0][0]} row {broken[0][1]} -> {broken[0][2]}); nothing was "
                "changed")
        await conn.execute(f"PRAGMA user_version = {number}")
        await conn.commit()
    except BaseException:
        await conn.rollback()
        raise


def _statements(sql: str) -> list[str]:
    """Split a step into statements: drop `--` comments, then split on `;`.

    The steps hold no `;` or `--` inside string literals or triggers.
    """
    text = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [stmt.strip() for stmt in text.split(";") if stmt.strip()]


# --- PostgreSQL ----------------------------------------------------------------------------


async def pg_current_version(conn: Any) -> int:
    """The schema version of a PostgreSQL database (0: no botasync schema yet)."""
    async with conn.execute("SELECT to_regclass('schema_version') IS NOT NULL") as cur:
        row = await cur.fetchone()
    if not row[0]:
        return 0
    async with conn.execute("SELECT version FROM schema_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def apply_pg(transaction: Callable[[], AbstractAsyncContextManager[Any]]) -> int:
    """Bring a PostgreSQL database to `LATEST`: each step in a write transaction of its own
    (`transaction`: the store's, which holds the writers' lock, so two processes starting
    at once apply a step once), committed with its number."""
    async with transaction() as conn:
        current = await pg_current_version(conn)
    steps = pending_steps(current, PG_STEPS)
    for number, sql in steps:
        async with transaction() as conn:
            if await pg_current_version(conn) >= number:  # another process was first
                continue
            await conn.execute(PG_SCHEMA_VERSION)
            for stmt in _statements(sql):
                await conn.execute(stmt)
            await conn.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version", (number,))
    return LATEST
