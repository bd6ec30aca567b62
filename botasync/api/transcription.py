"""Transcriptions and summaries as botasync reads them, in either dialect of the Bota API.

Liberal, like `botasync.models`: the documented transcription carries `text` and an
error object `{"code", "message"}`; the deployed one `full_text` and an error string.
`segments` may be null. A value of the wrong type is read as null (the raw JSON keeps
it), a number sent as a decimal string is read as a number, an unknown status is kept
as sent. Only an object without a usable id cannot be mirrored. Pure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from botasync.api.models import UNKNOWN_STATUS, to_count, to_number, to_str, to_ts, usable_id
from botasync.jsoncodec import dumps

TRANSCRIPTION_ID = re.compile(r"txn_[A-Za-z0-9_-]{1,128}")
SUMMARY_ID = re.compile(r"sum_[A-Za-z0-9_-]{1,128}")
# a transcription or summary in one of these will not change any more: fetched for good
TERMINAL = ("completed", "failed")


class InvalidObject(ValueError):
    """A transcription or summary that cannot be mirrored (no usable id, not an object)."""


def is_terminal(status: str | None) -> bool:
    return status in TERMINAL


def error_text(value: Any) -> str | None:
    """The API's error as one text: `"code: message"` from the object form, or the string."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        code, message = to_str(value.get("code")), to_str(value.get("message"))
        parts = [p for p in (code, message) if p]
        return ": ".join(parts) if parts else dumps(value)
    return dumps(value)


def _seconds(value: Any) -> float | None:
    number = to_number(value)
    if number is None:
        return None
    x = float(number)
    return x if math.isfinite(x) else None


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """One `transcript_segments` row: `position` is the segment's index in the API's list."""

    position: int
    start_s: float | None
    end_s: float | None
    speaker: str | None
    text: str
    confidence: float | None


def parse_segments(value: Any) -> tuple[SegmentRow, ...] | None:
    """The segments as rows; None when the API sent none (null or not a list).

    An item that is not an object is skipped (its position stays unused); a missing
    text is an empty one.
    """
    if not isinstance(value, list):
        return None
    return tuple(
        SegmentRow(
            position=i, start_s=_seconds(s.get("start")), end_s=_seconds(s.get("end")),
            speaker=to_str(s.get("speaker")), text=to_str(s.get("text")) or "",
            confidence=_seconds(s.get("confidence")),
        )
        for i, s in enumerate(value) if isinstance(s, dict)
    )


def _status(value: Any) -> str:
    return to_str(value) or UNKNOWN_STATUS


@dataclass(frozen=True, slots=True)
class Transcription:
    """One transcription, read from either shape, with the raw JSON to store."""

    id: str
    recording_id: str | None
    status: str
    language: str | None
    provider: str | None
    text: str | None
    word_count: int | None
    error: str | None
    summary_id: str | None  # documented: the link to its summary (no summaries list there)
    links_summary: bool  # the object has a `summary_id` field at all (documented)
    created_at: str | None
    updated_at: str | None
    completed_at: str | None
    segments: tuple[SegmentRow, ...] | None
    raw: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return is_terminal(self.status)


def parse_transcription(item: Any) -> Transcription:
    """Read a transcription in either dialect; `InvalidObject` only without a usable id."""
    if not isinstance(item, dict):
        raise InvalidObject(f"a transcription that is not an object ({type(item).__name__})")
    tid = usable_id(item.get("id"), TRANSCRIPTION_ID)
    if tid is None:
        raise InvalidObject("a transcription without a usable id (txn_...)")
    text = item.get("text") if "text" in item else item.get("full_text")
    summary_id = usable_id(item.get("summary_id"), SUMMARY_ID)
    return Transcription(
        id=tid, recording_id=to_str(item.get("recording_id")), status=_status(item.get("status")),
        language=to_str(item.get("language")), provider=to_str(item.get("provider")),
        text=to_str(text), word_count=to_count(item.get("word_count")),
        error=error_text(item.get("error")), summary_id=summary_id,
        links_summary="summary_id" in item, created_at=to_ts(item.get("created_at")),
        updated_at=to_ts(item.get("updated_at")), completed_at=to_ts(item.get("completed_at")),
        segments=parse_segments(item.get("segments")), raw=item,
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """One summary, read from either shape; `output` as JSON text (None when null)."""

    id: str
    transcription_id: str | None
    status: str
    template_id: str | None
    custom_prompt: str | None
    provider: str | None
    output: str | None
    error: str | None
    created_at: str | None
    updated_at: str | None
    started_at: str | None
    completed_at: str | None
    raw: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return is_terminal(self.status)


def parse_summary(item: Any) -> Summary:
    """Read a summary in either dialect; `InvalidObject` only without a usable id."""
    if not isinstance(item, dict):
        raise InvalidObject(f"a summary that is not an object ({type(item).__name__})")
    sid = usable_id(item.get("id"), SUMMARY_ID)
    if sid is None:
        raise InvalidObject("a summary without a usable id (sum_...)")
    output = item.get("output")
    return Summary(
        id=sid, transcription_id=to_str(item.get("transcription_id")),
        status=_status(item.get("status")), template_id=to_str(item.get("template_id")),
        custom_prompt=to_str(item.get("custom_prompt")), provider=to_str(item.get("provider")),
        output=None if output is None else dumps(output), error=error_text(item.get("error")),
        created_at=to_ts(item.get("created_at")), updated_at=to_ts(item.get("updated_at")),
        started_at=to_ts(item.get("started_at")), completed_at=to_ts(item.get("completed_at")),
        raw=item,
    )
