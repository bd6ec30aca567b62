"""Writing what the queue fetched: transcriptions, segments, the FTS index, summaries, events.

One recording's fetch is written in ONE transaction with its events and its queue row,
so a crash leaves either all of it or none. On SQLite the FTS5 index (`transcript_fts`, external
content = `transcript_segments`) is kept in step here, by hand, in that transaction:
a transcription's old segments are first removed from the index with the FTS 'delete'
command and their old values, then deleted; new segments are inserted, then indexed
under their ids (on PostgreSQL `transcript_fts` is an index of the segments' own text,
which PostgreSQL keeps in step). A transcription whose stored JSON is what the API sends now is not
written again.

Replacement: a stored transcription of the recording that the API no longer shows (the
list holds a new id, or the recording names a new `transcription_id`) is replaced. It
stays, and stays searchable, while its replacement is still pending or processing; it is
removed with its segments, index entries and summaries in the transaction that stores its
replacement in a terminal status, whose event names it (`previous.id`). A tombstoned
recording keeps its transcripts: nothing here runs for it.

Everything is one project's (`project`): the transcriptions, segments and summaries
written carry it, every read and delete is scoped by it, and the events name it. The
FTS index is one over every project's segments (its rowid is the segment's id, unique
across projects), so a search reads the project from the segment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botasync import envelope as ev
from botasync.api.transcription import SegmentRow, Summary, Transcription
from botasync.envelope import DEFAULT_PROJECT, Event
from botasync.jsoncodec import canonical, dumps, loads
from botasync.store.dialect import SQLITE, dialect_of
from botasync.store.sqlite import insert_events

_UPSERT_TRANSCRIPTION = """
INSERT INTO transcriptions (project, id, recording_id, status, language, provider, text,
    word_count, error, created_at, updated_at, completed_at, raw, fetched_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(project, id) DO UPDATE SET
    recording_id = excluded.recording_id, status = excluded.status,
    language = excluded.language, provider = excluded.provider, text = excluded.text,
    word_count = excluded.word_count, error = excluded.error,
    created_at = excluded.created_at, updated_at = excluded.updated_at,
    completed_at = excluded.completed_at, raw = excluded.raw, fetched_at = excluded.fetched_at
"""

_INSERT_SEGMENT = """
INSERT INTO transcript_segments (project, transcription_id, position, start_s, end_s,
    speaker, text, confidence)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""

_UPSERT_SUMMARY = """
INSERT INTO summaries (project, id, transcription_id, recording_id, status, template_id,
    custom_prompt, provider, output, error, created_at, updated_at, started_at, completed_at,
    raw, fetched_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(project, id) DO UPDATE SET
    transcription_id = excluded.transcription_id, recording_id = excluded.recording_id,
    status = excluded.status, template_id = excluded.template_id,
    custom_prompt = excluded.custom_prompt, provider = excluded.provider,
    output = excluded.output, error = excluded.error, created_at = excluded.created_at,
    updated_at = excluded.updated_at, started_at = excluded.started_at,
    completed_at = excluded.completed_at, raw = excluded.raw, fetched_at = excluded.fetched_at
"""

# the fields whose old values a transcription event's `previous` reports (not `segments`:
# they can be long, and change only with the text)
PREVIOUS_FIELDS = ("status", "text", "full_text", "language", "provider", "word_count",
                   "error", "summary_id", "completed_at")
SUMMARY_PREVIOUS_FIELDS = ("status", "output", "error", "template_id", "provider",
                           "completed_at")

NewId = Callable[[], str]


@dataclass
class Fetched:
    """What one job fetched for a recording: its transcriptions as the API shows them now,
    and, when summaries are fetched, each completed transcription's summaries."""

    recording_id: str
    transcriptions: list[Transcription]
    summaries: dict[str, list[Summary]] = field(default_factory=dict)


@dataclass
class Written:
    """What the write did: its events, how many rows changed, and whether it is all done
    (every transcription and summary terminal: the recording leaves the queue)."""

    events: list[Event] = field(default_factory=list)
    transcriptions: int = 0
    segments: int = 0
    replaced: list[str] = field(default_factory=list)
    summaries: int = 0
    done: bool = True


async def write(
    conn: Any, fetched: Fetched, *, now: str, new_id: NewId, backfill: bool = False,
    project: str = DEFAULT_PROJECT,
) -> Written:
    """Store one recording's fetch, the project's, inside the caller's transaction, events
    included."""
    out = Written()
    stored = await _stored(conn, project, fetched.recording_id)
    current = {t.id for t in fetched.transcriptions}
    replaced = [sid for sid in stored if sid not in current] if current else []
    settles = any(t.terminal for t in fetched.transcriptions)
    named = replaced[:1] if settles else []  # the newest replaced, named by the first event
    for t in fetched.transcriptions:
        old = stored.get(t.id)
        if old is None or canonical(old) != canonical(t.raw):
            out.segments += await _put_transcription(conn, project, t, fetched.recording_id,
                                                     now)
            out.transcriptions += 1
            if t.terminal and _news(old, t.raw):
                was = named.pop() if named else None
                out.events.append(_event(new_id, now, t, fetched.recording_id, old, was,
                                         project))
        else:  # unchanged: only the time it was last seen so (what a refresh goes by)
            await conn.execute(
                "UPDATE transcriptions SET fetched_at = ? WHERE project = ? AND id = ?",
                (now, project, t.id))
        out.done &= t.terminal
    if settles:
        for sid in replaced:
            await _remove_transcription(conn, project, sid)
        out.replaced = replaced
    for tid, summaries in fetched.summaries.items():
        done = await _put_summaries(conn, project, fetched.recording_id, tid, summaries, now,
                                    new_id, out)
        out.done &= done
    await insert_events(conn, out.events, backfill=backfill)
    return out


async def _stored(conn: Any, project: str, recording_id: str) -> dict[str, dict[str, Any]]:
    """The recording's stored transcriptions: id -> raw JSON, newest first."""
    async with conn.execute(
        "SELECT id, raw FROM transcriptions WHERE project = ? AND recording_id = ? "
        "ORDER BY created_at DESC NULLS LAST, id DESC", (project, recording_id),
    ) as cur:
        return {r[0]: loads(r[1]) for r in await cur.fetchall()}


def _news(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a terminal transcription or summary is worth an event: first stored, a new
    status, or a new content (text, segments or output)."""
    if old is None:
        return True
    return any(old.get(k) != new.get(k) for k in ("status", "text", "full_text", "segments",
                                                   "output", "error"))


def _previous(old: dict[str, Any] | None, new: dict[str, Any], fields: Sequence[str],
              replaced: str | None) -> dict[str, Any]:
    """The old values of what changed since it was last stored (`{}` when first stored);
    `id`, which never changes, is the transcription this one replaced, if it did."""
    changed = {} if old is None else {k: old.get(k) for k in fields if old.get(k) != new.get(k)}
    return {"id": replaced, **changed} if replaced is not None else changed


def _event(new_id: NewId, now: str, t: Transcription, recording_id: str,
           old: dict[str, Any] | None, replaced: str | None, project: str) -> Event:
    kind = ev.TRANSCRIPTION_COMPLETED if t.status == "completed" else ev.TRANSCRIPTION_FAILED
    return Event(id=new_id(), type=kind, created_at=now, recording_id=recording_id,
                 data=t.raw, previous=_previous(old, t.raw, PREVIOUS_FIELDS, replaced),
                 project=project)


async def _put_transcription(conn: Any, project: str, t: Transcription, recording_id: str,
                             now: str) -> int:
    """Write the row and replace its segments and their index entries; the segments written."""
    await conn.execute(_UPSERT_TRANSCRIPTION, (
        project, t.id, recording_id, t.status, t.language, t.provider, t.text, t.word_count,
        t.error, t.created_at, t.updated_at, t.completed_at, dumps(t.raw), now))
    await _remove_segments(conn, project, t.id)
    segments = t.segments if t.segments is not None else _whole_text(t)
    await conn.executemany(_INSERT_SEGMENT, [
        (project, t.id, s.position, s.start_s, s.end_s, s.speaker, s.text, s.confidence)
        for s in segments])
    if dialect_of(conn) == SQLITE:  # PostgreSQL's index keeps itself in step
        await conn.execute(
            "INSERT INTO transcript_fts (rowid, text, speaker) SELECT id, text, speaker "
            "FROM transcript_segments WHERE project = ? AND transcription_id = ?",
            (project, t.id))
    return len(segments)


def _whole_text(t: Transcription) -> tuple[SegmentRow, ...]:
    """A transcription the API sends without segments: its text as one segment without
    times or speaker, so that search finds it as it finds every other."""
    if not t.text or not t.text.strip():
        return ()
    return (SegmentRow(position=0, start_s=None, end_s=None, speaker=None, text=t.text,
                       confidence=None),)


async def _remove_segments(conn: Any, project: str, transcription_id: str) -> None:
    """Take a transcription's segments out of the index (with their old values), then delete."""
    if dialect_of(conn) == SQLITE:
        await conn.execute(
            "INSERT INTO transcript_fts (transcript_fts, rowid, text, speaker) "
            "SELECT 'delete', id, text, speaker FROM transcript_segments "
            "WHERE project = ? AND transcription_id = ?", (project, transcription_id))
    await conn.execute(
        "DELETE FROM transcript_segments WHERE project = ? AND transcription_id = ?",
        (project, transcription_id))


async def _remove_transcription(conn: Any, project: str, transcription_id: str) -> None:
    """A replaced transcription goes with its segments, index entries and summaries."""
    await _remove_segments(conn, project, transcription_id)
    await conn.execute("DELETE FROM summaries WHERE project = ? AND transcription_id = ?",
                       (project, transcription_id))
    await conn.execute("DELETE FROM transcriptions WHERE project = ? AND id = ?",
                       (project, transcription_id))


async def _put_summaries(
    conn: Any, project: str, recording_id: str, transcription_id: str,
    summaries: list[Summary], now: str, new_id: NewId, out: Written,
) -> bool:
    """Store a transcription's summaries as the API shows them now; True when all terminal.

    A stored summary of this transcription that the API no longer shows is removed.
    """
    async with conn.execute(
        "SELECT id, raw FROM summaries WHERE project = ? AND transcription_id = ?",
        (project, transcription_id),
    ) as cur:
        stored = {r[0]: loads(r[1]) for r in await cur.fetchall()}
    done = True
    for s in summaries:
        old = stored.pop(s.id, None)
        done &= s.terminal
        if old is not None and canonical(old) == canonical(s.raw):
            continue
        await conn.execute(_UPSERT_SUMMARY, (
            project, s.id, transcription_id, recording_id, s.status, s.template_id, s.custom_prompt,
            s.provider, s.output, s.error, s.created_at, s.updated_at, s.started_at,
            s.completed_at, dumps(s.raw), now))
        out.summaries += 1
        if s.terminal and _news(old, s.raw):
            kind = ev.SUMMARY_COMPLETED if s.status == "completed" else ev.SUMMARY_FAILED
            out.events.append(Event(
                id=new_id(), type=kind, created_at=now, recording_id=recording_id, data=s.raw,
                previous=_previous(old, s.raw, SUMMARY_PREVIOUS_FIELDS, None), project=project))
    await conn.executemany("DELETE FROM summaries WHERE project = ? AND id = ?",
                           [(project, sid) for sid in stored])
    return done
