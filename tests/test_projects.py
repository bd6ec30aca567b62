"""Many Bota projects in one database: schema step 6, `[[projects]]`, and the mirror by
project (the same ids in two projects never meet)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from botasync import config
from botasync.api.models import Recording
from botasync.envelope import EventFactory
from botasync.errors import ConfigError, MigrationError, StoreError
from botasync.jsoncodec import dumps
from botasync.store import migrations
from botasync.store.base import Database
from botasync.store.sqlite import Mirror, PageWrite, Store, Upsert
from tests.conftest import one_row
from tests.pgserver import TestDb

NOW = "2026-11-29T00:00:00.000Z"


def _v5_database(db: Path) -> None:
    """A database at schema step 5, with a recording, its media, a transcription, two
    segments in the FTS index, a queued recording, an event and state rows."""
    with sqlite3.connect(db) as conn:
        for step in migrations.STEPS[:5]:
            conn.executescript(step)
        conn.execute("INSERT INTO recordings (id, status, raw, first_seen_at, synced_at, "
                     "transcription_id) VALUES ('rec_1', 'completed', '{}', ?, ?, 'txn_1')",
                     (NOW, NOW))
        conn.execute("INSERT INTO media (id, recording_id, position, raw, local_path) "
                     "VALUES ('med_1', 'rec_1', 0, '{}', '/files/rec_1/med_1.m4a')")
        conn.execute("INSERT INTO transcriptions (id, recording_id, status, raw, fetched_at) "
                     "VALUES ('txn_1', 'rec_1', 'completed', '{}', ?)", (NOW,))
        for i, text in enumerate(["the quarterly numbers", "ship it friday"]):
            conn.execute("INSERT INTO transcript_segments (id, transcription_id, position, "
                         "text, speaker) VALUES (?, 'txn_1', ?, ?, 'SPEAKER_0')",
                         (i + 1, i, text))
            conn.execute("INSERT INTO transcript_fts (rowid, text, speaker) "
                         "VALUES (?, ?, 'SPEAKER_0')", (i + 1, text))
        conn.execute("INSERT INTO transcript_queue (recording_id, reason, queued_at) "
                     "VALUES ('rec_1', 'backfill', ?)", (NOW,))
        conn.execute("INSERT INTO events (id, type, recording_id, created_at, payload) "
                     "VALUES ('evt_1', 'recording.created', 'rec_1', ?, '{}')", (NOW,))
        conn.executemany("INSERT INTO state (key, value) VALUES (?, ?)",
                         [("dialect", "{}"), ("daemon", "{}"), ("demo_database", NOW)])
        conn.execute("PRAGMA user_version = 5")
    conn.close()


async def test_a_version_5_database_upgrades_in_place_as_the_project_default(
    tmp_path: Path,
) -> None:
    db = tmp_path / "v5.db"
    _v5_database(db)
    async with await Store.open(db) as store:
        assert (await one_row(store, "PRAGMA user_version"))[0] == migrations.LATEST
        for table in ("recordings", "media", "transcriptions", "transcript_segments",
                      "transcript_queue", "events"):
            rows = await store.fetchall(f"SELECT DISTINCT project FROM {table}")
            assert [r[0] for r in rows] == ["default"], table
        media = await store.fetchone("SELECT id, recording_id, local_path FROM media")
        assert tuple(media or ()) == ("med_1", "rec_1", "/files/rec_1/med_1.m4a")
        state = await store.fetchall("SELECT project, key FROM state ORDER BY key")
        assert [tuple(r) for r in state] == [
            ("", "daemon"), ("", "demo_database"), ("default", "dialect")]
        # the segments kept their ids: the FTS index still points at them
        await store.fetchall(
            "INSERT INTO transcript_fts(transcript_fts) VALUES('integrity-check')")
        hits = await store.fetchall(
            "SELECT s.text FROM transcript_fts JOIN transcript_segments s "
            "ON s.id = transcript_fts.rowid WHERE transcript_fts MATCH 'quarterly'")
        assert [h[0] for h in hits] == ["the quarterly numbers"]
        assert (await store.fetchone("PRAGMA foreign_key_check")) is None
        assert (await one_row(store, "PRAGMA foreign_keys"))[0] == 1
        assert (await one_row(store, "PRAGMA integrity_check"))[0] == "ok"


async def test_a_step_that_breaks_a_foreign_key_changes_nothing(tmp_path: Path) -> None:
    """A v5 database with an orphan media row (written before foreign keys were on, say)
    is refused by step 6 with one line, and left at version 5."""
    db = tmp_path / "orphan.db"
    _v5_database(db)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO media (id, recording_id, position, raw) "
                     "VALUES ('med_9', 'rec_gone', 0, '{}')")
    conn.close()
    with pytest.raises(MigrationError, match="step 6 would leave 1 rows"):
        await Store.open(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
        assert conn.execute("SELECT count(*) FROM media").fetchone()[0] == 2
    conn.close()


async def test_a_step_that_fails_halfway_changes_nothing(tmp_path: Path) -> None:
    """Step 6 failing in its middle (its `recordings` rebuilt, then a table in the way of
    `media`'s) leaves the database as it was: version 5, the old tables and their rows."""
    db = tmp_path / "halfway.db"
    _v5_database(db)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE media_6 (x INT)")
        before = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    with pytest.raises(StoreError, match="table media_6 already exists"):
        await Store.open(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
        assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == before
        assert conn.execute("SELECT count(*) FROM recordings").fetchone()[0] == 1
    conn.close()


# --- the mirror by project ---------------------------------------------------------------


def _upsert(rec_id: str, name: str) -> Upsert:
    raw = {"id": rec_id, "status": "completed", "name": name, "created_at": NOW,
           "media": [{"id": f"med_{rec_id[4:]}", "type": "audio", "status": "uploaded"}]}
    return Upsert(Recording.model_validate(raw), raw, fingerprint=name, is_new=True)


async def _write(store: Database, project: str, *ups: Upsert) -> None:
    ids = iter(range(10**6))
    make = EventFactory(lambda: f"evt_{project}_{next(ids)}", NOW, project)

    def build(old: dict[str, dict[str, Any]], newer: set[str]) -> PageWrite:
        return PageWrite(upserts=list(ups),
                         events=[make.make("recording.created", u.raw) for u in ups])

    await Mirror(store, project).apply([u.recording.id for u in ups], build, NOW)


async def test_the_same_ids_in_two_projects_stay_apart(database: TestDb) -> None:
    async with await database.open() as store:
        await _write(store, "staging", _upsert("rec_1", "staging one"), _upsert("rec_2", "s2"))
        await _write(store, "prod", _upsert("rec_1", "prod one"))
        staging, prod = Mirror(store, "staging"), Mirror(store, "prod")
        assert sorted(await staging.live_ids()) == ["rec_1", "rec_2"]
        assert await prod.live_ids() == ["rec_1"]
        assert await staging.count() == 2 and await prod.count() == 1
        assert (await prod.fingerprints(["rec_1", "rec_2"])) == {"rec_1": ("prod one", False)}
        names = await store.fetchall(
            "SELECT project, name FROM recordings WHERE id = 'rec_1' ORDER BY project")
        assert [tuple(r) for r in names] == [("prod", "prod one"), ("staging", "staging one")]
        media = await store.fetchall("SELECT project, id FROM media ORDER BY project, id")
        assert [tuple(r) for r in media] == [
            ("prod", "med_1"), ("staging", "med_1"), ("staging", "med_2")]
        events = await store.fetchall("SELECT project, payload FROM events ORDER BY seq")
        assert [r[0] for r in events] == ["staging", "staging", "prod"]
        assert all(f'"project":"{r[0]}"' in r[1].replace(" ", "") for r in events)
        # a tombstone in one project leaves the other's row alone
        await Mirror(store, "prod").apply(
            ["rec_1"], lambda old, newer: PageWrite(tombstones=["rec_1"]), NOW)
        assert await prod.live_ids() == []
        assert sorted(await staging.live_ids()) == ["rec_1", "rec_2"]


async def test_state_and_runs_are_per_project(database: TestDb) -> None:
    async with await database.open() as store:
        a, b, service = Mirror(store, "a"), Mirror(store, "b"), Mirror(store, config.SERVICE)
        await a.set_state("dialect", dumps({"paging": "cursor"}))
        await service.set_state("daemon", "{}")
        assert await b.get_state("dialect") is None
        assert await a.get_state("daemon") is None and await service.get_state("daemon") == "{}"
        run = await a.start_run("full", NOW, position=0, cursor=None)
        await a.update_run(run, {"position": 300, "cursor": "c_1"})
        assert await a.interrupted_walk(("full",)) == (run, 300, "c_1")
        assert await b.interrupted_walk(("full",)) is None


# --- configuration ---------------------------------------------------------------------


def _load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "botasync.toml"
    path.write_text(text)
    return config.load(path, env={}, resolve_key=False)


def test_api_alone_is_the_project_default(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[api]\napi_key = "sk_x"\n')
    assert cfg.project_names() == ["default"]
    (view,) = cfg.each_project()
    assert view.project == "default" and view.api.api_key.get_secret_value() == "sk_x"


def test_config_show_hides_every_project_key(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[api]\napi_key = "sk_live_top"\n[[projects]]\nname = "a"\n'
                          'api_key = "sk_live_a"\n[[projects]]\nname = "b"\n'
                          'api_key = "sk_live_b"\n')
    shown = dumps(cfg.redacted())
    assert "sk_live" not in shown and shown.count("***") == 3


def test_projects_lay_their_keys_over_api_and_sync(tmp_path: Path) -> None:
    cfg = _load(tmp_path, """
[api]
requests_per_minute = 80
api_key_file = "shared.key"
[sync]
interval_s = 30
[[projects]]
name = "staging"
api_key = "sk_a"
[[projects]]
name = "prod"
api_key_file = "prod.key"
interval_s = 10
requests_per_minute = 45
""")
    staging, prod = cfg.each_project()
    assert (staging.project, staging.api.requests_per_minute, staging.sync.interval_s) == (
        "staging", 80, 30)
    # its own key wins over the inherited key file, and the other way round
    assert staging.api.api_key.get_secret_value() == "sk_a" and staging.api.api_key_file == ""
    assert (prod.api.api_key_file, prod.api.requests_per_minute, prod.sync.interval_s) == (
        "prod.key", 45, 10)
    with pytest.raises(ConfigError, match="no project 'qa'"):
        cfg.for_project("qa")


@pytest.mark.parametrize(("text", "message"), [
    ('[[projects]]\nname = "a"\nintervall_s = 1\n',
     "[[projects]] #1 intervall_s: unknown key (a project takes a name and the keys of [api] "
     "and [sync]); did you mean interval_s?"),
    ('[[projects]]\nname = "Prod DB"\n', "[[projects]] #1 name: Value error, must be 1-63"),
    ('[[projects]]\nname = "a"\napi_key = "k"\n[[projects]]\nname = "b"\napi_key = "k"\n',
     "projects a and b use the same API key"),
    ('[[projects]]\nname = "a"\n[[projects]]\nname = "a"\n', "repeated: a"),
    ('[[projects]]\nname = "a"\ninterval_s = 0\n', "[[projects]] #1 interval_s: Input should"),
    ('[[projects]]\nname = "a"\n[[handlers]]\nname = "h"\ntype = "log"\nprojects = ["b"]\n',
     "[[handlers]] #1 projects: no project 'b' (configured: a)"),
    ('projects = "a"\n', "projects: must be an array of tables"),
])
def test_a_bad_project_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert message in str(err.value) and "\n" not in str(err.value)


# --- two projects end to end -------------------------------------------------------------

DELIVERED: list[dict[str, Any]] = []


def collect(event: dict[str, Any]) -> None:
    """A python handler (`tests.test_projects:collect`): keeps what it is given."""
    DELIVERED.append(event)


async def test_projects_sync_side_by_side_each_exact(tmp_path: Path, database: TestDb) -> None:
    """Three Bota projects, two with the same recording ids, the third in the deployed
    dialect: one `sync` mirrors each exactly, each learns its own dialect, events carry
    their project, and a handler limited to one project gets that project's events alone."""
    from botasync.service.app import sync_once
    from botasync.simulator import World, serve
    from tests.mirror import mirror_diff

    DELIVERED.clear()
    db = database
    worlds = {"one": World(seed=5, recordings=250), "two": World(seed=5, recordings=250),
              "three": World(seed=6, recordings=250, dialect="deployed")}
    assert set(worlds["one"].ids()) == set(worlds["two"].ids())  # the same ids, kept apart
    async with serve(worlds["one"], rate_limit=None,
                     api_keys={"sk_test_one": ["recordings:read"]}) as one, \
            serve(worlds["two"], rate_limit=None,
                  api_keys={"sk_test_two": ["recordings:read"]}) as two, \
            serve(worlds["three"], rate_limit=None,
                  api_keys={"sk_test_three": ["recordings:read"]}) as three:
        entries = "".join(
            f'[[projects]]\nname = "{name}"\nbase_url = "{sim.url}"\n'
            f'api_key = "sk_test_{name}"\n'
            for name, sim in (("one", one), ("two", two), ("three", three)))
        cfg = _load(tmp_path, f"""
[database]
path = "{db.path}"
url = "{db.url}"
[events]
deliver_backfill = true
[[handlers]]
name = "only-two"
type = "python"
target = "tests.test_projects:collect"
projects = ["two"]
{entries}""")
        stats, delivered = await sync_once(cfg, deliver_timeout=30)
        assert delivered and [s.created for s in stats] == [250, 250, 250]
        assert [s.as_dict()["project"] for s in stats] == ["one", "two", "three"]
        for name, world in worlds.items():
            assert mirror_diff(db, world.all(), name) == [], name
    paging = ("CAST(value AS JSONB) ->> 'paging'" if db.backend == "postgres"
              else "json_extract(value, '$.paging')")
    learned = dict(db.rows(f"SELECT project, {paging} FROM state WHERE key = 'dialect'"))
    by_project = dict(db.rows("SELECT project, count(*) FROM events GROUP BY project"))
    assert learned == {"one": "offset", "two": "offset", "three": "cursor"}
    assert min(by_project.values()) >= 250 and set(by_project) == {"one", "two", "three"}
    assert DELIVERED and {e["project"] for e in DELIVERED} == {"two"}
    assert len(DELIVERED) == by_project["two"]
