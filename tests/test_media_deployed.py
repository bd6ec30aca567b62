"""Media files of the deployed dialect: the learned download-url form, the recording's own
file (its sha256, a size or a content type the API leaves out) and hostile answers.

The rig and the helpers are `tests/test_media.py`'s; the tests that run the same in both
dialects are there.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from botasync import config
from botasync.api.budget import RequestBudget
from botasync.api.client import BotaClient
from botasync.errors import ApiError
from botasync.media import files as fs
from botasync.media.downloader import (
    FORM_KEY,
    Downloader,
    Form,
    expected_sha256,
    first_form,
    learned_form,
    try_other,
)
from botasync.simulator import Dialect, World, recording_bytes
from botasync.simulator import deployed as sim_deployed
from botasync.store.sqlite import Mirror
from tests import test_media
from tests.conftest import SimulatorFactory
from tests.test_media import (
    KEY,
    Rig,
    RigFactory,
    assert_landed,
    db_rows,
    file_requests,
    on_disk,
    one_file,
    url_calls,
    url_methods,
    wanted,
)

# the media rig's fixtures, shared with test_media.py
rig_factory = test_media.rig_factory
dialect = test_media.dialect
rig_database = test_media.rig_database

# --- the form, as a case table --------------------------------------------------------------


@pytest.mark.parametrize(("learned", "media_id", "first"), [
    (None, "med_a", "POST"), (None, "rec_a", "GET"),
    ("GET", "med_a", "GET"), ("POST", "rec_a", "POST"), ("GET", "rec_a", "GET"),
])
def test_first_form(learned: Form | None, media_id: str, first: Form) -> None:
    """The learned form comes first; with none, a media item is POSTed and a recording's file GOT."""
    assert first_form(learned, media_id) == first


@pytest.mark.parametrize(("learned", "status", "other"), [
    (None, 405, True), (None, 404, True), ("GET", 405, True), ("POST", 405, True),
    ("GET", 404, False), ("POST", 404, False), (None, 400, False), (None, 500, False),
    (None, 401, False), (None, None, False),
])
def test_try_other(learned: Form | None, status: int | None, other: bool) -> None:
    """A 405 always asks for the other form; a 404 only until a form has worked."""
    assert try_other(learned, status) is other


@pytest.mark.parametrize(("tried", "learned"), [
    ([("GET", 200)], "GET"),
    ([("POST", 405), ("GET", 200)], "GET"),
    ([("GET", 404), ("POST", 405)], "GET"),  # the route is there, the file is not
    ([("POST", 405), ("GET", 404)], "GET"),
    ([("POST", 404), ("GET", 404)], None),  # two 404s say nothing of the route
    ([("POST", 405), ("GET", 405)], None),
    ([("GET", 404)], None),
    ([("GET", 500)], None),
    ([], None),
])
def test_learned_form(tried: list[tuple[Form, int]], learned: Form | None) -> None:
    """A form that worked is learned; so is a 404'd one whose other form got a 405."""
    assert learned_form(tried) == learned


@pytest.mark.parametrize(("value", "digest"), [
    ("ab" * 32, "ab" * 32), ("AB" * 32, "ab" * 32), (" " + "0" * 64 + "\n", "0" * 64),
    ("ab" * 31, None), ("zz" * 32, None), (None, None), (12, None), ("", None),
])
def test_expected_sha256(value: Any, digest: str | None) -> None:
    """Only a 64-digit hex string is a hash to check against; anything else is no hash."""
    assert expected_sha256(value) == digest


# --- the client reads the deployed answer ---------------------------------------------------


