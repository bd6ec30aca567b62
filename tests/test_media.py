"""Media files mirrored to disk: the download queue against the simulator over loopback.

The queue's tests run in both dialects where the dialect matters (`dialect` fixture): a
documented world's files are its uploaded media items, a deployed world's the one file
of each recording that has one, landing as `<rec_id>/<rec_id>.<ext>`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console
from structlog.testing import capture_logs

from botasync import config
from botasync.api.budget import RequestBudget
from botasync.api.client import BotaClient
from botasync.cli.files import files as files_cli
from botasync.errors import BotasyncError
from botasync.media import admin as media_admin
from botasync.media import files as fs
from botasync.media.downloader import Downloader, DownloadStats, _reason, orphans
from botasync.media.progress import download_progress, eta_seconds
from botasync.simulator import Dialect, Simulator, World, file_bytes, recording_bytes
from botasync.store.base import Database
from botasync.store.sqlite import Store
from botasync.sync.syncer import Syncer
from tests.conftest import SimulatorFactory, wait_for
from tests.pgserver import TestDb

KEY = "sk_test_botasync"
REPO = Path(__file__).resolve().parent.parent
# what the deployed download-url answer says each source's file is (bota-api.md): the
# extension it lands with; `api_upload` files come without a content type
DEPLOYED_EXT = {"device": ".ogg", "app_import": ".m4a", "api_upload": ".bin"}


@dataclass
class Rig:
    """A simulator, a store, a client, a syncer and a downloader wired as the app does."""

    sim: Simulator
    cfg: config.Config
    store: Database
    client: BotaClient
    syncer: Syncer
    downloader: Downloader
    database: TestDb

    @property
    def db(self) -> TestDb:
        return self.database

    @property
    def root(self) -> Path:
        return self.downloader.root

    async def sync_and_drain(self, timeout: float = 30.0) -> None:
        await self.syncer.full()
        await self.downloader.start()
        assert await self.downloader.drain(timeout)


RigFactory = Callable[..., Awaitable[Rig]]


def make_cfg(sim: Simulator, tmp_path: Path, database: TestDb | None = None,
             **media: Any) -> config.Config:
    media = {"download": True, "files_dir": str(tmp_path / "files"), "min_free_bytes": 0,
             "concurrency": 4, "requests_per_minute": 100_000, **media}
    return config.load(env={}, overrides={
        "api": {"base_url": sim.url, "api_key": KEY, "requests_per_minute": 100_000},
        "database": database.config if database else {"path": str(tmp_path / "botasync.db")},
        "media": media,
    })


@pytest.fixture
def rig_database(request: pytest.FixtureRequest, tmp_path: Path) -> TestDb:
    """The rig's database: a SQLite file, unless a test asks for both backends."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return TestDb("sqlite", tmp_path / "botasync.db")
    db: TestDb = request.getfixturevalue("pg_database")
    return db


