"""diff(stored recording or nothing, new recording) -> the events that change means.

Pure: no I/O, the clock and the id source come in. Fields are compared as received
(a missing key and `null` are the same), so the `previous` values of the events,
laid over the new recording, give back the old one.
"""

from __future__ import annotations

from typing import Any

from botasync import envelope as ev
from botasync.envelope import Event, EventFactory

# documented fields that `recording.updated` reports (status and media have their own events,
# but media changes are reported in `recording.updated` too, as `previous.media`)
UPDATE_FIELDS = (
    "device_id", "end_user_id", "name", "duration_ms", "started_at", "ended_at",
    "transcription_id", "metadata", "created_at", "media",
    # the deployed dialect's own fields (`updated_at` changes with any of them, and a
    # signed `audio_url` with every answer: neither is a change worth an event)
    "duration_seconds", "recorded_at", "file_size_bytes", "content_sha256", "source",
    "project_id",
)




def diff(
    old: dict[str, Any] | None, new: dict[str, Any], make: EventFactory, *, backfill: bool = False
) -> list[Event]:
    """The events between the stored recording `old` (None: never seen) and `new`."""
    if old is None:
        return _created(new, make, backfill=backfill)
    out: list[Event] = []
    out += _status_events(old, new, make)
    out += _transcribed(old, new, make)
    changed = {f: old.get(f) for f in UPDATE_FIELDS if old.get(f) != new.get(f)}
    if _is_transcribed(old, new):
        changed.pop("transcription_id", None)
    if changed:
        out.append(make.make(ev.RECORDING_UPDATED, new, changed))
    out += _media_events(old.get("media"), new.get("media"), new, make)
    return out


def deleted(old: dict[str, Any], make: EventFactory) -> Event:
    """The event for a recording confirmed gone; `data` is its last stored state."""
    return make.make(ev.RECORDING_DELETED, old)


def _created(new: dict[str, Any], make: EventFactory, *, backfill: bool) -> list[Event]:
    """First sight: `recording.created`; outside a backfill also its status and transcript.

    A recording that went from pending to completed between two polls is first seen
    completed; a handler waiting for `recording.completed` must still hear of it.
    """
    out = [make.make(ev.RECORDING_CREATED, new)]
    if backfill:
        return out
    status = new.get("status")
    named = ev.status_event(status) if status != "pending" else None  # pending: the start
    if named:
        out.append(make.make(named, new, {"status": None}))
    if new.get("transcription_id") is not None:
        out.append(make.make(ev.RECORDING_TRANSCRIBED, new, {"transcription_id": None}))
    return out


def _status_events(old: dict[str, Any], new: dict[str, Any], make: EventFactory) -> list[Event]:
    if old.get("status") == new.get("status"):
        return []
    previous = {"status": old.get("status")}
    out = [make.make(ev.RECORDING_STATUS_CHANGED, new, previous)]
    named = ev.status_event(new.get("status"))
    if named:
        out.append(make.make(named, new, dict(previous)))
    return out


def _is_transcribed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return old.get("transcription_id") is None and new.get("transcription_id") is not None


def _transcribed(old: dict[str, Any], new: dict[str, Any], make: EventFactory) -> list[Event]:
    if not _is_transcribed(old, new):
        return []
    return [make.make(ev.RECORDING_TRANSCRIBED, new, {"transcription_id": None})]


def _media_events(
    old_media: Any, new_media: Any, new: dict[str, Any], make: EventFactory
) -> list[Event]:
    """`media.created` for a new item, `media.uploaded` when one became uploaded."""
    old_by_id = _by_id(old_media)
    out: list[Event] = []
    for item in new_media if isinstance(new_media, list) else []:
        if not isinstance(item, dict):
            continue
        before = old_by_id.get(item.get("id"))
        if before is None:
            out.append(make.make(ev.MEDIA_CREATED, new, {}, media=item))
            if item.get("status") == "uploaded":
                out.append(make.make(ev.MEDIA_UPLOADED, new, {"status": None}, media=item))
        elif item.get("status") == "uploaded" and before.get("status") != "uploaded":
            prev = {"status": before.get("status")}
            out.append(make.make(ev.MEDIA_UPLOADED, new, prev, media=item))
    return out


def _by_id(media: Any) -> dict[Any, dict[str, Any]]:
    if not isinstance(media, list):
        return {}
    return {m.get("id"): m for m in media if isinstance(m, dict)}
