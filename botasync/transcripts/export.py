"""Transcript exports: txt, srt, vtt, json and csv, each returned as one `str`. Pure.

The same rules hold in every format:

- Segments come in `position` order (srt and vtt: in start order, `position`
  breaking ties, as subtitle players expect).
- A time that is not a finite number of seconds >= 0 counts as missing (null, an
  empty cell, no label, no cue).
- The data formats (json, csv) keep every segment, its text and its times as given.
- The text formats (txt, srt, vtt) skip segments whose text is blank and put each
  segment on one line, every whitespace run (line breaks, blank lines) collapsed to
  one space, so no text can end a cue early or start a new one. In srt and vtt
  times are rounded to the millisecond (halves up), and an end before its start is
  taken as the start (a zero-length cue) rather than dropped.

Write the result as UTF-8; for csv open the file with `newline=""` (its records end
in CRLF, as RFC 4180 has them).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

ExportFormat = Literal["txt", "srt", "vtt", "json", "csv"]
FORMATS: tuple[ExportFormat, ...] = ("txt", "srt", "vtt", "json", "csv")
CSV_HEADER = ("start_s", "end_s", "speaker", "text", "confidence")


@dataclass(frozen=True, slots=True)
class Segment:
    """One stretch of speech; times in seconds from the start of the recording."""

    position: int
    start_s: float | None
    end_s: float | None
    speaker: str | None
    text: str
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class Transcript:
    """A recording's transcription: its full text and its segments (possibly none)."""

    recording_id: str
    transcription_id: str
    language: str | None
    full_text: str
    segments: tuple[Segment, ...] = ()


# --- shared rules --------------------------------------------------------------------


def _finite(value: float | None, minimum: float = -math.inf) -> float | None:
    """`value` if it is a finite number >= `minimum`, else None (NaN, inf, bad data)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    x = float(value)
    return x if math.isfinite(x) and x >= minimum else None


def _flat(text: str | None) -> str:
    """The text on one line: every run of whitespace (newlines too) as one space."""
    return " ".join((text or "").split())


def _ordered(transcript: Transcript) -> list[Segment]:
    return sorted(transcript.segments, key=lambda s: s.position)


def _ms(seconds: float) -> int:
    """Seconds to whole milliseconds, halves rounded up."""
    return math.floor(seconds * 1000 + 0.5)


def time_label(seconds: float, hours: bool = False) -> str:
    """`mm:ss` in whole seconds (rounded down); `hh:mm:ss` from the first hour on, or with `hours`.

    Minutes never run past 59, so 100 minutes read `01:40:00`, not `100:00`.
    """
    total = int(seconds) if math.isfinite(seconds) and seconds > 0 else 0
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}" if hours or h else f"{m:02d}:{s:02d}"


def _clock(ms: int, sep: str) -> str:
    """`hh:mm:ss<sep>mmm`; hours grow past two digits rather than wrap."""
    s, milli = divmod(ms, 1000)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{milli:03d}"


def _escape(text: str) -> str:
    """`&`, `<` and `>` as entities: no text can open a tag or hold a `-->`."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True, slots=True)
class _Cue:
    start_ms: int
    end_ms: int
    speaker: str
    text: str


def _cues(transcript: Transcript) -> list[_Cue]:
    """The timed, non-blank segments as cues, in start order."""
    cues: list[tuple[int, int, _Cue]] = []
    for seg in transcript.segments:
        start, end, text = _finite(seg.start_s, 0.0), _finite(seg.end_s, 0.0), _flat(seg.text)
        if start is None or end is None or not text:
            continue
        start_ms = _ms(start)
        cue = _Cue(start_ms, max(_ms(end), start_ms), _flat(seg.speaker), text)
        cues.append((start_ms, seg.position, cue))
    cues.sort(key=lambda c: (c[0], c[1]))
    return [c for _, _, c in cues]


# --- text formats --------------------------------------------------------------------


