"""The API's objects as botasync reads them: validation of one recording or media item.

Validation is tolerant where the API is allowed to move (unknown fields are kept,
documented optional fields may be missing) and strict where a wrong value would
corrupt the mirror (an id that is not `rec_*`, a status we cannot name, a string
where a number belongs). Timestamps are normalised to ISO 8601 UTC (`...Z`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

RECORDING_FIELDS = (
    "id", "device_id", "end_user_id", "name", "status", "duration_ms", "started_at",
    "ended_at", "transcription_id", "media", "metadata", "created_at",
)
MEDIA_FIELDS = ("id", "type", "mime_type", "file_size_bytes", "status", "captured_at", "created_at")
RecordingStatus = Literal["pending", "uploaded", "processing", "completed", "failed"]
NON_TERMINAL: tuple[RecordingStatus, ...] = ("pending", "uploaded", "processing")


def normalize_ts(value: str) -> str:
    """An ISO 8601 timestamp as UTC with a `Z`; naive times are taken as UTC."""
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    spec = "microseconds" if dt.microsecond % 1000 else (
        "milliseconds" if dt.microsecond else "seconds")
    return dt.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _ts(value: str) -> str:
    try:
        return normalize_ts(value)
    except ValueError:
        raise ValueError("not an ISO 8601 timestamp") from None


Timestamp = Annotated[str, AfterValidator(_ts)]


class _ApiObject(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class Media(_ApiObject):
    """One media item of a recording."""

    id: str = Field(pattern=r"^med_[A-Za-z0-9_]+$")
    type: Literal["audio", "image", "video"]
    mime_type: str | None = None
    file_size_bytes: int | None = Field(default=None, ge=0)
    status: Literal["pending", "uploaded"]
    captured_at: Timestamp | None = None
    created_at: Timestamp | None = None


class Recording(_ApiObject):
    """One recording; `media` is None when the API sent none (the older shape)."""

    id: str = Field(pattern=r"^rec_[A-Za-z0-9_]+$")
    device_id: str | None = None
    end_user_id: str | None = None
    name: str | None = None
    status: RecordingStatus
    duration_ms: int | None = Field(default=None, ge=0)
    started_at: Timestamp | None = None
    ended_at: Timestamp | None = None
    transcription_id: str | None = None
    media: list[Media] | None = None
    metadata: dict[str, Any] | None = None
    created_at: Timestamp | None = None


class InvalidItem(ValueError):
    """A list or detail item that cannot be mirrored; `.item_id` names it when it can."""

    def __init__(self, item_id: str | None, reason: str) -> None:
        super().__init__(f"{item_id or '<no id>'}: {reason}")
        self.item_id = item_id
        self.reason = reason


def _reason(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "item"
    return f"{loc}: {first['msg']}"


def parse_recording(item: Any) -> Recording:
    """Validate one API item; raise `InvalidItem` with the id and a one-line reason."""
    if not isinstance(item, dict):
        raise InvalidItem(None, f"expected an object, got {type(item).__name__}")
    item_id = item.get("id") if isinstance(item.get("id"), str) else None
    try:
        return Recording.model_validate(item)
    except ValidationError as e:
        raise InvalidItem(item_id, _reason(e)) from None


def is_complete(item: dict[str, Any]) -> bool:
    """Whether a list item carries every documented field, so it can be stored as is."""
    return all(f in item for f in RECORDING_FIELDS)