both_backends = pytest.mark.parametrize("rig_database", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
async def rig_factory(
    tmp_path: Path, simulator_factory: SimulatorFactory, rig_database: TestDb,
) -> AsyncIterator[RigFactory]:
    """Build rigs; everything they opened is closed at teardown, newest first."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(world: World | None = None, *, sim: dict[str, Any] | None = None,
                       download_budget: RequestBudget | None = None, max_attempts: int = 10,
                       **media: Any) -> Rig:
            options = {"download_rate_limit": None, **(sim or {})}
            served = await simulator_factory(world or World(seed=5, recordings=40), **options)
            cfg = make_cfg(served, tmp_path, rig_database, **media)
            store = await rig_database.open()
            stack.push_async_callback(store.aclose)
            client = BotaClient(cfg.api, budget=RequestBudget(None),
                                download_budget=download_budget or RequestBudget(None),
                                backoff_base=0.01, backoff_cap=0.05)
            stack.push_async_callback(client.aclose)
            dl = Downloader(store, client, cfg.media, retry_base_s=0.05, retry_max_s=0.2,
                            sweep_every_s=0, max_attempts=max_attempts)
            stack.push_async_callback(dl.aclose)
            syncer = Syncer(cfg, client, store, on_commit=dl.notify)
            return Rig(served, cfg, store, client, syncer, dl, rig_database)

        yield make


@pytest.fixture(params=["documented", "deployed"])
def dialect(request: pytest.FixtureRequest) -> Dialect:
    """Each test that takes it runs against a world of each dialect."""
    return request.param  # type: ignore[no-any-return]


def uploaded(world: World, types: tuple[str, ...] = ("audio",)) -> dict[str, tuple[str, dict[str, Any]]]:
    """media id -> (recording id, item) of every uploaded item of these types (documented)."""
    return {m["id"]: (r["id"], m) for r in world.all() for m in r["media"]
            if m["status"] == "uploaded" and m["type"] in types}


@dataclass(frozen=True)
class Want:
    """A file the world holds that should land on disk: whose, its size, hash and extension."""

    file_id: str  # the media id; a deployed recording's own file has the recording's id
    recording_id: str
    size: int
    sha256: str
    ext: str

    @property
    def own(self) -> bool:
        return self.file_id == self.recording_id

    def data(self) -> bytes:
        if self.own:
            return recording_bytes(self.recording_id, self.size)
        return file_bytes(self.file_id, self.size)

    def path(self, root: Path) -> Path:
        return root / self.recording_id / f"{self.file_id}{self.ext}"


def wanted(world: World, types: tuple[str, ...] = ("audio",)) -> dict[str, Want]:
    """file id -> the file, for every file of these types the world can serve now."""
    if not world.deployed:
        return {med: Want(med, rec, m["file_size_bytes"], sha(med, m["file_size_bytes"]),
                          fs.extension_for(m["mime_type"]))
                for med, (rec, m) in uploaded(world, types).items()}
    return {r["id"]: Want(r["id"], r["id"], int(r["file_size_bytes"]), r["content_sha256"],
                          DEPLOYED_EXT[r["source"]])
            for r in world.all() if r["audio_url"] is not None and "audio" in types}


def one_file(world: World) -> Want:
    (want,) = wanted(world).values()
    return want


def sha(media_id: str, size: int) -> str:
    return hashlib.sha256(file_bytes(media_id, size)).hexdigest()


def on_disk(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != fs.LOCK_NAME)


def db_rows(db: str | TestDb, sql: str) -> list[tuple[Any, ...]]:
    if isinstance(db, TestDb):
        return db.rows(sql)
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def file_requests(sim: Simulator, since: int = 0) -> list[int]:
    """Statuses of the file GETs the simulator answered, in order."""
    return [r.status for r in sim.requests[since:] if r.path.startswith("/_files/")]


def url_calls(sim: Simulator) -> list[float]:
    return [r.t for r in sim.requests if r.path.endswith("/download-url")]


def url_methods(sim: Simulator, since: int = 0) -> list[tuple[str, int]]:
    """(method, status) of the download-url calls the simulator answered, in order."""
    return [(r.method, r.status) for r in sim.requests[since:] if r.path.endswith("/download-url")]


def assert_landed(rig: Rig, want: dict[str, Want]) -> None:
    """Exactly these files are on disk and recorded, each with its bytes, size and sha256."""
    rows = {r[0]: r[1:] for r in db_rows(
        rig.db, "SELECT id, local_path, local_size_bytes, sha256 FROM media "
        "WHERE local_path IS NOT NULL")}
    assert set(rows) == set(want)
    for w in want.values():
        path = w.path(rig.root)
        assert path.read_bytes() == w.data()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == w.sha256
        assert rows[w.file_id] == (str(path), w.size, w.sha256)
    assert sorted(on_disk(rig.root)) == sorted(w.path(rig.root) for w in want.values())


# --- pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize(("mime", "ext"), [
    ("audio/opus", ".opus"), ("audio/mpeg", ".mp3"), ("image/jpeg", ".jpg"),
    ("video/mp4", ".mp4"), ("audio/wav", ".wav"), ("audio/ogg; codecs=opus", ".ogg"),
    ("audio/ogg", ".ogg"), ("audio/mp4", ".m4a"), ("AUDIO/MP4", ".m4a"),
    ("image/png", ".png"), ("application/x-unheard-of", ".bin"), (None, ".bin"), ("", ".bin"),
    ("audio/../../x", ".bin"), ("../../../etc/passwd", ".bin"), ("audio/x; name=../../y", ".bin"),
    ("audio\\..\\..\\x", ".bin"), ("audio/" + "z" * 5000, ".bin"),
])
def test_extension_for(mime: str | None, ext: str) -> None:
    """Known types get their usual extension, others what mimetypes says, else `.bin`."""
    assert fs.extension_for(mime) == ext


def test_paths_refuse_ids_that_leave_the_directory(tmp_path: Path) -> None:
    """Ids come from the network, so one that could climb out of files_dir is refused."""
    assert fs.final_path(tmp_path, "rec_1", "med_2", "audio/opus") == tmp_path / "rec_1/med_2.opus"
    assert fs.part_path(tmp_path, "rec_1", "med_2") == tmp_path / "rec_1/.med_2.part"
    assert fs.final_path(tmp_path, "rec_a-1", "rec_a-1", "audio/ogg") == (
        tmp_path / "rec_a-1/rec_a-1.ogg")  # a deployed recording's own file
    assert fs.final_path(tmp_path, "rec_a", "rec_a", "audio/../../x") == tmp_path / "rec_a/rec_a.bin"
    for rec, med in (("../etc", "med_1"), ("rec_1", "med_1/../../x"), ("rec_1", "passwd"),
                     ("rec_1", "rec_2"), ("rec_..", "rec_.."), ("rec_1/../..", "med_1"),
                     ("rec_" + "a" * 129, "med_1"), ("rec_1", "med_1\x00"), ("rec_1", "")):
        with pytest.raises(ValueError, match="not a recording/media id"):
            fs.final_path(tmp_path, rec, med, None)
    assert (fs.parse_name("med_a1.opus"), fs.parse_name(".med_a1.part")) == (
        ("med_a1", False), ("med_a1", True))
    assert (fs.parse_name("rec_a-1.bin"), fs.parse_name(".rec_a-1.part")) == (
        ("rec_a-1", False), ("rec_a-1", True))
    assert fs.parse_name("notes.txt") is None


def test_project_roots_keep_the_default_in_place_and_refuse_odd_names(tmp_path: Path) -> None:
    """The project `default` keeps files_dir itself (a one-project mirror's files stay put);
    another project gets a directory of its name, and a name that is no project's is refused."""
    assert fs.project_root(tmp_path) == fs.project_root(tmp_path, "default") == tmp_path
    assert fs.project_root(tmp_path, "acme") == tmp_path / "acme"
    assert fs.final_path(fs.project_root(tmp_path, "acme"), "rec_1", "med_2", "audio/opus") == (
        tmp_path / "acme/rec_1/med_2.opus")
    for bad in ("", "..", ".", "../x", "a/b", "/tmp", "Acme", "-x", "a" * 64, "x\x00"):
        with pytest.raises(ValueError, match="not a project name"):
            fs.project_root(tmp_path, bad)


def test_orphan_rules(tmp_path: Path) -> None:
    """Removed media lose their files; tombstones and unknown recordings keep theirs."""
    def f(rec: str, med: str, part: bool = False) -> fs.FoundFile:
        name = f".{med}.part" if part else f"{med}.opus"
        return fs.FoundFile(rec, med, tmp_path / rec / name, part)

    found = [f("rec_live", "med_gone"), f("rec_live", "med_kept"), f("rec_dead", "med_dead"),
             f("rec_dead", "med_dpart", part=True), f("rec_unknown", "med_x"),
             f("rec_live", "med_busy", part=True), f("rec_live", "med_done", part=True),
             f("rec_live", "med_kept2"), f("rec_live", "med_moved")]
    recordings = {"rec_live": False, "rec_dead": True}
    media = {"med_kept": ("rec_live", str(tmp_path / "rec_live/med_kept.opus")),
             "med_dead": ("rec_dead", None), "med_dpart": ("rec_dead", None),
             "med_busy": ("rec_live", None),
             "med_done": ("rec_live", str(tmp_path / "rec_live/med_done.opus")),
             "med_kept2": ("rec_live", str(tmp_path / "rec_live/med_kept2.mp3")),
             "med_moved": ("rec_live", "/elsewhere/rec_live/med_moved.opus")}
    doomed = {(x.media_id, why) for x, why in orphans(found, recordings, media, busy={"med_busy"})}
    assert doomed == {("med_gone", "media removed remotely"),
                      ("med_dpart", "recording deleted before its download finished"),
                      ("med_done", "stale partial download"),
                      ("med_kept2", "superseded by a file of another type")}


def test_transfer_errors_never_show_the_signed_url() -> None:
    """A pre-signed URL is a credential: an error message keeps its path, not its signature."""
    url = "http://127.0.0.1:1/_files/med_a?expires=99&sig=cafe"
    why = _reason(ValueError(f"cannot fetch {url} (query expires=99&sig=cafe)"), url)
    assert "sig=cafe" not in why and "http://127.0.0.1:1/_files/med_a" in why


@pytest.mark.parametrize(("files_left", "bytes_left", "elapsed", "done", "rpm", "want"), [
    (25, 1000, 10.0, 0, 25, 60.0),  # nothing measured yet: the budget's pace
    (25, 10**9, 10.0, 10**6, 25, 10_000.0),  # a slow network is slower than the budget
    (0, 0, 5.0, 100, 25, 0.0),
    (50, 100, 1.0, 10**6, 100, 30.0),
])
def test_eta_is_the_slower_of_budget_and_bytes(
    files_left: int, bytes_left: int, elapsed: float, done: int, rpm: int, want: float
) -> None:
    """The ETA never promises more than one download-url call per file allows."""
    assert eta_seconds(files_left, bytes_left, elapsed, done, rpm) == pytest.approx(want)


def test_progress_bar_shows_files_bytes_and_eta() -> None:
    """On a terminal the bar counts files and bytes against the queue and shows an ETA."""
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with download_progress(console, requests_per_minute=30) as bar:
        assert bar is not None
        bar.begin({"queued": {"files": 3, "bytes": 3_000_000}})
        bar(DownloadStats(files=1, bytes=1_000_000))
        text = bar.progress.get_renderable()
        console.print(text)
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "files 1/3" in shown and "1.0 MB of 3.0 MB" in shown and "left" in shown
    with download_progress(Console(file=io.StringIO()), 30) as none:
        assert none is None  # not a terminal: no bar


# --- the queue against the simulator ------------------------------------------------------


@both_backends
async def test_200_recordings_mirror_every_uploaded_audio_file(
    rig_factory: RigFactory, dialect: Dialect
) -> None:
    """After a sync of 200 recordings the queue drains to every audio file, exact, and nothing else."""
    rig = await rig_factory(World(seed=11, recordings=200, dialect=dialect))
    await rig.sync_and_drain()
    want = wanted(rig.sim.world)
    assert len(want) > 150
    assert_landed(rig, want)
    assert not list(rig.root.rglob("*.part"))
    assert len(url_calls(rig.sim)) == len(want)
    # one form only, the dialect's: nothing learned yet, the row's kind chose it
    assert {m for m, _ in url_methods(rig.sim)} == {"GET" if rig.sim.world.deployed else "POST"}
    if rig.sim.world.deployed:
        assert {w.ext for w in want.values()} == {".ogg", ".m4a", ".bin"}


@both_backends
async def test_downloaded_event_carries_recording_and_file(
    rig_factory: RigFactory, dialect: Dialect
) -> None:
    """Each landed file is announced once, with the stored recording and the file's path and hash."""
    rig = await rig_factory(World(seed=3, recordings=10, dialect=dialect))
    await rig.sync_and_drain()
    events = [json.loads(p[0]) for p in db_rows(
        rig.db, "SELECT payload FROM events WHERE type = 'media.downloaded'")]
    want = wanted(rig.sim.world)
    assert sorted(e["media"]["id"] for e in events) == sorted(want)
    raws = dict(db_rows(rig.db, "SELECT id, raw FROM recordings"))
    for e in events:
        w = want[e["media"]["id"]]
        assert e["data"] == json.loads(raws[w.recording_id])
        assert e["previous"] == {}
        assert e["media"]["sha256"] == w.sha256
        assert e["media"]["local_path"] == str(w.path(rig.root))
        assert e["media"]["file_size_bytes"] == w.size
        assert e["media"].get("recording_file", False) is w.own


async def test_types_choose_images_and_video(rig_factory: RigFactory) -> None:
    """Images and video are mirrored only when `types` lists them; pending media never."""
    world = World(seed=9, recordings=60)
    rig = await rig_factory(world, types=["audio", "image", "video"])
    await rig.sync_and_drain()
    want = uploaded(world, ("audio", "image", "video"))
    assert {i["type"] for _, i in want.values()} == {"audio", "image", "video"}
    got = {p.name.split(".")[0] for p in on_disk(rig.root)}
    assert got == set(want)
    pending = {m["id"] for r in world.all() for m in r["media"] if m["status"] != "uploaded"}
    assert pending and not pending & got


async def test_cut_connection_resumes_with_range(rig_factory: RigFactory, dialect: Dialect) -> None:
    """A download cut halfway resumes from where it stopped (206) and lands exact."""
    rig = await rig_factory(World(seed=2, recordings=3, dialect=dialect), concurrency=1)
    rig.sim.faults.queue("truncate", 2)
    await rig.sync_and_drain()
    want = wanted(rig.sim.world)
    assert 206 in file_requests(rig.sim)
    assert_landed(rig, want)
    assert len(url_calls(rig.sim)) == len(want)  # a resume reuses the URL it has


async def test_server_without_range_starts_over(rig_factory: RigFactory, dialect: Dialect) -> None:
    """Where the server ignores Range, a cut download starts over and still lands exact."""
    rig = await rig_factory(World(seed=2, recordings=3, dialect=dialect),
                            sim={"range_requests": False})
    rig.sim.faults.queue("truncate", 1)
    await rig.sync_and_drain()
    assert 206 not in file_requests(rig.sim)
    assert_landed(rig, wanted(rig.sim.world))


async def test_expired_url_is_renewed(rig_factory: RigFactory, dialect: Dialect) -> None:
    """A URL the file server calls expired is asked for again until a good one works."""
    world = World(seed=4, recordings=1, dialect=dialect)
    rig = await rig_factory(world)
    want = one_file(world)
    rig.sim.url_ttl_s = -10.0  # every URL made now is already expired
    await rig.syncer.full()
    await rig.downloader.start()
    await wait_for(lambda: 403 in file_requests(rig.sim))
    rig.sim.url_ttl_s = 3600.0
    await wait_for(want.path(rig.root).exists)
    assert want.path(rig.root).read_bytes() == want.data()
    assert len(url_calls(rig.sim)) >= 2
    assert file_requests(rig.sim)[-1] == 200


@pytest.mark.parametrize(("ttl_s", "reused"), [(3600.0, True), (30.0, False)])
async def test_url_is_reused_until_it_nearly_expires(
    rig_factory: RigFactory, dialect: Dialect, ttl_s: float, reused: bool
) -> None:
    """Retries reuse a URL while it is fresh and ask anew once it is within a minute of expiry.

    The deployed answer gives only `expires_in`: the expiry is counted from the answer.
    """
    world = World(seed=4, recordings=1, dialect=dialect)
    rig = await rig_factory(world, max_attempts=3)
    rig.sim.url_ttl_s = ttl_s
    want = one_file(world)
    await rig.syncer.full()
    if world.deployed:  # the API's size moves on; the mirror's does not: each attempt fails
        world.update(want.recording_id, file_size_bytes=str(want.size + 1))
    else:
        world.update_media(want.recording_id, want.file_id, file_size_bytes=want.size + 1)
    await rig.downloader.start()
    db = rig.db
    await wait_for(lambda: db_rows(
        db, f"SELECT download_attempts, download_next_at FROM media WHERE id = '{want.file_id}'")
        == [(3, None)])
    assert len(url_calls(rig.sim)) == (1 if reused else 3)


async def test_wrong_size_is_rejected_then_retried(rig_factory: RigFactory, dialect: Dialect) -> None:
    """A file whose size disagrees with the mirror never lands; once they agree it does."""
    world = World(seed=4, recordings=1, dialect=dialect)
    rig = await rig_factory(world)
    want = one_file(world)
    await rig.syncer.full()
    bigger = want.size + 1000
    if world.deployed:  # the recording's file grew: its size and hash change together
        world.update(want.recording_id, file_size_bytes=str(bigger))
    else:
        world.update_media(want.recording_id, want.file_id, file_size_bytes=bigger)
    await rig.downloader.start()
    db = rig.cfg.database.path
    med = want.file_id
    await wait_for(lambda: db_rows(db, f"SELECT download_error FROM media WHERE id = '{med}'")[0][0])
    assert "size" in db_rows(db, f"SELECT download_error FROM media WHERE id = '{med}'")[0][0]
    assert on_disk(rig.root) == []
    await rig.syncer.full()  # the mirror learns the new size; the retry fetches it
    await wait_for(lambda: db_rows(
        db, f"SELECT download_error, local_size_bytes FROM media WHERE id = '{med}'")
        == [(None, bigger)])
    assert_landed(rig, wanted(world))


async def test_download_url_budget_holds_in_every_window(
    rig_factory: RigFactory, dialect: Dialect
) -> None:
    """No window of the budget's length ever holds more download-url calls than it allows."""
    limit, window = 3, 0.25
    rig = await rig_factory(World(seed=6, recordings=14, dialect=dialect), concurrency=4,
                            download_budget=RequestBudget(limit, window_s=window))
    await rig.sync_and_drain()
    times = sorted(url_calls(rig.sim))
    assert len(times) == len(wanted(rig.sim.world)) >= 10
    worst = max(bisect.bisect_left(times, t + window, lo=i) - i for i, t in enumerate(times))
    assert worst <= limit


@both_backends
async def test_removed_media_loses_its_file_and_tombstones_keep_theirs(
    rig_factory: RigFactory,
) -> None:
    """A media item removed remotely has its file removed; a deleted recording keeps its files."""
    world = World(seed=8, recordings=12)
    rig = await rig_factory(world)
    await rig.sync_and_drain()
    by_recording = {rec: (med, item) for med, (rec, item) in uploaded(world).items()}
    (r1, (m1, i1)), (r2, (m2, i2)) = list(by_recording.items())[:2]
    gone = fs.final_path(rig.root, r1, m1, i1["mime_type"])
    kept = fs.final_path(rig.root, r2, m2, i2["mime_type"])
    world.remove_media(r1, m1)
    world.delete(r2)
    await rig.syncer.full()
    await wait_for(lambda: not gone.exists())
    assert await rig.downloader.sweep() == 0
    assert kept.exists()
    report = await media_admin.prune_deleted(rig.store, rig.cfg.media)
    assert (report.recordings, report.files, report.bytes) == (1, 1, i2["file_size_bytes"])
    assert not kept.exists() and not kept.parent.exists()
    assert db_rows(rig.db, f"SELECT local_path FROM media WHERE id = '{m2}'") \
        == [(None,)]


@both_backends
async def test_deleted_recording_keeps_its_file_until_prune(
    rig_factory: RigFactory, dialect: Dialect
) -> None:
    """A recording deleted remotely keeps its files (whatever their extension) until prune."""
    world = World(seed=8, recordings=12, dialect=dialect)
    rig = await rig_factory(world)
    await rig.sync_and_drain()
    want = next(iter(wanted(world).values()))
    rec, kept = want.recording_id, want.path(rig.root)
    recorded = f"FROM media WHERE recording_id = '{rec}' AND local_path IS NOT NULL"
    (files, size), = db_rows(rig.db, f"SELECT count(*), sum(local_size_bytes) {recorded}")
    world.delete(rec)
    await rig.syncer.full()
    assert await rig.downloader.sweep() == 0
    assert kept.read_bytes() == want.data()
    report = await media_admin.prune_deleted(rig.store, rig.cfg.media)
    assert (report.recordings, report.files, report.bytes) == (1, files, size)
    assert not kept.exists() and not kept.parent.exists()
    assert db_rows(rig.db, f"SELECT count(*) {recorded}") == [(0,)]


async def test_low_disk_starts_nothing_and_says_so_once(
    rig_factory: RigFactory, dialect: Dialect
) -> None:
    """With less room than min_free_bytes nothing starts; one log line and the status say why."""
    rig = await rig_factory(World(seed=3, recordings=8, dialect=dialect), min_free_bytes=10**18)
    with capture_logs() as logs:
        await rig.sync_and_drain()
        rig.downloader.notify()
        assert await rig.downloader.drain(10)
    assert url_calls(rig.sim) == [] and on_disk(rig.root) == []
    assert [e["event"] for e in logs].count("media.disk_low") == 1
    status = await media_admin.files_status(rig.store, rig.cfg.media)
    assert status["disk"]["waiting"] == status["queued"]["files"] == len(wanted(rig.sim.world))
    assert "wait for disk space" in status["disk"]["message"]


@both_backends
async def test_failures_back_off_give_up_and_can_be_retried(
    rig_factory: RigFactory, dialect: Dialect
) -> None:
    """A download that keeps failing is retried, then given up, shown, and re-queued on demand.

    Its first 404 (nothing learned yet) gets one try of the other form, whose 405 shows
    which form the API speaks; the later attempts use that form only.
    """
    world = World(seed=4, recordings=1, dialect=dialect)
    rig = await rig_factory(world, max_attempts=3)
    want = one_file(world)
    med = want.file_id
    await rig.syncer.full()
    # the API now answers 404 for its URL; the mirror has not seen it
    if world.deployed:
        world.delete(want.recording_id)
    else:
        world.remove_media(want.recording_id, med)
    await rig.downloader.start()
    db = rig.db
    await wait_for(lambda: db_rows(
        db, f"SELECT download_attempts, download_next_at FROM media WHERE id = '{med}'") == [(3, None)])
    status = await media_admin.files_status(rig.store, rig.cfg.media)
    assert status["failed"]["files"] == 1 and status["queued"]["files"] == 0
    assert status["failed"]["items"][0]["media_id"] == med
    assert "not found" in status["failed"]["items"][0]["error"]
    form, other = ("GET", "POST") if world.deployed else ("POST", "GET")
    assert url_methods(rig.sim) == [(form, 404), (other, 405), (form, 404), (form, 404)]
    assert await media_admin.retry_failed(rig.store, rig.cfg.media) == 1
    status = await media_admin.files_status(rig.store, rig.cfg.media)
    assert (status["failed"]["files"], status["queued"]["files"]) == (0, 1)


async def test_verify_requeues_altered_and_missing_files(
    rig_factory: RigFactory, dialect: Dialect
) -> None:
    """verify finds an altered and a missing file, re-queues both, and the queue restores them."""
    rig = await rig_factory(World(seed=12, recordings=6, dialect=dialect))
    await rig.sync_and_drain()
    paths = on_disk(rig.root)
    altered, missing = paths[0], paths[1]
    original = altered.read_bytes()
    altered.write_bytes(bytes(len(original)))  # same size, other bytes
    missing.unlink()
    report = await media_admin.verify(rig.store)
    assert report.checked == len(paths) and report.ok == len(paths) - 2
    assert {(p.path, p.reason) for p in report.problems} == {
        (str(altered), "sha256 does not match"), (str(missing), "missing")}
    assert await rig.downloader.drain(10)
    assert altered.read_bytes() == original and missing.exists()
    assert (await media_admin.verify(rig.store)).problems == []


async def test_second_downloader_on_the_same_directory_is_refused(
    rig_factory: RigFactory,
) -> None:
    """Two processes must not write the same partial files: the directory lock says so."""
    rig = await rig_factory(World(seed=1, recordings=2))
    await rig.downloader.start()
    other = Downloader(rig.store, rig.client, rig.cfg.media)
    with pytest.raises(BotasyncError, match="another botasync process is downloading"):
        await other.start()
    await other.aclose()


async def test_download_off_does_nothing(rig_factory: RigFactory, dialect: Dialect) -> None:
    """With `download = false` the downloader starts nothing and creates no directory."""
    rig = await rig_factory(World(seed=1, recordings=5, dialect=dialect), download=False)
    await rig.syncer.full()
    await rig.downloader.start()
    rig.downloader.notify()
    assert await rig.downloader.drain(1)
    assert url_calls(rig.sim) == [] and not rig.root.exists()


async def test_schema_step_2_adds_the_file_columns(tmp_path: Path) -> None:
    """A database opened by this version has the media file columns, at schema version 2."""
    async with await Store.open(tmp_path / "m.db") as store:
        cols = {r[1] for r in await store.fetchall("PRAGMA table_info(media)")}
        version = (await store.fetchone("PRAGMA user_version"))[0]  # type: ignore[index]
    assert {"local_path", "local_size_bytes", "sha256", "downloaded_at", "download_attempts",
            "download_error", "download_next_at"} <= cols
    assert version >= 2


# --- a crash mid-download -------------------------------------------------------------------

def kill_once_growing(pid: int, part: Path, timeout: float = 20.0) -> bool:
    """SIGKILL `pid` as soon as its partial file holds a first megabyte."""
    deadline = time.monotonic() + timeout
    while (fs.size_of(part) or 0) < 1 << 20:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
    os.kill(pid, signal.SIGKILL)
    return True


RUNNER = textwrap.dedent("""
    import asyncio, sys
    from botasync import config
    from botasync.api.budget import RequestBudget
    from botasync.api.client import BotaClient
    from botasync.media.downloader import Downloader
    from botasync.store.sqlite import Store

    async def main(url, db, files_dir):
        cfg = config.load(env={}, overrides={
            "api": {"base_url": url, "api_key": "sk_test_botasync"},
            "media": {"download": True, "files_dir": files_dir, "min_free_bytes": 0}})
        async with await Store.open(db) as store:
            async with BotaClient(cfg.api, download_budget=RequestBudget(None)) as client:
                async with Downloader(store, client, cfg.media) as dl:
                    await dl.start()
                    print("drained" if await dl.drain(60) else "timeout", flush=True)

    asyncio.run(main(*sys.argv[1:]))
""")


async def test_sigkill_mid_download_leaves_no_file_then_resumes(
    rig_factory: RigFactory, tmp_path: Path, dialect: Dialect
) -> None:
    """SIGKILL mid-download leaves only the hidden part; the next run resumes it and lands exact."""
    size = 48 * 1024 * 1024
    world = World(seed=1, recordings=0, dialect=dialect)
    if world.deployed:  # the recording's own file, with the sha256 of its bytes
        world.create(status="completed", source="device", file_size_bytes=str(size))
    else:
        world.create(status="completed", media=[{
            "id": "med_big", "type": "audio", "mime_type": "audio/opus", "file_size_bytes": size,
            "status": "uploaded", "captured_at": None, "created_at": "2025-01-01T00:00:00Z"}])
    want = one_file(world)
    rig = await rig_factory(world)
    await rig.syncer.full()
    final = want.path(rig.root)
    part = fs.part_path(rig.root, want.recording_id, want.file_id)
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    args = (str(script), rig.sim.url, rig.cfg.database.path, rig.cfg.media.files_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    proc = await asyncio.create_subprocess_exec(sys.executable, *args, env=env,
                                                stdout=asyncio.subprocess.PIPE)
    # watched from a thread: the simulator streams from this loop and would starve a poll here
    assert await asyncio.to_thread(kill_once_growing, proc.pid, part)
    await proc.wait()
    killed_at = len(rig.sim.requests)
    assert not final.exists()
    assert 0 < (fs.size_of(part) or 0) < size

    proc = await asyncio.create_subprocess_exec(sys.executable, *args, env=env,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, out.strip().splitlines()[-1]) == (0, b"drained")
    assert not part.exists()
    assert hashlib.sha256(final.read_bytes()).hexdigest() == want.sha256
    assert file_requests(rig.sim, killed_at) == [206]
    assert db_rows(rig.cfg.database.path, "SELECT local_size_bytes, sha256 FROM media") == [
        (size, want.sha256)]


# --- the command line -------------------------------------------------------------------------


async def test_cli_status_verify_prune_and_download(
    rig_factory: RigFactory, tmp_path: Path, dialect: Dialect
) -> None:
    """`files download`, `status --json`, `verify` and `prune --deleted` report what they did."""
    world = World(seed=13, recordings=8, dialect=dialect)
    rig = await rig_factory(world)
    await rig.syncer.full()
    conf = tmp_path / "botasync.toml"
    conf.write_text(textwrap.dedent(f"""
        [api]
        base_url = "{rig.sim.url}"
        api_key = "{KEY}"
        [database]
        path = "{rig.cfg.database.path}"
        [media]
        files_dir = "{rig.cfg.media.files_dir}"
        min_free_bytes = 0
        requests_per_minute = 100000
        [logging]
        level = "error"
    """))
    runner = CliRunner()

    async def cli(*args: str) -> Any:
        result = await asyncio.to_thread(runner.invoke, files_cli, [*args, "--config", str(conf)])
        return result

    want = wanted(world)
    result = await cli("status", "--json")
    assert result.exit_code == 0, result.output
    before = json.loads(result.output)
    assert before["download"] is False and before["queued"]["files"] == len(want)
    result = await cli("download", "--json", "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["files"] == len(want)
    after = json.loads((await cli("status", "--json")).output)
    assert after["downloaded"] == {"files": len(want), "bytes": before["queued"]["bytes"]}
    assert before["queued"]["bytes"] == sum(w.size for w in want.values())
    assert after["queued"]["files"] == 0
    assert_landed(rig, want)
    result = await cli("verify")
    assert result.exit_code == 0 and f"{len(want)} files checked, {len(want)} good" in result.output
    rec = next(iter(want.values())).recording_id
    world.delete(rec)
    await rig.syncer.full()
    kept = sum(1 for w in want.values() if w.recording_id == rec)
    result = await cli("prune", "--deleted", "--dry-run", "--json")
    assert json.loads(result.output)["files"] == kept
    assert f"removed {kept} files" in (await cli("prune", "--deleted")).output
    assert (await cli("prune")).exit_code == 2


# --- two projects in one database -------------------------------------------------------------


@dataclass
class Side:
    """One project of a two-project rig: its view, world, simulator, client, syncer, downloader."""

    cfg: config.Config
    world: World
    sim: Simulator
    syncer: Syncer
    downloader: Downloader

    @property
    def name(self) -> str:
        return self.cfg.project


@dataclass
class Two:
    """Two projects, `default` and `acme`, in one database and one files_dir."""

    cfg: config.Config
    conf: Path  # the configuration file, for the command line
    store: Store
    default: Side
    acme: Side


@pytest.fixture
async def two_projects(
    tmp_path: Path, simulator_factory: SimulatorFactory
) -> AsyncIterator[Two]:
    """Projects `default` and `acme` in one database and one files_dir, each served by its own
    simulator of the SAME seeded world: every recording and media id is in both. The acme
    world's first file is bigger, so the two files of that id differ in bytes too."""
    worlds = {"default": World(seed=9, recordings=10), "acme": World(seed=9, recordings=10)}
    med, (rec, item) = next(iter(uploaded(worlds["acme"]).items()))
    worlds["acme"].update_media(rec, med, file_size_bytes=item["file_size_bytes"] + 777)
    sims = {n: await simulator_factory(w, download_rate_limit=None) for n, w in worlds.items()}
    conf = tmp_path / "botasync.toml"
    conf.write_text(textwrap.dedent(f"""
        [api]
        api_key = "{KEY}"
        requests_per_minute = 100000
        [[projects]]
        name = "default"
        base_url = "{sims['default'].url}"
        [[projects]]
        name = "acme"
        base_url = "{sims['acme'].url}"
        [database]
        path = "{tmp_path / 'botasync.db'}"
        [media]
        download = true
        files_dir = "{tmp_path / 'files'}"
        min_free_bytes = 0
        concurrency = 4
        requests_per_minute = 100000
        [logging]
        level = "error"
    """))
    cfg = config.load(conf, env={})
    async with contextlib.AsyncExitStack() as stack:
        store = await Store.open(cfg.database.path)
        stack.push_async_callback(store.aclose)
        sides = []
        for view in cfg.each_project():
            client = BotaClient(view.api, budget=RequestBudget(None),
                                download_budget=RequestBudget(None), backoff_base=0.01,
                                backoff_cap=0.05)
            stack.push_async_callback(client.aclose)
            dl = Downloader(store, client, view, retry_base_s=0.05, retry_max_s=0.2,
                            sweep_every_s=0)  # built with the view: the view's project
            stack.push_async_callback(dl.aclose)
            syncer = Syncer(view, client, store, on_commit=dl.notify)
            sides.append(Side(view, worlds[view.project], sims[view.project], syncer, dl))
        yield Two(cfg, conf, store, sides[0], sides[1])


def project_rows(db: str, project: str) -> dict[str, tuple[Any, ...]]:
    """media id -> (local_path, local_size_bytes, sha256) of one project's files on disk."""
    return {r[0]: r[1:] for r in db_rows(
        db, "SELECT id, local_path, local_size_bytes, sha256 FROM media "
        f"WHERE project = '{project}' AND local_path IS NOT NULL")}


async def test_two_projects_with_the_same_ids_keep_apart_files_rows_and_queues(
    two_projects: Two,
) -> None:
    """The same recording and media ids in two projects: two queues, two files (the default's
    where a one-project mirror keeps them, acme's under `acme/`), two rows, two events each."""
    t = two_projects
    cfg, store, default, acme = t.cfg, t.store, t.default, t.acme
    db = cfg.database.path
    want = {s.name: wanted(s.world) for s in (default, acme)}
    assert set(want["default"]) == set(want["acme"]) and len(want["default"]) >= 3
    files_dir = Path(cfg.media.files_dir).resolve()
    await default.syncer.full()
    await acme.syncer.full()
    (acme_rows, acme_n), (default_rows, default_n) = db_rows(
        db, "SELECT project, count(*) FROM media GROUP BY project ORDER BY project")
    assert (acme_rows, default_rows) == ("acme", "default") and acme_n == default_n > 0

    # acme's downloader alone: acme's queue drains, the default's is untouched
    await acme.downloader.start()
    assert await acme.downloader.drain(30)
    assert acme.downloader.root == files_dir / "acme"
    status = await media_admin.files_status(store, cfg.media)
    assert {p: (c["downloaded"]["files"], c["queued"]["files"])
            for p, c in status["projects"].items()} == {
        "acme": (len(want["acme"]), 0), "default": (0, len(want["default"]))}
    assert (status["downloaded"]["files"], status["queued"]["files"]) == (
        len(want["acme"]), len(want["default"]))
    assert project_rows(db, "default") == {}
    assert url_calls(default.sim) == [] and len(url_calls(acme.sim)) == len(want["acme"])

    await default.downloader.start()
    assert await default.downloader.drain(30)
    assert default.downloader.root == files_dir  # where a one-project mirror keeps them
    for side in (default, acme):
        rows = project_rows(db, side.name)
        root = files_dir if side.name == "default" else files_dir / "acme"
        assert set(rows) == set(want[side.name])
        for w in want[side.name].values():
            assert w.path(root).read_bytes() == w.data()
            assert rows[w.file_id] == (str(w.path(root)), w.size, w.sha256)
        events = [json.loads(p[0]) for p in db_rows(
            db, "SELECT payload FROM events WHERE type = 'media.downloaded' "
            f"AND project = '{side.name}'")]
        assert sorted(e["media"]["id"] for e in events) == sorted(want[side.name])
        assert {e["project"] for e in events} == {side.name}
        assert {e["media"]["local_path"] for e in events} == {
            str(w.path(root)) for w in want[side.name].values()}
    assert sorted(on_disk(files_dir)) == sorted(
        [w.path(files_dir) for w in want["default"].values()]
        + [w.path(files_dir / "acme") for w in want["acme"].values()])
    # the one id whose file differs: two files, two sizes, two hashes
    differ = [m for m in want["acme"] if want["acme"][m].size != want["default"][m].size]
    assert len(differ) == 1
    (m,) = differ
    assert project_rows(db, "acme")[m][1:] != project_rows(db, "default")[m][1:]
    assert db_rows(db, "SELECT project, value FROM state WHERE key = 'download_form' "
                       "ORDER BY project") == [("acme", "POST"), ("default", "POST")]
    # each project has its own lock: a second downloader of either project is refused
    for side in (default, acme):
        other = Downloader(store, side.downloader.client, side.cfg)
        with pytest.raises(BotasyncError, match=f"downloading into {side.downloader.root}"):
            await other.start()
        await other.aclose()


async def test_a_project_sweeps_verifies_prunes_and_retries_only_its_own(
    two_projects: Two,
) -> None:
    """Removed media, a deleted recording, verify, prune and retry in acme never touch the
    default's files or rows of the same ids."""
    t = two_projects
    cfg, store, default, acme = t.cfg, t.store, t.default, t.acme
    db = cfg.database.path
    for side in (default, acme):
        await side.syncer.full()
        await side.downloader.start()
        assert await side.downloader.drain(30)
    files_dir = Path(cfg.media.files_dir).resolve()
    want = wanted(default.world)
    first, second, third = list(want.values())[:3]
    # acme loses a media item and a recording; the default keeps both
    acme.world.remove_media(first.recording_id, first.file_id)
    acme.world.delete(second.recording_id)
    await acme.syncer.full()
    await wait_for(lambda: not first.path(files_dir / "acme").exists())
    assert first.path(files_dir).read_bytes() == first.data()
    assert await default.downloader.sweep() == 0 and await acme.downloader.sweep() == 0
    report = await media_admin.prune_deleted(store, cfg.media, project="default")
    assert report.files == 0  # nothing deleted in the default project
    report = await media_admin.prune_deleted(store, cfg.media)
    assert report.recordings == 1 and not second.path(files_dir / "acme").exists()
    assert second.path(files_dir).read_bytes() == second.data()
    assert project_rows(db, "default").keys() == want.keys()
    for side in (default, acme):  # what follows is the command line's, with no daemon running
        await side.downloader.aclose()
    # an altered file in the default project: verify of acme alone does not see it
    third.path(files_dir).write_bytes(bytes(third.size))
    assert (await media_admin.verify(store, project="acme")).problems == []
    verified = await media_admin.verify(store)
    assert [(p.project, p.media_id) for p in verified.problems] == [("default", third.file_id)]
    assert third.file_id in project_rows(db, "acme") and third.file_id not in project_rows(
        db, "default")
    # a given-up item in each project; retry of one project re-queues that one only
    async with store.transaction() as conn:
        await conn.execute("UPDATE media SET download_error = 'x', download_next_at = NULL, "
                           "download_attempts = 10 WHERE project = 'default' AND id = ?",
                           (third.file_id,))
    status = await media_admin.files_status(store, cfg.media)
    assert {p: c["failed"]["files"] for p, c in status["projects"].items()} == {
        "acme": 0, "default": 1}
    assert await media_admin.retry_failed(store, cfg.media, project="acme") == 0
    assert await media_admin.retry_failed(store, cfg.media, project="default") == 1


async def test_files_status_and_download_by_project_on_the_command_line(
    two_projects: Two,
) -> None:
    """`files status` counts each project when there are two; `--project` narrows status and
    download to one; an unknown project is a usage error."""
    t = two_projects
    default, acme = t.default, t.acme
    for side in (default, acme):
        await side.syncer.full()
    runner = CliRunner()

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(runner.invoke, files_cli, [*args, "--config", str(t.conf)])

    n = len(wanted(default.world))
    before = json.loads((await cli("status", "--json")).output)
    assert {p: c["queued"]["files"] for p, c in before["projects"].items()} == {
        "acme": n, "default": n}
    assert before["queued"]["files"] == 2 * n
    result = await cli("download", "--project", "acme", "--json", "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["projects"] == {
        "acme": {"files": n, "bytes": before["projects"]["acme"]["queued"]["bytes"],
                 "failures": 0, "drained": True}}
    only = json.loads((await cli("status", "--project", "default", "--json")).output)
    assert list(only["projects"]) == ["default"]
    assert (only["queued"]["files"], only["downloaded"]["files"]) == (n, 0)
    shown = (await cli("status")).output
    rows = {line.split()[0]: line.strip() for line in shown.splitlines()
            if line.split() and line.split()[0] in ("acme", "default")}
    # project, downloaded, queued, failed, kept
    assert re.fullmatch(rf"acme +{n} \([^)]+\) +0 +0 +0", rows["acme"]), shown
    assert re.fullmatch(rf"default +0 +{n} \([^)]+\) +0 +0", rows["default"]), shown
    one = (await cli("status", "--project", "acme")).output
    assert not any(line.startswith(("acme", "default")) for line in one.splitlines())
    result = await cli("download", "--json", "--timeout", "30")  # every project: the default's left
    assert result.exit_code == 0, result.output
    assert {p: r["files"] for p, r in json.loads(result.output)["projects"].items()} == {
        "default": n, "acme": 0}
    assert (await cli("status", "--project", "nope")).exit_code == 2