def to_txt(transcript: Transcript) -> str:
    """One line per segment, `[mm:ss] Speaker: text`; the full text when no segment has text.

    Times are whole seconds; when any segment starts past the first hour every line
    reads `[hh:mm:ss]`, so the column stays even. A segment without a start time, or
    without a speaker, simply has no label.
    """
    segments = [s for s in _ordered(transcript) if _flat(s.text)]
    if not segments:
        text = transcript.full_text.strip()
        return text + "\n" if text else ""
    starts = [_finite(s.start_s, 0.0) for s in segments]
    hours = any(t is not None and t >= 3600 for t in starts)
    lines = []
    for seg, start in zip(segments, starts, strict=True):
        label = f"[{time_label(start, hours)}] " if start is not None else ""
        speaker = _flat(seg.speaker)
        lines.append(f"{label}{speaker + ': ' if speaker else ''}{_flat(seg.text)}")
    return "\n".join(lines) + "\n"


def to_srt(transcript: Transcript) -> str:
    """SubRip: numbered cues `hh:mm:ss,mmm --> hh:mm:ss,mmm`, the speaker as a `Name: ` prefix.

    Segments without both times are skipped, not guessed: a subtitle shown at an
    invented moment is worse than none, and the text stays in txt and json. A
    transcript without timed segments gives an empty file. SRT has no escaping of its
    own; `&`, `<` and `>` are written as the entities WebVTT uses, which many SRT
    players decode too, so no text can open a formatting tag or hold a `-->`.
    """
    blocks = []
    for n, cue in enumerate(_cues(transcript), start=1):
        line = _escape(f"{cue.speaker}: {cue.text}" if cue.speaker else cue.text)
        blocks.append(
            f"{n}\n{_clock(cue.start_ms, ',')} --> {_clock(cue.end_ms, ',')}\n{line}\n\n"
        )
    return "".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    """WebVTT: cues `hh:mm:ss.mmm --> hh:mm:ss.mmm`, the speaker as a voice span `<v Name>`.

    The same cues as `to_srt` (untimed segments skipped; without any, a file with
    only its `WEBVTT` header). `&`, `<` and `>` are escaped as WebVTT requires, in
    the text and in the speaker's name.
    """
    out = ["WEBVTT\n"]
    for cue in _cues(transcript):
        text = _escape(cue.text)
        # a name ending in "--" must not meet the tag's ">": readers trim the space
        voice = _escape(cue.speaker) + (" " if cue.speaker.endswith("--") else "")
        line = f"<v {voice}>{text}" if cue.speaker else text
        out.append(f"\n{_clock(cue.start_ms, '.')} --> {_clock(cue.end_ms, '.')}\n{line}\n")
    return "".join(out)


# --- data formats --------------------------------------------------------------------


def _segment_data(seg: Segment) -> dict[str, Any]:
    return {
        "position": seg.position,
        "start_s": _finite(seg.start_s, 0.0),
        "end_s": _finite(seg.end_s, 0.0),
        "speaker": seg.speaker,
        "text": seg.text,
        "confidence": _finite(seg.confidence),
    }


def to_json(transcript: Transcript) -> str:
    """The transcript as indented JSON: ids, language, `full_text` and every segment as stored."""
    data = {
        "recording_id": transcript.recording_id,
        "transcription_id": transcript.transcription_id,
        "language": transcript.language,
        "full_text": transcript.full_text,
        "segments": [_segment_data(s) for s in _ordered(transcript)],
    }
    return json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False) + "\n"


def _number(value: float | None) -> str:
    """A number in plain decimal notation (never `1e-05`) that reads back to the same float."""
    return "" if value is None else format(Decimal(repr(value)), "f")


def to_csv(transcript: Transcript) -> str:
    """`start_s,end_s,speaker,text,confidence`, one record per segment; header only without any.

    The text is kept exactly (commas, quotes and line breaks are quoted, RFC 4180), a
    missing value is an empty cell. Cells are not defused for spreadsheets: a text
    starting with `=` stays as said; open the file as data, not as a formula sheet.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for seg in _ordered(transcript):
        row = _segment_data(seg)
        writer.writerow([_number(row["start_s"]), _number(row["end_s"]), seg.speaker or "",
                         seg.text, _number(row["confidence"])])
    return buf.getvalue()


_EXPORTERS: dict[str, Callable[[Transcript], str]] = {
    "txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": to_json, "csv": to_csv,
}


def export(transcript: Transcript, fmt: ExportFormat) -> str:
    """The transcript in `fmt`; `ValueError` naming the formats for any other."""
    try:
        exporter = _EXPORTERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}") from None
    return exporter(transcript)

