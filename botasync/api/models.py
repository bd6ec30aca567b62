"""The API's objects as botasync reads them, in either dialect of the Bota API.

Liberal in what is accepted: the API is documented one way and deployed another, and
may change with a release. Unknown fields are kept (the raw JSON is stored whole); an
unknown status is kept as sent; a number sent as a decimal string is read as a number;
a value of the wrong type, an unexpected null or a missing field is read as null.
Only an item without a usable id cannot be mirrored: ids become file names and URL
paths, so a usable id is a short run of letters, digits, `_` and `-` after a known
prefix. Timestamps are normalised to ISO 8601 UTC (`...Z`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

RECORDING_ID = re.compile(r"rec_[A-Za-z0-9_-]{1,128}")
MEDIA_ID = re.compile(r"med_[A-Za-z0-9_-]{1,128}")

NON_TERMINAL = ("pending", "streaming", "uploaded", "processing")
TERMINAL = ("completed", "failed", "integrity_failure")
KNOWN_STATUSES = (*NON_TERMINAL, *TERMINAL)
# the statuses of the reference pages: a `status` filter with these is always understood
DOCUMENTED_NON_TERMINAL = ("pending", "uploaded", "processing")
UNKNOWN_STATUS = "unknown"  # stored for an item that sends no status at all
# without a file: a recording in these statuses has nothing to download yet
NO_FILE_STATUSES = ("pending", "streaming")
MEDIA_TYPES = ("audio", "image", "video")


def normalize_ts(value: str) -> str:
    """An ISO 8601 timestamp as UTC with a `Z`; naive times are taken as UTC."""
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    spec = "microseconds" if dt.microsecond % 1000 else (
        "milliseconds" if dt.microsecond else "seconds")
    return dt.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


# -- lenient readers: a value botasync cannot read becomes null, never an error ----------


def to_str(value: Any) -> str | None:
    """A string as sent; a number as its text; anything else null."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def to_number(value: Any) -> Decimal | None:
    """An int, a float or a decimal string (`"1234"`, `" 12.5 "`) as a Decimal; else null."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float | str):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def to_count(value: Any) -> int | None:
    """A non-negative whole number (sizes, durations), from a number or a decimal string."""
    number = to_number(value)
    if number is None or number < 0 or number > 2**63 - 1:
        return None
    return int(number.to_integral_value())


def to_ts(value: Any) -> str | None:
    """An ISO 8601 timestamp normalised to UTC, or null when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return normalize_ts(value)
    except (ValueError, OverflowError):
        return None


def to_object(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


OptStr = Annotated[str | None, BeforeValidator(to_str)]
OptCount = Annotated[int | None, BeforeValidator(to_count)]
OptTs = Annotated[str | None, BeforeValidator(to_ts)]
OptObject = Annotated[dict[str, Any] | None, BeforeValidator(to_object)]


class _ApiObject(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Media(_ApiObject):
    """One file of a recording: a documented `media[]` item, or the recording's own file."""

    id: str
    type: OptStr = None
    mime_type: OptStr = None
    file_size_bytes: OptCount = None
    status: OptStr = None
    captured_at: OptTs = None
    created_at: OptTs = None


class Recording(_ApiObject):
    """One recording, read from either shape; `media` is None when the API sent no list."""

    id: str
    device_id: OptStr = None
    end_user_id: OptStr = None
    name: OptStr = None
    status: str = UNKNOWN_STATUS
    duration_ms: OptCount = None
    started_at: OptTs = None
    ended_at: OptTs = None
    transcription_id: OptStr = None
    media: list[Media] | None = None
    metadata: OptObject = None
    created_at: OptTs = None
    recorded_at: OptTs = None
    updated_at: OptTs = None
    source: OptStr = None
    project_id: OptStr = None
    file_size_bytes: OptCount = None
    content_sha256: OptStr = None

    @property
    def known_status(self) -> bool:
        return self.status in KNOWN_STATUSES

    def files(self, raw: dict[str, Any]) -> list[tuple[Media, dict[str, Any]]] | None:
        """The media rows this recording stands for, each with the raw JSON to store.

        The documented shape lists them in `media[]`; the deployed shape (and the
        reference's older one) has a single file described at the top level, which
        is mirrored as one media row whose id is the recording's. None: the answer
        says nothing about files, so stored media rows are left as they are.
        """
        if self.media is not None:
            listed = raw.get("media") or []
            by_id = {m.get("id"): m for m in listed if isinstance(m, dict)}
            return [(m, by_id.get(m.id, {})) for m in self.media]
        if not any(k in raw for k in ("audio_url", "file_size_bytes", "content_sha256")):
            return None
        return [_own_file(self, raw)]


class InvalidItem(ValueError):
    """A list or detail item that cannot be mirrored; `.item_id` names it when it can."""

    def __init__(self, item_id: str | None, reason: str) -> None:
        super().__init__(f"{item_id or '<no id>'}: {reason}")
        self.item_id = item_id
        self.reason = reason


def _own_file(rec: Recording, raw: dict[str, Any]) -> tuple[Media, dict[str, Any]]:
    """The deployed recording's one file, as a media row with the recording's id."""
    has_file = raw.get("audio_url") is not None or (
        rec.file_size_bytes is not None and rec.status not in NO_FILE_STATUSES)
    mime = to_str(raw.get("mime_type")) or to_str(raw.get("content_type"))
    media = Media(
        id=rec.id, type="audio", mime_type=mime, file_size_bytes=rec.file_size_bytes,
        status="uploaded" if has_file else "pending", captured_at=rec.recorded_at,
        created_at=rec.created_at,
    )
    # what is known of the file; the signed URL is left out (it expires, and it is in raw)
    stored = {**media.model_dump(), "recording_file": True, "sha256": rec.content_sha256}
    return media, stored


def usable_id(value: Any, pattern: re.Pattern[str] = RECORDING_ID) -> str | None:
    """The id when it is safe to use as a file name and a URL path segment, else None."""
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


def _media_list(value: Any) -> list[Media] | None:
    """The media items that have a usable id; the rest stay in raw only."""
    if not isinstance(value, list):
        return None
    out: list[Media] = []
    for item in value:
        if isinstance(item, dict) and usable_id(item.get("id"), MEDIA_ID):
            out.append(Media.model_validate(item))
    return out


def _status(value: Any) -> str:
    text = to_str(value)
    return text if text else UNKNOWN_STATUS


def parse_recording(item: Any) -> Recording:
    """Read one API item in either shape; `InvalidItem` only when it has no usable id."""
    if not isinstance(item, dict):
        raise InvalidItem(None, f"expected an object, got {type(item).__name__}")
    raw_id = item.get("id")
    if usable_id(raw_id) is None:
        shown = raw_id if isinstance(raw_id, str) and len(raw_id) <= 80 else None
        why = "no id" if raw_id is None else (
            "an id that is not rec_ followed by letters, digits, _ or -")
        raise InvalidItem(shown, why)
    fields = dict(item)
    fields["status"] = _status(item.get("status"))
    fields["media"] = _media_list(item.get("media"))
    if to_count(item.get("duration_ms")) is None and "duration_seconds" in item:
        seconds = to_number(item.get("duration_seconds"))
        fields["duration_ms"] = None if seconds is None else seconds * 1000
    return Recording.model_validate(fields)
