"""The deployed dialect's recordings: pure builders and lifecycle steps, and list cursors.

A deployed recording is one stored object per recording (no `media[]`): its file's size
(a decimal string), sha256 and a signed `audio_url` sit at the top level, and
`updated_at` moves with every change. While a recording is held by the world its
`audio_url` is `AUDIO_MARK`; the server swaps in a newly signed URL on every answer.
Times are Unix milliseconds in, ISO strings out, as in `archive`.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
from collections.abc import Collection
from typing import Any

from botasync.simulator.archive import (
    MINUTE_MS,
    Cast,
    file_size,
    new_id,
    random_metadata,
    random_name,
)
from botasync.simulator.clock import iso_ms
from botasync.simulator.files import recording_sha256

STATUSES = ("pending", "streaming", "uploaded", "processing", "completed", "failed",
            "integrity_failure")
IN_FLIGHT = ("pending", "streaming", "uploaded", "processing")
NO_FILE = ("pending", "streaming")  # no audio stored yet: audio_url is null
SOURCES = ("device", "app_import", "api_upload")
SOURCE_WEIGHTS = (85, 10, 5)
AUDIO_MARK = "\x00audio_url"  # stands for "sign a URL to this recording's file when served"
# What the download-url answer says about the file, per source: its content type and
# whether the size comes as a decimal string, an integer or not at all.
DOWNLOAD_FORMS: dict[str, tuple[str | None, type[str] | type[int] | None]] = {
    "device": ("audio/ogg", str), "app_import": ("audio/mp4", int), "api_upload": (None, None),
}
CURSOR_RE = re.compile(r"v1\.([0-9]{1,6})\.(-?[0-9]{1,400})")


def has_file(item: dict[str, Any]) -> bool:
    """Whether the recording's audio is stored (so it has a URL and can be downloaded)."""
    return item.get("status") not in NO_FILE and file_size_of(item) is not None


def file_size_of(item: dict[str, Any]) -> int | None:
    """`file_size_bytes` as an integer (it is sent as a decimal string), or None."""
    raw = item.get("file_size_bytes")
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw >= 0 else None
    if isinstance(raw, str) and raw.isdigit() and raw.isascii():
        return int(raw)
    return None


def download_form(item: dict[str, Any], size: int) -> tuple[str | None, int | str | None]:
    """(content_type, file_size_bytes) as the download-url answer sends them."""
    content_type, size_type = DOWNLOAD_FORMS.get(str(item.get("source")), (None, None))
    return content_type, None if size_type is None else size_type(size)


def settle(
    rng: random.Random, item: dict[str, Any], max_bytes: int, given: Collection[str] = (),
) -> None:
    """Make the file fields agree with the status; the fields named in `given` stay as set.

    A recording past pending/streaming has a stored file: a size (made up if it has
    none), the sha256 of the bytes its URL serves, a duration and the URL mark.
    """
    if item.get("status") in NO_FILE:
        if "audio_url" not in given:
            item["audio_url"] = None
        return
    if file_size_of(item) is None and "file_size_bytes" not in given:
        item["file_size_bytes"] = str(file_size(rng, "audio", max_bytes))
    size = file_size_of(item)
    if size is not None and "content_sha256" not in given and (
            item.get("content_sha256") is None or "file_size_bytes" in given):
        item["content_sha256"] = recording_sha256(str(item["id"]), size)
    if item.get("duration_seconds") is None and "duration_seconds" not in given:
        item["duration_seconds"] = rng.randint(20, 7200)
    if "audio_url" not in given:
        item["audio_url"] = AUDIO_MARK if size is not None else None


def recording(
    rng: random.Random, cast: Cast, project_id: str, *, created_ms: int, now_ms: int,
    status: str, max_bytes: int,
) -> dict[str, Any]:
    """A recording in `status` whose fields agree with each other (file, hash, times)."""
    source = rng.choices(SOURCES, SOURCE_WEIGHTS)[0]
    duration_s = rng.randint(20, 7200)
    recorded = created_ms - rng.randint(1, 360) * MINUTE_MS - duration_s * 1000
    updated = created_ms if status == "pending" else min(
        now_ms, created_ms + rng.randint(5, 1800) * 1000)
    item: dict[str, Any] = {
        "id": new_id(rng, "rec_"),
        "project_id": project_id,
        "device_id": None if source == "api_upload" or rng.random() < 0.03 else rng.choice(
            cast.devices),
        "end_user_id": None if rng.random() < 0.05 else rng.choice(cast.end_users),
        "name": random_name(rng),
        "status": status,
        "duration_seconds": None,
        "recorded_at": None if source == "api_upload" and rng.random() < 0.5 else iso_ms(
            recorded),
        "file_size_bytes": None,
        "content_sha256": None,
        "content_sha256_verified_at": None,
        "source": source,
        "audio_url": None,
        "metadata": random_metadata(rng),
        "created_at": iso_ms(created_ms),
        "updated_at": iso_ms(max(created_ms, updated)),
    }
    if status not in NO_FILE:
        item["duration_seconds"] = duration_s
        settle(rng, item, max_bytes)
    if status in ("processing", "completed", "failed"):
        item["content_sha256_verified_at"] = iso_ms(max(created_ms, updated - 1000))
    return item


def advance(
    rng: random.Random, item: dict[str, Any], max_bytes: int, now_ms: int,
) -> dict[str, Any]:
    """Move an in-flight recording one lifecycle step on; the item is changed in place.

    pending -> streaming (devices, mostly) or uploaded; streaming -> uploaded;
    uploaded -> processing (the hash checked) or integrity_failure; processing ->
    completed or failed. The caller bumps `updated_at`.
    """
    status = item.get("status")
    if status == "pending" and item.get("source") == "device" and rng.random() < 0.7:
        item["status"] = "streaming"
    elif status in ("pending", "streaming"):
        item["status"] = "uploaded"
        settle(rng, item, max_bytes)
    elif status == "uploaded":
        if rng.random() < 0.9:
            item["status"] = "processing"
            item["content_sha256_verified_at"] = iso_ms(now_ms)
        else:
            item["status"] = "integrity_failure"
    elif status == "processing":
        item["status"] = "completed" if rng.random() < 0.9 else "failed"
    return item


# -- list cursors ----------------------------------------------------------------------------


class InvalidCursor(ValueError):
    """A `cursor` parameter that this server did not make."""


def encode_cursor(epoch: int, rank: int) -> str:
    """An opaque cursor naming the list position just below `rank` (in rank `epoch`)."""
    raw = f"v1.{epoch}.{rank}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[int, int]:
    """(epoch, rank) of a cursor made by `encode_cursor`, or InvalidCursor."""
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        match = CURSOR_RE.fullmatch(raw.decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(cursor) from None
    if match is None:
        raise InvalidCursor(cursor)
    return int(match[1]), int(match[2])
