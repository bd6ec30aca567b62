"""Pure builders of plausible recordings and media items, driven by a seeded `Random`.

Times are Unix milliseconds in, ISO strings out, so a world built from the same seed
and start is the same byte for byte.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botasync.simulator.clock import iso_ms

ALNUM = string.ascii_letters + string.digits
STATUSES = ("pending", "uploaded", "processing", "completed", "failed")
IN_FLIGHT = ("pending", "uploaded", "processing")
MIME_TYPES: dict[str, tuple[str, ...]] = {
    "audio": ("audio/opus", "audio/opus", "audio/opus", "audio/mpeg", "audio/wav", "audio/mp4"),
    "image": ("image/jpeg", "image/jpeg", "image/png"),
    "video": ("video/mp4",),
}
NAMES = (
    "Product interview - {who}", "Weekly standup", "Sales call with {org}", "1:1 with {who}",
    "Site visit - {org}", "Customer support call", "Design review", "Field notes",
    "Onboarding session - {who}", "Quarterly planning",
)
PEOPLE = ("Jane Doe", "Ravi Patel", "Mei Chen", "Lukas Weber", "Amara Okafor", "Sofia Rossi")
ORGS = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries")
MEETING_TYPES = ("interview", "standup", "sales", "support", "review", "visit")
LOCATIONS = ("office", "remote", "client site", "warehouse", "car")
LANGUAGES = ("en", "en", "en", "de", "fr", "es")
MINUTE_MS = 60_000


_TO_ALNUM = bytes((ALNUM * 5)[:256], "ascii")  # byte -> a letter or digit (bias is harmless)


def new_id(rng: random.Random, prefix: str, length: int = 14) -> str:
    """A random id such as `rec_4fQz...`: the prefix, then letters and digits."""
    return prefix + rng.randbytes(length).translate(_TO_ALNUM).decode("ascii")


@dataclass(frozen=True)
class Cast:
    """The devices and end users a world's recordings are spread over."""

    devices: tuple[str, ...]
    end_users: tuple[str, ...]

    @classmethod
    def generate(cls, rng: random.Random, devices: int = 6, end_users: int = 4) -> Cast:
        """A few devices and end users with random ids."""
        return cls(
            devices=tuple(new_id(rng, "dev_", 10) for _ in range(devices)),
            end_users=tuple(new_id(rng, "eu_", 10) for _ in range(end_users)),
        )


