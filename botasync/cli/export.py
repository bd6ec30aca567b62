"""`botasync transcripts export`: a stored transcript as txt, srt, vtt, json or csv.

Reads the mirror (read-only), renders with `botasync/transcripts/export.py`, writes
each file atomically: a hidden temporary file in the same directory, fsynced, then
renamed, so a file under its final name is always whole. Imported by `botasync/cli/main.py`,
it adds itself to the `transcripts` group of `botasync/cli/transcripts.py`.

Which transcription is a recording's: the stored ones that completed (a replaced
transcription stays stored while its replacement is still running), the one the
recording names (`transcription_id`) first, then the newest.

Ids are a project's: the same id can name recordings of two projects. An id is looked
up in `--project`, or else in the one project that has it (two that have it: one line
naming them, exit 2). `--all` exports every project's, each into its own directory
`<out>/<project>/` when the database holds more than one (flat as before with one, or
with `--project`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from botasync.cli.common import (
    _config_option,
    _known_project,
    _since,
    _state,
    _with_store,
    handle_errors,
    project_option,
    run_async,
)
from botasync.cli.transcripts import transcripts
from botasync.config import DEFAULT_PROJECT
from botasync.errors import BotasyncError
from botasync.media.files import fsync_dir
from botasync.store.base import Database
from botasync.transcripts.export import FORMATS, ExportFormat, Segment, Transcript, export

# the recording's transcript: completed, the one it names first, then the newest (two
# subqueries: SQLite lets a subquery's WHERE name the outer row, not its ORDER BY)
_CURRENT = """coalesce(
    (SELECT t.id FROM transcriptions t WHERE t.project = r.project
        AND t.id = r.transcription_id AND t.recording_id = r.id AND t.status = 'completed'),
    (SELECT t.id FROM transcriptions t WHERE t.project = r.project AND t.recording_id = r.id
        AND t.status = 'completed'
        ORDER BY t.created_at DESC NULLS LAST, t.fetched_at DESC, t.id DESC LIMIT 1))"""


class NoTranscript(BotasyncError):
    """The recording or transcription asked for has no stored transcript to export."""


class AmbiguousId(BotasyncError):
    """The id names a recording (or transcription) of more than one project."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Exported:
    """What `--all` did."""

    written: int
    skipped: int
    projects: tuple[str, ...] = ()  # each written into its own directory (more than one)


async def _transcript(store: Database, txn_id: str, project: str = DEFAULT_PROJECT) -> Transcript:
    """A stored transcription of the project and its segments, in order."""
    row = await store.fetchone(
        "SELECT id, recording_id, language, text FROM transcriptions "
        "WHERE project = ? AND id = ?", (project, txn_id))
    if row is None:
        raise NoTranscript(f"no transcription {txn_id} in the mirror")
    segments = await store.fetchall(
        "SELECT position, start_s, end_s, speaker, text, confidence FROM transcript_segments "
        "WHERE project = ? AND transcription_id = ? ORDER BY position", (project, txn_id))
    return Transcript(
        recording_id=row["recording_id"], transcription_id=row["id"], language=row["language"],
        full_text=row["text"] or "",
        segments=tuple(Segment(position=s["position"], start_s=s["start_s"], end_s=s["end_s"],
                               speaker=s["speaker"], text=s["text"] or "",
                               confidence=s["confidence"]) for s in segments))


def _one_project(rows: list[Any], what: str) -> Any:
    """The one row of the id's project; the projects named when more than one has it."""
    if len(rows) > 1:
        names = ", ".join(sorted(r["project"] for r in rows))
        raise AmbiguousId(f"{what} is in more than one project ({names}): name one with "
                          "--project")
    return rows[0] if rows else None


async def find_transcript(store: Database, ref: str, project: str | None = None) -> Transcript:
    """The transcript of a recording id (its current completed transcription) or a txn id,
    in `project`, or in the one project that has that id."""
    scope, args = (" AND project = ?", (project,)) if project is not None else ("", ())
    where = f" in project {project}" if project is not None else " in the mirror"
    if ref.startswith("txn_"):
        row = _one_project(await store.fetchall(
            f"SELECT project, status FROM transcriptions WHERE id = ?{scope}",  # noqa: S608
            (ref, *args)), f"transcription {ref}")
        if row is None:
            raise NoTranscript(f"no transcription {ref}{where}")
        if row["status"] != "completed":
            raise NoTranscript(f"transcription {ref} is {row['status']}: no transcript to export")
        return await _transcript(store, ref, row["project"])
    row = _one_project(await store.fetchall(
        f"SELECT r.project, r.id, ({_CURRENT}) AS txn FROM recordings r "  # noqa: S608
        f"WHERE r.id = ?{scope}", (ref, *args)),
        f"recording {ref}")
    if row is None:
        raise NoTranscript(f"no recording or transcription {ref}{where}")
    if row["txn"] is None:
        raise NoTranscript(await _why_none(store, ref, row["project"]))
    return await _transcript(store, row["txn"], row["project"])