async def test_client_reads_the_deployed_answer(simulator_factory: SimulatorFactory) -> None:
    """GET gives a URL, its expiry from `expires_in`, the size as a number and a nullable type."""
    world = World(seed=7, recordings=0, dialect="deployed")
    sources = {s: world.create(status="completed", source=s) for s in sim_deployed.SOURCES}
    sim = await simulator_factory(world, download_rate_limit=None)
    cfg = config.load(env={}, overrides={"api": {"base_url": sim.url, "api_key": KEY}})
    async with BotaClient(cfg.api, download_budget=RequestBudget(None)) as client:
        got = {s: await client.get_download_url(r["id"]) for s, r in sources.items()}
        with pytest.raises(ApiError) as refused:
            await client.create_download_url(sources["device"]["id"], None)
    assert refused.value.status == 405
    now = time.time()
    for source, url in got.items():
        rec = sources[source]
        assert url.url.startswith(f"{sim.origin}/_files/{rec['id']}?")
        assert url.file_size_bytes == (None if source == "api_upload" else int(
            rec["file_size_bytes"]))
        assert url.content_type == {"device": "audio/ogg", "app_import": "audio/mp4",
                                    "api_upload": None}[source]
        assert url.media_id is None and url.expires_at is not None
        expires = datetime.fromisoformat(url.expires_at.replace("Z", "+00:00")).timestamp()
        assert abs(expires - (now + 3600)) < 30
        assert "sig=" not in repr(url)


# --- the learned form -----------------------------------------------------------------------


def add_file(world: World) -> str:
    """A new recording with one file to download; its file id."""
    rec = world.create(status="completed")
    if world.deployed:
        return str(rec["id"])
    media = rec["media"][0]
    world.update_media(rec["id"], media["id"], status="uploaded")
    return str(media["id"])


@contextlib.asynccontextmanager
async def restarted(rig: Rig) -> AsyncIterator[Downloader]:
    """The rig's downloader stopped and a new one (with a new client) on the same database."""
    await rig.downloader.aclose()
    async with BotaClient(rig.cfg.api, download_budget=RequestBudget(None)) as client:
        async with Downloader(rig.store, client, rig.cfg.media, retry_base_s=0.05,
                              retry_max_s=0.2, sweep_every_s=0) as dl:
            rig.syncer.on_commit = dl.notify
            yield dl


async def test_form_is_learned_and_remembered_across_restarts(
    rig_factory: RigFactory, dialect: Dialect
) -> None:
    """A database that remembers the other form asks in it once (405), then never again.

    That is a mirror whose API changed form (or whose base_url now names the other one):
    one refused request, and every later request, in this run and the next, is right.
    """
    world = World(seed=21, recordings=20, dialect=dialect)
    rig = await rig_factory(world, concurrency=4)
    right: Form = "GET" if world.deployed else "POST"
    wrong: Form = "POST" if world.deployed else "GET"
    await Mirror(rig.store).set_state(FORM_KEY, wrong)
    with capture_logs() as logs:
        await rig.sync_and_drain()
    calls = url_methods(rig.sim)
    assert calls[:2] == [(wrong, 405), (right, 200)]
    assert calls[2:] == [(right, 200)] * (len(wanted(world)) - 1)
    assert await Mirror(rig.store).get_state(FORM_KEY) == right
    assert [(e["form"], e["previous"]) for e in logs if e["event"] == "media.download_form"] == [
        (right, wrong)]
    assert_landed(rig, wanted(world))

    since = len(rig.sim.requests)
    new = [add_file(world) for _ in range(3)]
    async with restarted(rig) as dl:
        await rig.syncer.full()
        await dl.start()
        assert await dl.drain(30)
        assert url_methods(rig.sim, since) == [(right, 200)] * len(new)
        assert_landed(rig, wanted(world))


async def test_fresh_database_never_asks_in_the_wrong_form(
    rig_factory: RigFactory, dialect: Dialect
) -> None:
    """With nothing learned the row's kind picks the form: no refused request at all."""
    world = World(seed=22, recordings=30, dialect=dialect)
    rig = await rig_factory(world)
    await rig.sync_and_drain()
    right = "GET" if world.deployed else "POST"
    assert url_methods(rig.sim) == [(right, 200)] * len(wanted(world))
    assert await Mirror(rig.store).get_state(FORM_KEY) == right


