"""diff(old, new) -> events: case tables and properties."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from botasync import envelope as ev
from botasync.envelope import EventFactory, EventIds, utc_now
from botasync.sync.diff import UPDATE_FIELDS, deleted, diff


def factory() -> EventFactory:
    counter = itertools.count()
    return EventFactory(lambda: f"evt_{next(counter):06d}", "2026-01-01T00:00:00.000Z")


def rec(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "rec_1", "device_id": "dev_1", "end_user_id": "eu_1", "name": "a",
        "status": "processing", "duration_ms": 1000, "started_at": "2025-01-01T00:00:00Z",
        "ended_at": "2025-01-01T00:01:00Z", "transcription_id": None,
        "media": [{"id": "med_1", "type": "audio", "status": "uploaded"}],
        "metadata": {"k": "v"}, "created_at": "2025-01-01T00:02:00Z",
    }
    base.update(kw)
    return base


def types(events: list[ev.Event]) -> list[str]:
    return [e.type for e in events]


def test_same_recording_no_events() -> None:
    """No change, no event."""
    assert diff(rec(), rec(), factory()) == []


def test_unknown_field_change_no_events() -> None:
    """A field the contract does not document changing is mirrored but announces nothing."""
    assert diff(rec(language="en"), rec(language="de"), factory()) == []


def test_created_live_and_backfill() -> None:
    """First sight: created, plus status and transcript outside a backfill."""
    new = rec(status="completed", transcription_id="txn_1")
    assert types(diff(None, new, factory())) == [
        ev.RECORDING_CREATED, ev.RECORDING_COMPLETED, ev.RECORDING_TRANSCRIBED]
    assert types(diff(None, new, factory(), backfill=True)) == [ev.RECORDING_CREATED]
    assert types(diff(None, rec(status="pending"), factory())) == [ev.RECORDING_CREATED]


def test_completed_with_transcript() -> None:
    """processing -> completed with a transcript: status_changed, completed, transcribed."""
    out = diff(rec(), rec(status="completed", transcription_id="txn_9"), factory())
    assert types(out) == [ev.RECORDING_STATUS_CHANGED, ev.RECORDING_COMPLETED,
                          ev.RECORDING_TRANSCRIBED]
    assert out[0].previous == {"status": "processing"}
    assert out[1].previous == {"status": "processing"}
    assert out[2].previous == {"transcription_id": None}
    assert all(e.data["status"] == "completed" for e in out)


def test_status_to_each_named_event() -> None:
    """Each status has its own event, the seven known and any other plain word."""
    for status, named in ev.STATUS_EVENTS.items():
        out = diff(rec(status="completed"), rec(status=status), factory())
        want = [] if status == "completed" else [ev.RECORDING_STATUS_CHANGED, named]
        assert types(out) == want
    out = diff(rec(status="uploaded"), rec(status="archived"), factory())
    assert types(out) == [ev.RECORDING_STATUS_CHANGED, "recording.archived"]
    for odd in ("Archived!", "deleted", "", 7):  # no event may impersonate another type
        out = diff(rec(status="uploaded"), rec(status=odd), factory())
        assert types(out) == [ev.RECORDING_STATUS_CHANGED]


def test_a_new_pending_recording_is_just_created() -> None:
    """Pending is where a recording starts: first sight of one is `recording.created` alone."""
    assert types(diff(None, rec(status="pending"), factory())) == [ev.RECORDING_CREATED]
    assert types(diff(None, rec(status="streaming", transcription_id=None), factory())) == [
        ev.RECORDING_CREATED, ev.RECORDING_STREAMING]


def test_rename_and_metadata_are_one_update() -> None:
    """Other fields changing make one recording.updated with their old values."""
    out = diff(rec(), rec(name="b", metadata=None), factory())
    assert types(out) == [ev.RECORDING_UPDATED]
    assert out[0].previous == {"name": "a", "metadata": {"k": "v"}}


def test_media_created_and_uploaded() -> None:
    """A new media item and one that became uploaded have their events."""
    old = rec(media=[{"id": "med_1", "type": "audio", "status": "pending"}])
    new = rec(media=[{"id": "med_1", "type": "audio", "status": "uploaded"},
                     {"id": "med_2", "type": "image", "status": "pending"}])
    out = diff(old, new, factory())
    assert types(out) == [ev.RECORDING_UPDATED, ev.MEDIA_UPLOADED, ev.MEDIA_CREATED]
    assert out[1].media == new["media"][0] and out[1].previous == {"status": "pending"}
    assert out[2].media == new["media"][1]
    assert out[0].previous == {"media": old["media"]}


def test_deleted_carries_last_state() -> None:
    """recording.deleted carries the last stored state."""
    e = deleted(rec(), factory())
    assert e.type == ev.RECORDING_DELETED and e.data == rec() and e.previous == {}


def test_envelope_shape() -> None:
    """The envelope has Bota's webhook keys and the project it came from."""
    e = diff(None, rec(), factory())[0]
    assert set(e.envelope()) == {"id", "type", "created_at", "project", "data", "previous"}
    assert e.envelope()["project"] == "default"


def test_event_ids_sort_in_creation_order() -> None:
    """Ids made by one generator sort in the order they were made."""
    ids = EventIds()
    now = utc_now()
    made = [ids.new(now) for _ in range(200)]
    assert made == sorted(made) and len(set(made)) == 200
    assert all(i.startswith("evt_") and len(i) == 30 for i in made)


values = st.one_of(st.none(), st.integers(0, 5), st.text(max_size=3))
statuses = st.sampled_from(["pending", "uploaded", "processing", "completed", "failed"])
media_items = st.lists(
    st.fixed_dictionaries({"id": st.sampled_from(["med_1", "med_2", "med_3"]),
                           "type": st.just("audio"),
                           "status": st.sampled_from(["pending", "uploaded"])}),
    max_size=3, unique_by=lambda m: m["id"])


@st.composite
def recordings(draw: st.DrawFn) -> dict[str, Any]:
    r: dict[str, Any] = {f: draw(values) for f in UPDATE_FIELDS if f != "media"}
    r["transcription_id"] = draw(st.one_of(st.none(), st.sampled_from(["txn_1", "txn_2"])))
    r.update(id="rec_1", status=draw(statuses), media=draw(media_items))
    return r


@given(recordings(), recordings())
def test_previous_over_new_gives_old(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Laying every event's `previous` over the new recording gives back the old one."""
    out = diff(old, new, factory())
    rebuilt = dict(new)
    for e in out:
        if not e.type.startswith("media."):
            rebuilt.update(e.previous)
    assert rebuilt == old
    assert (out == []) == (old == new)


@given(recordings())
def test_no_change_no_event(r: dict[str, Any]) -> None:
    """diff(x, x) is empty."""
    assert diff(r, dict(r), factory()) == []


@given(recordings(), recordings())
def test_status_events_iff_status_changed(old: dict[str, Any], new: dict[str, Any]) -> None:
    """status_changed appears exactly when the status changed, once, with the old status."""
    out = [e for e in diff(old, new, factory()) if e.type == ev.RECORDING_STATUS_CHANGED]
    if old["status"] == new["status"]:
        assert out == []
    else:
        assert len(out) == 1 and out[0].previous == {"status": old["status"]}
