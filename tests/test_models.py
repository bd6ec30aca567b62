"""Reading recordings in either dialect: liberal in what is accepted, strict only on ids."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from botasync.api.dialect import Learned
from botasync.api.models import InvalidItem, parse_recording
from botasync.sync.fingerprint import fingerprint, is_signed_url, stable

DEPLOYED: dict[str, Any] = {
    "id": "rec_a1", "project_id": "proj_1", "device_id": None, "end_user_id": "eu_1",
    "name": "Standup", "status": "streaming", "duration_seconds": 12, "recorded_at": None,
    "file_size_bytes": "12345", "content_sha256": "ab" * 32,
    "content_sha256_verified_at": None, "source": "device",
    "audio_url": "https://files.example/rec_a1.ogg?X-Amz-Expires=3600&X-Amz-Signature=abc",
    "metadata": {"k": "v"}, "created_at": "2026-10-01T12:00:00.000Z",
    "updated_at": "2026-10-01T12:05:00+00:00",
}


def test_deployed_shape_is_read_column_by_column() -> None:
    """Seconds become milliseconds, a decimal-string size a number, the rest as sent."""
    rec = parse_recording(DEPLOYED)
    assert (rec.status, rec.duration_ms, rec.file_size_bytes) == ("streaming", 12000, 12345)
    assert (rec.source, rec.project_id, rec.recorded_at) == ("device", "proj_1", None)
    assert rec.updated_at == "2026-10-01T12:05:00Z"
    assert rec.media is None and rec.transcription_id is None


@pytest.mark.parametrize(("field", "value", "column", "stored"), [
    ("status", "archived", "status", "archived"),
    ("status", None, "status", "unknown"),
    ("duration_ms", "long", "duration_ms", None),
    ("duration_ms", "1500", "duration_ms", 1500),
    ("duration_ms", -5, "duration_ms", None),
    ("duration_seconds", "2.5", "duration_ms", 2500),
    ("name", 42, "name", "42"),
    ("name", ["x"], "name", None),
    ("metadata", "text", "metadata", None),
    ("created_at", "yesterday", "created_at", None),
    ("file_size_bytes", "1e3", "file_size_bytes", 1000),
    ("file_size_bytes", "NaN", "file_size_bytes", None),
    ("file_size_bytes", True, "file_size_bytes", None),
])
def test_a_value_botasync_cannot_read_is_null_never_a_dropped_recording(
    field: str, value: Any, column: str, stored: Any,
) -> None:
    """Every odd value is read as something: the recording is always mirrored."""
    rec = parse_recording({"id": "rec_x", "status": "completed", field: value})
    assert getattr(rec, column) == stored


@pytest.mark.parametrize("bad", [None, "", "rec_", "med_1", "rec_../../x", "rec_a/b", "rec_a b",
                                 "rec_" + "a" * 129, 7, "rec_a\x00", "REC_a"])
def test_only_an_unusable_id_makes_an_item_unmirrorable(bad: Any) -> None:
    """An id that could not serve as a file name or URL path segment is refused."""
    with pytest.raises(InvalidItem):
        parse_recording({"id": bad, "status": "completed"})


def test_media_items_with_unusable_ids_stay_in_raw_only() -> None:
    item = {"id": "rec_m", "status": "completed", "media": [
        {"id": "med_ok", "type": "audio", "status": "uploaded", "file_size_bytes": "10"},
        {"id": "../evil", "type": "audio"}, "nonsense"]}
    rec = parse_recording(item)
    files = rec.files(item)
    assert files is not None and [m.id for m, _ in files] == ["med_ok"]
    assert files[0][0].file_size_bytes == 10


def test_the_deployed_recording_file_is_one_media_row_with_the_recordings_id() -> None:
    """Uploaded once the recording has a file; the expected sha256 kept with it."""
    rec = parse_recording(DEPLOYED)
    files = rec.files(DEPLOYED)
    assert files is not None
    (media, raw), = files
    assert (media.id, media.type, media.status, media.file_size_bytes) == (
        "rec_a1", "audio", "uploaded", 12345)
    assert raw["sha256"] == "ab" * 32 and raw["recording_file"] is True
    waiting = {**DEPLOYED, "audio_url": None, "status": "pending"}
    files = parse_recording(waiting).files(waiting)
    assert files is not None and files[0][0].status == "pending"
    assert parse_recording({"id": "rec_b", "status": "completed"}).files({}) is None


def test_fingerprint_ignores_a_newly_signed_url_and_nothing_else() -> None:
    """The deployed API signs `audio_url` anew on every answer: the same recording."""
    again = {**DEPLOYED, "audio_url": DEPLOYED["audio_url"].replace("abc", "def")}
    assert fingerprint(again) == fingerprint(DEPLOYED)
    moved = {**DEPLOYED, "audio_url": "https://files.example/other.ogg?X-Amz-Signature=abc"}
    assert fingerprint(moved) != fingerprint(DEPLOYED)
    assert fingerprint({**DEPLOYED, "updated_at": "2026-10-02T00:00:00Z"}) != fingerprint(DEPLOYED)
    link = {"metadata": {"doc": "https://example.org/a?page=2"}}
    assert stable(link) == link  # a plain URL with a query is data, not a signature
    nested = {"metadata": {"thumb": "https://cdn.example/t.png?Expires=1&Signature=x"}}
    assert stable(nested) == {"metadata": {"thumb": "https://cdn.example/t.png"}}


@given(st.text(), st.text())
def test_signed_urls_fingerprint_by_address(sig1: str, sig2: str) -> None:
    """Any two signatures of one address give one fingerprint."""
    a = {"id": "rec_1", "audio_url": f"https://h/p?sig={sig1}"}
    b = {"id": "rec_1", "audio_url": f"https://h/p?sig={sig2}"}
    assert fingerprint(a) == fingerprint(b)
    assert is_signed_url(f"https://h/p?X-Amz-Signature={sig1}&x=1")


def test_learned_detail_keys_decide_what_a_new_list_item_needs() -> None:
    """A list item is the record until a detail is seen to carry more."""
    learned = Learned()
    assert not learned.wants_detail({"id": "rec_1"})
    listed = {"id": "rec_1", "status": "completed"}
    learned = learned.compared(listed, {**listed, "media": [], "audio_url": "u"},
                               frozenset({"audio_url"}))
    assert learned.detail_keys == {"media"}
    assert learned.wants_detail(listed) and not learned.wants_detail({**listed, "media": []})
    assert Learned.from_state(learned.to_state()) == learned
    assert learned.compared(listed, listed).detail_keys == frozenset()  # keeps learning
    assert Learned.from_state("not json") == Learned()