# --- the recording's own file: sha256, size and type ----------------------------------------


def deployed_rig_world(**fields: Any) -> tuple[World, str]:
    """A deployed world holding one recording with a file (`fields` set on it)."""
    world = World(seed=31, recordings=0, dialect="deployed")
    rec = world.create(status="completed", **fields)
    return world, str(rec["id"])


async def test_a_file_that_does_not_hash_to_content_sha256_is_kept_and_said(
    rig_factory: RigFactory,
) -> None:
    """Bota's examples warn the stored object may be an encrypted container, not the bytes
    `content_sha256` names: the file lands, its own sha256 recorded, the difference said once."""
    world, rec = deployed_rig_world(source="device")
    world.update(rec, content_sha256="00" * 32)
    rig = await rig_factory(world, max_attempts=3)
    want = one_file(world)
    db = rig.cfg.database.path
    with capture_logs() as logs:
        await rig.syncer.full()
        await rig.downloader.start()
        assert await rig.downloader.drain(30)
    real = hashlib.sha256(want.data()).hexdigest()
    assert db_rows(db, f"SELECT m.sha256, r.content_sha256, m.download_error FROM media m "
                       f"JOIN recordings r ON r.id = m.recording_id WHERE m.id = '{rec}'") == [
        (real, "00" * 32, None)]
    assert file_requests(rig.sim) == [200]  # fetched once, not retried
    said = [e for e in logs if e.get("media_id") == rec and e["log_level"] != "debug"]
    assert [(e["event"], e["log_level"]) for e in said] == [
        ("media.sha256_differs", "warning"), ("media.downloaded", "info")]


async def test_uppercase_sha256_is_the_same_hash(rig_factory: RigFactory) -> None:
    """A content_sha256 sent in capitals is still the file's hash: the file lands."""
    world, rec = deployed_rig_world(source="app_import")
    world.update(rec, content_sha256=world.get(rec)["content_sha256"].upper())  # type: ignore[index]
    rig = await rig_factory(world)
    await rig.sync_and_drain()
    (landed,), = db_rows(rig.cfg.database.path, f"SELECT sha256 FROM media WHERE id = '{rec}'")
    assert landed == hashlib.sha256(recording_bytes(rec, int(
        world.get(rec)["file_size_bytes"]))).hexdigest()  # type: ignore[index]
    assert (rig.root / rec / f"{rec}.m4a").exists()


async def test_null_size_and_type_in_the_answer(rig_factory: RigFactory) -> None:
    """An answer without size or type: the mirror's size is checked, the file lands as .bin."""
    world, rec = deployed_rig_world(source="api_upload")
    rig = await rig_factory(world)
    await rig.sync_and_drain()
    want = one_file(world)
    assert want.ext == ".bin" and want.path(rig.root) == rig.root / rec / f"{rec}.bin"
    assert_landed(rig, wanted(world))


@pytest.mark.parametrize("sha_known", [True, False])
async def test_no_size_anywhere_takes_the_file_as_streamed(
    rig_factory: RigFactory, sha_known: bool
) -> None:
    """With no size from the answer or the mirror the file is taken as streamed, its size
    recorded; a known sha256 still checks it."""
    world, rec = deployed_rig_world(source="api_upload")
    rig = await rig_factory(world)
    want = one_file(world)
    await rig.syncer.full()
    forget = "file_size_bytes = NULL" + ("" if sha_known else ", raw = json_set(raw, '$.sha256', NULL)")
    async with rig.store.transaction() as conn:  # a recording object that said nothing of them
        await conn.execute(f"UPDATE media SET {forget} WHERE id = ?", (rec,))
    rig.sim.faults.queue("truncate", 1)  # and its transfer is cut once on the way
    await rig.downloader.start()
    assert await rig.downloader.drain(30)
    assert want.path(rig.root).read_bytes() == want.data()
    assert db_rows(rig.cfg.database.path,
                   f"SELECT local_size_bytes, sha256 FROM media WHERE id = '{rec}'") == [
        (want.size, want.sha256)]
    assert 206 in file_requests(rig.sim)


