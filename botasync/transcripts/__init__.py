"""Transcripts: what was said in a recording, and the files it can be exported to."""

from __future__ import annotations

from botasync.transcripts.export import (
    FORMATS,
    ExportFormat,
    Segment,
    Transcript,
    export,
    time_label,
    to_csv,
    to_json,
    to_srt,
    to_txt,
    to_vtt,
)

__all__ = [
    "FORMATS",
    "ExportFormat",
    "Segment",
    "Transcript",
    "export",
    "time_label",
    "to_csv",
    "to_json",
    "to_srt",
    "to_txt",
    "to_vtt",
]