async def _why_none(store: Database, rec_id: str, project: str = DEFAULT_PROJECT) -> str:
    """One line on why a recording has no transcript to export."""
    row = await store.fetchone(
        "SELECT id, status FROM transcriptions WHERE project = ? AND recording_id = ? "
        "ORDER BY created_at DESC NULLS LAST, id DESC LIMIT 1", (project, rec_id))
    if row is not None:
        return (f"recording {rec_id} has no stored transcript: its transcription {row['id']} "
                f"is {row['status']}")
    return (f"recording {rec_id} has no stored transcript (see `botasync transcripts status`; "
            "[transcripts] download = true fetches them)")


async def all_transcripts(
    store: Database, since: str | None, project: str = DEFAULT_PROJECT,
) -> AsyncIterator[tuple[str, Transcript | None]]:
    """Every recording of the project (created at or after `since`), newest first, with its
    transcript or None. Tombstoned recordings keep theirs."""
    where = " AND r.created_at >= ?" if since else ""
    rows = await store.fetchall(
        f"SELECT r.id, ({_CURRENT}) AS txn FROM recordings r "  # noqa: S608
        f"WHERE r.project = ?{where} ORDER BY r.created_at DESC NULLS LAST, r.id",
        (project, since) if since else (project,))
    for row in rows:
        yield row["id"], (await _transcript(store, row["txn"], project) if row["txn"] else None)


async def stored_projects(store: Database) -> list[str]:
    """The projects whose recordings the database holds, by name."""
    return [r["project"] for r in await store.fetchall(
        "SELECT DISTINCT project FROM recordings ORDER BY project")]


def write_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8, line ends as given) to `path` through a temporary file and a
    rename: `path` is either as it was or whole. The file gets the umask's mode."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        with tmp.open("x", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with suppress(OSError):
            tmp.unlink()
        raise BotasyncError(f"cannot write {path}: {_why(e)}") from None


def _why(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


async def export_all(store: Database, fmt: ExportFormat, since: str | None, out_dir: Path,
                     project: str | None = None) -> Exported:
    """`--all`: `<recording_id>.<fmt>` in `out_dir` for each recording with a transcript, of
    `project`, or of every project: in `out_dir/<project>/` when the database holds more
    than one (the same id can be two projects' recordings)."""
    projects = [project] if project is not None else await stored_projects(store)
    split = len(projects) > 1
    _mkdir(out_dir)
    written = skipped = 0
    for name in projects:
        into = out_dir / name if split else out_dir
        if split:
            _mkdir(into)
        async for rec_id, transcript in all_transcripts(store, since, name):
            if transcript is None:
                skipped += 1
                continue
            write_atomic(into / f"{rec_id}.{fmt}", export(transcript, fmt))
            written += 1
        fsync_dir(into)
    if split:
        fsync_dir(out_dir)
    return Exported(written=written, skipped=skipped, projects=tuple(projects) if split else ())


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BotasyncError(f"cannot write to {path}: {_why(e)}") from None


@click.command("export")
@_config_option
@click.argument("ref", metavar="REC_OR_TXN", required=False)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="txt", show_default=True,
              help="txt (timed lines with speakers), srt or vtt (subtitles), json or csv "
                   "(every segment).")
@click.option("--out", "out_path", metavar="PATH", type=click.Path(path_type=Path),
              help="The file to write (default: standard output); with --all, the directory.")
@click.option("--all", "all_", is_flag=True,
              help="Every recording with a stored transcript, one file each: "
                   "<recording_id>.<format> in the --out directory.")
@click.option("--since", metavar="ISO", callback=_since,
              help="With --all: only recordings created at or after this date or time.")
@project_option("The project whose id it is, by its [[projects]] name (default: the one "
                "project that has it); with --all, only this project's (default: every "
                "project's, each in its own directory when there are several).")
@handle_errors
def export_command(ref: str | None, fmt: ExportFormat, out_path: Path | None, all_: bool,
                   since: str | None, project: str | None) -> None:
    """Export a recording's stored transcript (by recording or transcription id), or all of
    them with --all. Files are written whole or not at all (temporary file, then rename)."""
    if all_:
        _export_all(ref, fmt, out_path, since, project)
        return
    if ref is None:
        raise click.UsageError("name a recording or transcription id, or use --all --out DIR")
    if since is not None:
        raise click.UsageError("--since goes with --all")
    cfg = _state().load()
    _known_project(cfg, project)
    transcript = run_async(_with_store(cfg, lambda s: find_transcript(s, ref, project)))
    text = export(transcript, fmt)
    if out_path is None:
        click.echo(text, nl=False)
    else:
        write_atomic(out_path, text)


def _export_all(ref: str | None, fmt: ExportFormat, out_dir: Path | None,
                since: str | None, project: str | None) -> None:
    if ref is not None:
        raise click.UsageError("--all exports every recording: give no id with it")
    if out_dir is None:
        raise click.UsageError("--all needs --out DIR, the directory for the files")
    cfg = _state().load()
    _known_project(cfg, project)
    done: Exported = run_async(_with_store(cfg, lambda s: export_all(s, fmt, since, out_dir,
                                                                     project)))
    skipped = (f"; {done.skipped:,} recordings without a stored transcript skipped"
               if done.skipped else "")
    each = (f" (one directory per project: {', '.join(done.projects)})"
            if done.projects else "")
    click.echo(f"exported {done.written:,} transcripts ({fmt}) to {out_dir}{each}{skipped}")


transcripts.add_command(export_command)