async def test_a_complete_part_left_by_a_crash_is_published_without_a_transfer(
    rig_factory: RigFactory,
) -> None:
    """A part already whole (a crash before its rename) is checked and published, not fetched."""
    world, rec = deployed_rig_world(source="device")
    rig = await rig_factory(world)
    want = one_file(world)
    await rig.syncer.full()
    part = fs.part_path(rig.root.resolve(), rec, rec)
    part.parent.mkdir(parents=True)
    part.write_bytes(want.data())
    await rig.downloader.start()
    assert await rig.downloader.drain(30)
    assert file_requests(rig.sim) == []
    assert_landed(rig, wanted(world))


async def test_a_published_file_left_by_a_crash_is_adopted(rig_factory: RigFactory) -> None:
    """A file already under its final name but not recorded is adopted once its hash checks."""
    world, _ = deployed_rig_world(source="device")
    rig = await rig_factory(world)
    want = one_file(world)
    await rig.syncer.full()
    final = want.path(rig.root.resolve())
    final.parent.mkdir(parents=True)
    final.write_bytes(want.data())
    stale = final.with_suffix(".bin")  # same name, other type, wrong bytes: not adopted
    stale.write_bytes(bytes(want.size))
    await rig.downloader.start()
    assert await rig.downloader.drain(30)
    assert url_calls(rig.sim) == []
    await rig.downloader.sweep()  # the other one is superseded by the recorded file
    assert_landed(rig, wanted(world))


# --- nothing the API sends writes outside files_dir -----------------------------------------

HOSTILE_TYPES = ["audio/../../x", "../../../../tmp/evil", "audio/x; name=../../y",
                 "/etc/passwd", "audio/" + "a" * 300, ".", "..", "audio/ogg/../../../z"]
HOSTILE_IDS = ["rec_../../evil", "../rec_evil", "rec_a/../../b", "rec_" + "a" * 200,
               "rec_.", "rec_evil\x00", "/tmp/rec_evil", "rec_a\\..\\..\\b"]


async def test_hostile_ids_and_content_types_stay_inside_files_dir(
    rig_factory: RigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids and content types built to climb out of files_dir land inside it, as `.bin`, or not at all."""
    world = World(seed=41, recordings=0, dialect="deployed")
    recs = []
    for i, ctype in enumerate(HOSTILE_TYPES):
        monkeypatch.setitem(sim_deployed.DOWNLOAD_FORMS, f"hostile{i}", (ctype, str))
        recs.append(world.create(status="completed", source=f"hostile{i}")["id"])
    template = world.get(recs[0])
    assert template is not None
    for bad in HOSTILE_IDS:
        world.put_raw({**template, "id": bad})
    outside_before = {p for p in tmp_path.rglob("*") if "files" not in p.parts}
    rig = await rig_factory(world)
    await rig.sync_and_drain()
    files_dir = rig.root.resolve()
    assert sorted(on_disk(files_dir)) == sorted(files_dir / r / f"{r}.bin" for r in recs)
    for rec in recs:
        assert (files_dir / rec / f"{rec}.bin").read_bytes() == recording_bytes(
            rec, int(world.get(rec)["file_size_bytes"]))  # type: ignore[index]
    outside = {p for p in tmp_path.rglob("*") if "files" not in p.parts} - outside_before
    assert {p.name for p in outside} <= {"botasync.db", "botasync.db-wal", "botasync.db-shm"}
    invalid = db_rows(rig.cfg.database.path, "SELECT invalid FROM sync_runs")
    assert sum(r[0] for r in invalid) == len(HOSTILE_IDS)
