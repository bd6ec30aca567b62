"""`botasync transcripts export`: a stored transcript as txt, srt, vtt, json or csv.

Reads the mirror (read-only), renders with `botasync/transcripts/export.py`, writes
each file atomically: a hidden temporary file in the same directory, fsynced, then
renamed, so a file under its final name is always whole. Imported by `botasync/cli/main.py`,
it adds itself to the `transcripts` group of `botasync/cli/transcripts.py`.

Which transcription is a recording's: the stored ones that completed (a replaced
transcription stays stored while its replacement is still running), the one the
recording names (`transcription_id`) first, then the newest.
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
    _since,
    _state,
    _with_store,
    handle_errors,
    run_async,
)
from botasync.cli.transcripts import transcripts
from botasync.errors import BotasyncError
from botasync.media.files import fsync_dir
from botasync.store.sqlite import Store
from botasync.transcripts.export import FORMATS, ExportFormat, Segment, Transcript, export

# the recording's transcript: completed, the one it names first, then the newest (two
# subqueries: SQLite lets a subquery's WHERE name the outer row, not its ORDER BY)
_CURRENT = """coalesce(
    (SELECT t.id FROM transcriptions t WHERE t.id = r.transcription_id
        AND t.recording_id = r.id AND t.status = 'completed'),
    (SELECT t.id FROM transcriptions t WHERE t.recording_id = r.id AND t.status = 'completed'
        ORDER BY t.created_at DESC, t.fetched_at DESC, t.id DESC LIMIT 1))"""


class NoTranscript(BotasyncError):
    """The recording or transcription asked for has no stored transcript to export."""


@dataclass(frozen=True, slots=True)
class Exported:
    """What `--all` did."""

    written: int
    skipped: int


async def _transcript(store: Store, txn_id: str) -> Transcript:
    """A stored transcription and its segments, in order."""
    row = await store.fetchone(
        "SELECT id, recording_id, language, text FROM transcriptions WHERE id = ?", (txn_id,))
    if row is None:
        raise NoTranscript(f"no transcription {txn_id} in the mirror")
    segments = await store.fetchall(
        "SELECT position, start_s, end_s, speaker, text, confidence FROM transcript_segments "
        "WHERE transcription_id = ? ORDER BY position", (txn_id,))
    return Transcript(
        recording_id=row["recording_id"], transcription_id=row["id"], language=row["language"],
        full_text=row["text"] or "",
        segments=tuple(Segment(position=s["position"], start_s=s["start_s"], end_s=s["end_s"],
                               speaker=s["speaker"], text=s["text"] or "",
                               confidence=s["confidence"]) for s in segments))


async def find_transcript(store: Store, ref: str) -> Transcript:
    """The transcript of a recording id (its current completed transcription) or a txn id."""
    if ref.startswith("txn_"):
        row = await store.fetchone("SELECT status FROM transcriptions WHERE id = ?", (ref,))
        if row is not None and row["status"] != "completed":
            raise NoTranscript(f"transcription {ref} is {row['status']}: no transcript to export")
        return await _transcript(store, ref)
    row = await store.fetchone(
        f"SELECT r.id, ({_CURRENT}) AS txn FROM recordings r WHERE r.id = ?", (ref,))  # noqa: S608
    if row is None:
        raise NoTranscript(f"no recording or transcription {ref} in the mirror")
    if row["txn"] is None:
        raise NoTranscript(await _why_none(store, ref))
    return await _transcript(store, row["txn"])


async def _why_none(store: Store, rec_id: str) -> str:
    """One line on why a recording has no transcript to export."""
    row = await store.fetchone(
        "SELECT id, status FROM transcriptions WHERE recording_id = ? "
        "ORDER BY created_at DESC, id DESC LIMIT 1", (rec_id,))
    if row is not None:
        return (f"recording {rec_id} has no stored transcript: its transcription {row['id']} "
                f"is {row['status']}")
    return (f"recording {rec_id} has no stored transcript (see `botasync transcripts status`; "
            "[transcripts] download = true fetches them)")


async def all_transcripts(
    store: Store, since: str | None,
) -> AsyncIterator[tuple[str, Transcript | None]]:
    """Every recording (created at or after `since`), newest first, with its transcript or
    None. Tombstoned recordings keep theirs."""
    where = " WHERE r.created_at >= ?" if since else ""
    rows = await store.fetchall(
        f"SELECT r.id, ({_CURRENT}) AS txn FROM recordings r{where} "  # noqa: S608
        "ORDER BY r.created_at DESC, r.id", (since,) if since else ())
    for row in rows:
        yield row["id"], (await _transcript(store, row["txn"]) if row["txn"] else None)


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


async def export_all(store: Store, fmt: ExportFormat, since: str | None, out_dir: Path) -> Exported:
    """`--all`: `<recording_id>.<fmt>` in `out_dir` for each recording with a transcript."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BotasyncError(f"cannot write to {out_dir}: {_why(e)}") from None
    written = skipped = 0
    async for rec_id, transcript in all_transcripts(store, since):
        if transcript is None:
            skipped += 1
            continue
        write_atomic(out_dir / f"{rec_id}.{fmt}", export(transcript, fmt))
        written += 1
    fsync_dir(out_dir)
    return Exported(written=written, skipped=skipped)


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
@handle_errors
def export_command(ref: str | None, fmt: ExportFormat, out_path: Path | None, all_: bool,
                   since: str | None) -> None:
    """Export a recording's stored transcript (by recording or transcription id), or all of
    them with --all. Files are written whole or not at all (temporary file, then rename)."""
    if all_:
        _export_all(ref, fmt, out_path, since)
        return
    if ref is None:
        raise click.UsageError("name a recording or transcription id, or use --all --out DIR")
    if since is not None:
        raise click.UsageError("--since goes with --all")
    cfg = _state().load()
    transcript = run_async(_with_store(cfg, lambda s: find_transcript(s, ref)))
    text = export(transcript, fmt)
    if out_path is None:
        click.echo(text, nl=False)
    else:
        write_atomic(out_path, text)


def _export_all(ref: str | None, fmt: ExportFormat, out_dir: Path | None,
                since: str | None) -> None:
    if ref is not None:
        raise click.UsageError("--all exports every recording: give no id with it")
    if out_dir is None:
        raise click.UsageError("--all needs --out DIR, the directory for the files")
    cfg = _state().load()
    done: Any = run_async(_with_store(cfg, lambda s: export_all(s, fmt, since, out_dir)))
    skipped = (f"; {done.skipped:,} recordings without a stored transcript skipped"
               if done.skipped else "")
    click.echo(f"exported {done.written:,} transcripts ({fmt}) to {out_dir}{skipped}")


transcripts.add_command(export_command)
