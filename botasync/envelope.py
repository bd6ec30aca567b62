"""Event types, ids and the envelope: the same shape as Bota's own webhooks.

`{"id": "evt_...", "type": "...", "created_at": "...", "project": "...", "data": {recording},
"previous": {...}}`, plus `"media": {item}` on `media.*` events; `project` names the
`[[projects]]` entry (`default` for `[api]` alone). Pure: the clock and randomness come in.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DEFAULT_PROJECT = "default"  # the project of `[api]` alone (config.DEFAULT_PROJECT)

RECORDING_CREATED = "recording.created"
RECORDING_PENDING = "recording.pending"
RECORDING_STREAMING = "recording.streaming"
RECORDING_INTEGRITY_FAILURE = "recording.integrity_failure"
RECORDING_STATUS_CHANGED = "recording.status_changed"
RECORDING_UPLOADED = "recording.uploaded"
RECORDING_PROCESSING = "recording.processing"
RECORDING_COMPLETED = "recording.completed"
RECORDING_FAILED = "recording.failed"
RECORDING_UPDATED = "recording.updated"
RECORDING_TRANSCRIBED = "recording.transcribed"
RECORDING_DELETED = "recording.deleted"
MEDIA_CREATED = "media.created"
MEDIA_UPLOADED = "media.uploaded"
MEDIA_DOWNLOADED = "media.downloaded"
# Bota's own webhook names: `data` is the transcription or summary, `recording_id` its recording
TRANSCRIPTION_COMPLETED = "transcription.completed"
TRANSCRIPTION_FAILED = "transcription.failed"
SUMMARY_COMPLETED = "summary.completed"
SUMMARY_FAILED = "summary.failed"

EVENT_TYPES = (
    RECORDING_CREATED, RECORDING_STATUS_CHANGED, RECORDING_PENDING, RECORDING_STREAMING,
    RECORDING_UPLOADED, RECORDING_PROCESSING, RECORDING_COMPLETED, RECORDING_FAILED,
    RECORDING_INTEGRITY_FAILURE, RECORDING_UPDATED, RECORDING_TRANSCRIBED,
    RECORDING_DELETED, MEDIA_CREATED, MEDIA_UPLOADED, MEDIA_DOWNLOADED,
    TRANSCRIPTION_COMPLETED, TRANSCRIPTION_FAILED, SUMMARY_COMPLETED, SUMMARY_FAILED,
)
# the status a recording took -> the event named for it; a status botasync does not know
# gets `recording.<status>` too when the status is a plain word (see `status_event`)
STATUS_EVENTS = {
    "pending": RECORDING_PENDING,
    "streaming": RECORDING_STREAMING,
    "uploaded": RECORDING_UPLOADED,
    "processing": RECORDING_PROCESSING,
    "completed": RECORDING_COMPLETED,
    "failed": RECORDING_FAILED,
    "integrity_failure": RECORDING_INTEGRITY_FAILURE,
}
_STATUS_WORD = re.compile(r"[a-z][a-z0-9_]{0,63}")
# event types of their own that a status word must not impersonate
_NOT_STATUS_EVENTS = frozenset({"created", "status_changed", "updated", "transcribed", "deleted"})


def status_event(status: Any) -> str | None:
    """`recording.<status>` for the status a recording took, or None for an odd value."""
    if not isinstance(status, str):
        return None
    named = STATUS_EVENTS.get(status)
    if named is not None:
        return named
    if _STATUS_WORD.fullmatch(status) and status not in _NOT_STATUS_EVENTS:
        return f"recording.{status}"
    return None

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def utc_now() -> datetime:
    """The wall clock, UTC (the default clock everywhere)."""
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """A datetime as ISO 8601 UTC with milliseconds and `Z`."""
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _b32(n: int, length: int) -> str:
    out = []
    for _ in range(length):
        n, r = divmod(n, 32)
        out.append(_CROCKFORD[r])
    return "".join(reversed(out))


@dataclass
class EventIds:
    """Sortable unique ids, `evt_` + a ULID: 48 bits of milliseconds, 80 random bits.

    Within one millisecond the random part counts up, so ids made by one process sort
    in the order they were made.
    """

    random_bits: Callable[[int], int] = field(
        default=lambda bits: int.from_bytes(os.urandom(bits // 8), "big")
    )
    _last_ms: int = -1
    _last_rand: int = 0

    def new(self, now: datetime) -> str:
        ms = int(now.timestamp() * 1000)
        if ms <= self._last_ms:
            ms, rand = self._last_ms, (self._last_rand + 1) % (1 << 80)
        else:
            rand = self.random_bits(80)
        self._last_ms, self._last_rand = ms, rand
        return "evt_" + _b32(ms, 10) + _b32(rand, 16)


@dataclass(frozen=True)
class Event:
    """One event before it is stored; `envelope()` is what handlers receive."""

    id: str
    type: str
    created_at: str
    recording_id: str
    data: dict[str, Any]
    previous: dict[str, Any]
    media: dict[str, Any] | None = None
    project: str = DEFAULT_PROJECT

    def envelope(self) -> dict[str, Any]:
        env: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "created_at": self.created_at,
            "project": self.project,
            "data": self.data,
            "previous": self.previous,
        }
        if self.media is not None:
            env["media"] = self.media
        return env


def matches(event_type: str, patterns: Iterable[str]) -> bool:
    """Whether a handler's glob patterns (`recording.*`, `*`) take this event type."""
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)

class EventFactory:
    """Builds events with one timestamp and fresh ids: `make(type, data, previous, media)`."""

    def __init__(self, new_id: Callable[[], str], now: str,
                 project: str = DEFAULT_PROJECT) -> None:
        self._new_id = new_id
        self.now = now
        self.project = project

    def make(
        self,
        type_: str,
        data: dict[str, Any],
        previous: dict[str, Any] | None = None,
        media: dict[str, Any] | None = None,
    ) -> Event:
        return Event(
            id=self._new_id(), type=type_, created_at=self.now, recording_id=str(data["id"]),
            data=data, previous=previous or {}, media=media, project=self.project,
        )