def file_size(rng: random.Random, media_type: str, max_bytes: int) -> int:
    """A plausible size for a file of that type, never above `max_bytes`."""
    low = max(1, max_bytes // (16 if media_type == "audio" else 32))
    high = max_bytes if media_type != "image" else max(low, max_bytes // 2)
    return rng.randint(min(low, high), high)


def media_item(
    rng: random.Random, media_type: str, *, status: str, created_ms: int,
    captured_ms: int | None, max_bytes: int,
) -> dict[str, Any]:
    """One media item; a pending one has no bytes yet, so its size is 0."""
    return {
        "id": new_id(rng, "med_"),
        "type": media_type,
        "mime_type": rng.choice(MIME_TYPES[media_type]),
        "file_size_bytes": file_size(rng, media_type, max_bytes) if status == "uploaded" else 0,
        "status": status,
        "captured_at": None if captured_ms is None else iso_ms(captured_ms),
        "created_at": iso_ms(created_ms),
    }


def random_name(rng: random.Random) -> str | None:
    """A human-readable name, or None for the recordings nobody named."""
    if rng.random() < 0.15:
        return None
    return rng.choice(NAMES).format(who=rng.choice(PEOPLE), org=rng.choice(ORGS))


def random_metadata(rng: random.Random) -> dict[str, Any] | None:
    """A small key/value object, or None for the recordings that have none."""
    if rng.random() < 0.3:
        return None
    meta: dict[str, Any] = {"meeting_type": rng.choice(MEETING_TYPES)}
    if rng.random() < 0.6:
        meta["location"] = rng.choice(LOCATIONS)
    if rng.random() < 0.2:
        meta["tags"] = rng.sample(["urgent", "follow-up", "internal", "customer"], k=2)
    return meta


def _extra_media(
    rng: random.Random, started_ms: int, ended_ms: int, created_ms: int, max_bytes: int,
) -> list[dict[str, Any]]:
    """Zero to two images or videos captured during the recording, mostly uploaded."""
    items = []
    for _ in range(rng.choices((0, 1, 2), weights=(70, 20, 10))[0]):
        kind = "image" if rng.random() < 0.8 else "video"
        captured = None if rng.random() < 0.1 else rng.randint(started_ms, ended_ms)
        status = "uploaded" if rng.random() < 0.95 else "pending"
        items.append(media_item(rng, kind, status=status, created_ms=created_ms + MINUTE_MS,
                                captured_ms=captured, max_bytes=max_bytes))
    return items


def recording(
    rng: random.Random, cast: Cast, *, created_ms: int, status: str, max_bytes: int,
) -> dict[str, Any]:
    """A recording in `status` whose fields agree with each other (media, duration, times)."""
    duration = rng.randint(20_000, 2 * 3_600_000)
    ended = created_ms - rng.randint(MINUTE_MS, 6 * 60 * MINUTE_MS)
    started = ended - duration
    uploaded = status != "pending"
    media: list[dict[str, Any]] = []
    if status == "pending" or rng.random() > 0.03:  # a few finished ones have no media at all
        media.append(media_item(rng, "audio", status="uploaded" if uploaded else "pending",
                                created_ms=created_ms, captured_ms=started, max_bytes=max_bytes))
    if uploaded and media:
        media.extend(_extra_media(rng, started, ended, created_ms, max_bytes))
    completed = status == "completed" and rng.random() < 0.85
    item: dict[str, Any] = {
        "id": new_id(rng, "rec_"),
        "device_id": None if rng.random() < 0.03 else rng.choice(cast.devices),
        "end_user_id": rng.choice(cast.end_users),
        "name": random_name(rng),
        "status": status,
        "duration_ms": duration if uploaded else None,
        "started_at": iso_ms(started),
        "ended_at": iso_ms(ended),
        "transcription_id": new_id(rng, "txn_") if completed else None,
        "media": media,
        "metadata": random_metadata(rng),
        "created_at": iso_ms(created_ms),
    }
    if rng.random() < 0.1:  # a field the contract does not document: clients must keep it
        item["language"] = rng.choice(LANGUAGES)
    return item


def duration_of(item: dict[str, Any]) -> int | None:
    """The recording's length in ms from its start and end, or None if they are unusable."""
    try:
        start = datetime.fromisoformat(str(item["started_at"]))
        end = datetime.fromisoformat(str(item["ended_at"]))
    except (KeyError, ValueError):
        return None
    return max(0, round((end - start).total_seconds() * 1000))


def upload_media(rng: random.Random, media: dict[str, Any], max_bytes: int) -> None:
    """Mark a media item uploaded, giving it a size if it had none yet."""
    media["status"] = "uploaded"
    if not media.get("file_size_bytes"):
        media["file_size_bytes"] = file_size(rng, str(media.get("type", "audio")), max_bytes)


def advance(rng: random.Random, item: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """Move an in-flight recording one lifecycle step on; the item is changed in place."""
    status = item.get("status")
    if status == "pending":
        item["status"] = "uploaded"
        for media in item.get("media") or []:
            if media.get("type") == "audio":
                upload_media(rng, media, max_bytes)
        item["duration_ms"] = duration_of(item)
    elif status == "uploaded":
        item["status"] = "processing"
    elif status == "processing":
        if rng.random() < 0.9:
            item["status"] = "completed"
            if rng.random() < 0.9:
                item["transcription_id"] = new_id(rng, "txn_")
        else:
            item["status"] = "failed"
    return item
