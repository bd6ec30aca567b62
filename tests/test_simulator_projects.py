"""The simulator serving many Bota projects: a key, a world and rate limits per project."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import tomllib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from botasync import config
from botasync.simulator import (
    Dialect,
    Faults,
    ManualClock,
    Simulator,
    World,
    file_bytes,
    project_key,
    project_seed,
    recording_bytes,
    run_forever,
    serve,
)
from botasync.simulator.app import _announce as announce
from tests.conftest import wait_for

START = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
KEYS = [project_key(i) for i in range(3)]
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session (not botasync's client)."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def served() -> AsyncIterator[Any]:
    """Start simulators with `serve(world_or_mapping, **options)`; all closed at teardown."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(world: Any, **options: Any) -> Simulator:
            options.setdefault("rate_limit", None)
            return await stack.enter_async_context(serve(world, **options))

        yield start


async def call(
    http: aiohttp.ClientSession, method: str, url: str, key: str | None = None,
    json: Any = None, **params: Any,
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """Make a request (with `key` as the bearer, if any); (status, JSON body or None, headers)."""
    async with http.request(method, url, params=params, json=json,
                            headers=auth(key) if key else {}) as r:
        raw = await r.read()
        return r.status, orjson.loads(raw) if raw else None, r.headers


async def ids_served(http: aiohttp.ClientSession, sim: Simulator, key: str) -> list[str]:
    """Every recording id the list serves to `key`, newest first (either dialect)."""
    ids: list[str] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        status, page, _ = await call(http, "GET", f"{sim.url}/recordings", key, **params)
        assert status == 200
        ids += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            return ids
        if sim.dialect == "deployed":
            params["cursor"] = page["next_cursor"]
        else:
            params["offset"] = len(ids)


def same_seed_worlds(dialect: Dialect = "documented", **options: Any) -> dict[str, World]:
    """Two projects whose worlds share a seed, so they hold the very same ids."""
    return {"sk_alpha": World(seed=4, recordings=40, start=START, dialect=dialect, **options),
            "sk_beta": World(seed=4, recordings=40, start=START, dialect=dialect, **options)}


# -- projects=N: keys, seeds, worlds -------------------------------------------------------------


async def test_projects_n_serve_one_world_per_key(
    served: Any, http: aiohttp.ClientSession,
) -> None:
    """projects=3: keys sk_test_project_0..2; the given world is project 0, the others are
    built like it from distinct derived seeds (so no id is in two); each key lists its own."""
    base = World(seed=11, recordings=60, start=START)
    sim = await served(base, projects=3)
    assert [p.key for p in sim.projects] == KEYS and sim.project(0).world is base
    assert sim.world is base and list(sim.worlds) == KEYS
    seeds = [p.world.seed for p in sim.projects]
    assert seeds == [11, project_seed(11, 1), project_seed(11, 2)] and len(set(seeds)) == 3
    assert all(len(p.world) == 60 and p.world.dialect == "documented" for p in sim.projects)
    ids = [set(p.world.ids()) for p in sim.projects]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for project in sim.projects:
        assert await ids_served(http, sim, project.key) == project.world.ids()
        assert sim.project(project.key) is project is sim.project(str(project.index))
    other = sim.project(1).world.ids()[0]
    assert (await call(http, "GET", f"{sim.url}/recordings/{other}", KEYS[0]))[0] == 404
    assert (await call(http, "GET", f"{sim.url}/recordings/{other}", KEYS[1]))[0] == 200
    for key in ("sk_test_botasync", None):  # the single-project keys are not served here
        assert (await call(http, "GET", f"{sim.url}/recordings", key))[0] == 401
    assert World(seed=11, recordings=60, start=START).ids() == base.ids()  # seeds are stable
    assert project_seed(11, 1) != project_seed(12, 1) and project_seed(11, 0) == 11


def test_building_projects_checks_its_input() -> None:
    """A mapping and projects=N together, a World shared by two keys, mixed dialects, a key
    with a space, zero projects, or scopes for a key of no project: each a ValueError."""
    one, two = World(seed=1), World(seed=2)
    deployed = World(seed=3, dialect="deployed")
    cases: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
        (({"sk_a": one},), {"projects": 2}, "already names them"),
        (({"sk_a": one, "sk_b": one},), {}, "a World of its own"),
        (({"sk_a": one, "sk_b": deployed},), {}, "the same dialect"),
        (({"sk a": one},), {}, "without spaces"), (({},), {}, "at least one project"),
        ((one,), {"projects": 0}, "at least 1"),
        (({"sk_a": one, "sk_b": two},), {"api_keys": {"sk_c": ()}}, "keys of no project: sk_c"),
    ]
    for args, options, why in cases:
        with pytest.raises(ValueError, match=why):
            Simulator(*args, **options)


async def test_the_same_seed_gives_two_projects_the_same_ids_kept_apart(
    served: Any, http: aiohttp.ClientSession,
) -> None:
    """Two projects with one seed serve the same ids; a change to one (deleted, renamed)
    shows in its answers only."""
    worlds = same_seed_worlds()
    sim = await served(worlds)
    alpha, beta = worlds["sk_alpha"], worlds["sk_beta"]
    assert alpha.ids() == beta.ids() and alpha.all() == beta.all()
    gone, renamed = alpha.ids()[0], alpha.ids()[1]
    status, _, _ = await call(http, "DELETE", f"{sim.origin}/_sim/recordings/{gone}",
                              project="sk_alpha")
    assert status == 200
    status, _, _ = await call(http, "PATCH", f"{sim.origin}/_sim/recordings/{renamed}",
                              json={"name": "only in beta"}, project="1")
    assert status == 200
    assert (await call(http, "GET", f"{sim.url}/recordings/{gone}", "sk_alpha"))[0] == 404
    assert (await call(http, "GET", f"{sim.url}/recordings/{gone}", "sk_beta"))[0] == 200
    _, a, _ = await call(http, "GET", f"{sim.url}/recordings/{renamed}", "sk_alpha")
    _, b, _ = await call(http, "GET", f"{sim.url}/recordings/{renamed}", "sk_beta")
    assert (a["name"] != "only in beta", b["name"]) == (True, "only in beta")
    assert await ids_served(http, sim, "sk_beta") == [gone, *alpha.ids()]


# -- rate limits per key ----------------------------------------------------------------------


async def test_saturating_one_key_leaves_the_others_their_allowance(
    served: Any, http: aiohttp.ClientSession,
) -> None:
    """Limits are per project: key A past its limit gets 429s while key B's requests are
    all 200 with its own full allowance; the download-url limit is per key too."""
    clock = ManualClock(START.timestamp() + 3600)
    sim = await served(World(seed=5, recordings=50, start=START, clock=clock), projects=2,
                       rate_limit=5, download_rate_limit=2)
    a, b = KEYS[:2]
    got_a = [await call(http, "GET", f"{sim.url}/recordings", a, limit=1) for _ in range(7)]
    assert [s for s, _, _ in got_a] == [200] * 5 + [429] * 2
    got_b = [await call(http, "GET", f"{sim.url}/recordings", b, limit=1) for _ in range(5)]
    assert [s for s, _, _ in got_b] == [200] * 5
    assert [h["X-RateLimit-Remaining"] for _, _, h in got_b] == ["4", "3", "2", "1", "0"]
    assert (await call(http, "GET", f"{sim.url}/recordings", b))[0] == 429
    clock.advance(60)  # a new window for both
    assert (await call(http, "GET", f"{sim.url}/recordings", a))[0] == 200
    # the download-url bucket: B's two are its own after A used up its two
    world_a, world_b = sim.project(0).world, sim.project(1).world
    media = [(r["id"], m["id"]) for w in (world_a, world_b) for r in w.all() for m in r["media"]
             if m["status"] == "uploaded"]
    rec_a, med_a = next(x for x in media if x[0] in world_a)
    rec_b, med_b = next(x for x in media if x[0] in world_b)
    url = f"{sim.url}/recordings/{{}}/download-url"
    codes_a = [(await call(http, "POST", url.format(rec_a), a, json={"media_id": med_a}))[0]
               for _ in range(3)]
    codes_b = [(await call(http, "POST", url.format(rec_b), b, json={"media_id": med_b}))[0]
               for _ in range(2)]
    assert (codes_a, codes_b) == ([200, 200, 429], [200, 200])
    _, stats, _ = await call(http, "GET", f"{sim.origin}/_sim/stats")
    by_code = [p["by_status_code"] for p in stats["projects"]]
    assert by_code == [{"200": 8, "429": 3}, {"200": 7, "429": 1}]
    assert stats["by_status_code"] == {"200": 15, "429": 4} and stats["requests"] == 19


async def test_the_transcription_limit_is_per_key_too(
    served: Any, http: aiohttp.ClientSession,
) -> None:
    """The transcription and summary bucket is per project: A's are refused, B's answer."""
    clock = ManualClock(START.timestamp() + 3600)
    worlds = same_seed_worlds(clock=clock)
    sim = await served(worlds, rate_limit=100, transcription_rate_limit=3)
    txn = next(r["transcription_id"] for r in worlds["sk_alpha"].all()
               if r.get("transcription_id"))
    url = f"{sim.url}/transcriptions/{txn}"
    got_a = [(await call(http, "GET", url, "sk_alpha"))[0] for _ in range(4)]
    got_b = [(await call(http, "GET", url, "sk_beta"))[0] for _ in range(3)]
    assert (got_a, got_b) == ([200, 200, 200, 429], [200, 200, 200])
    _, _, headers_b = await call(http, "GET", f"{sim.url}/recordings", "sk_beta", limit=1)
    assert headers_b["X-RateLimit-Remaining"] == "96"  # B's 3 + this one; none of A's 4
    sim.project("sk_beta").transcription_rate_limit = None  # one project's setting alone
    assert (await call(http, "GET", url, "sk_beta"))[0] == 200
    assert (await call(http, "GET", url, "sk_alpha"))[0] == 429


# -- files per project ------------------------------------------------------------------------


async def test_file_urls_name_their_project(served: Any, http: aiohttp.ClientSession) -> None:
    """Documented: a download URL of project 1 carries `&project=1` and serves that
    project's file; moved to another project (or tampered) it is refused with a 403."""
    worlds = same_seed_worlds()
    sim = await served(worlds)
    rec, media = next((r["id"], m) for r in worlds["sk_beta"].all() for m in r["media"]
                      if m["status"] == "uploaded" and m["file_size_bytes"] > 1000)
    for key, index in (("sk_alpha", 0), ("sk_beta", 1)):
        status, body, _ = await call(http, "POST", f"{sim.url}/recordings/{rec}/download-url",
                                     key, json={"media_id": media["id"]})
        assert status == 200
        assert ("&project=" in body["download_url"]) == (index == 1)
        async with http.get(body["download_url"]) as r:
            assert (r.status, await r.read()) == (
                200, file_bytes(media["id"], media["file_size_bytes"]))
    moved = body["download_url"].replace("&project=1", "")
    for url in (moved, moved + "&project=0", body["download_url"] + "0", moved + "&project=x"):
        async with http.get(url) as r:
            assert r.status == 403, url
    log = [(r.path.startswith("/_files/"), r.project, r.status) for r in sim.requests]
    assert (True, 1, 200) in log and (True, 0, 200) in log


async def test_deployed_projects_sign_their_own_audio_urls(
    served: Any, http: aiohttp.ClientSession,
) -> None:
    """Deployed: each project has its own `project_id`; the `audio_url`s a key is served
    (list, detail, download-url) open that project's files, whose sha256 matches."""
    sim = await served(World(seed=9, recordings=30, start=START, dialect="deployed"),
                       projects=2)
    project_ids = set()
    for project in sim.projects:
        _, page, _ = await call(http, "GET", f"{sim.url}/recordings", project.key, limit=100)
        item = next(i for i in page["data"] if i["audio_url"] and i["status"] == "completed")
        project_ids |= {i["project_id"] for i in page["data"]}
        _, detail, _ = await call(http, "GET", f"{sim.url}/recordings/{item['id']}", project.key)
        _, link, _ = await call(http, "GET", f"{sim.url}/recordings/{item['id']}/download-url",
                                project.key)
        for url in (item["audio_url"], detail["audio_url"], link["download_url"]):
            assert ("&project=1" in url) == (project.index == 1)
            async with http.get(url) as r:
                body = await r.read()
            assert r.status == 200
            assert body == recording_bytes(item["id"], int(item["file_size_bytes"]))
            assert hashlib.sha256(body).hexdigest() == item["content_sha256"]
        assert project.world.get(item["id"])["audio_url"].startswith(sim.origin)
    assert len(project_ids) == 2


# -- the admin API per project ----------------------------------------------------------------


async def test_the_admin_api_names_a_project(served: Any, http: aiohttp.ClientSession) -> None:
    """With several projects, an admin call on one world needs ?project= (index or key):
    without it a 400 listing them, an unknown one a 404; stats and the request log span
    all of them unless one is named."""
    sim = await served(World(seed=2, recordings=20, start=START), projects=2)
    admin = f"{sim.origin}/_sim"
    status, body, _ = await call(http, "POST", f"{admin}/step", n=1)
    assert (status, body["projects"]) == (400, [{"index": 0, "key": KEYS[0]},
                                                {"index": 1, "key": KEYS[1]}])
    for path in ("recordings", "transcriptions", "faults"):
        assert (await call(http, "GET", f"{admin}/{path}"))[0] == 400
    assert (await call(http, "GET", f"{admin}/recordings", project="2"))[0] == 404
    assert (await call(http, "GET", f"{admin}/recordings", project="sk_nobody"))[0] == 404
    _, created, _ = await call(http, "POST", f"{admin}/recordings", json={"name": "New"},
                               project=KEYS[1])
    assert sim.project(1).world.ids()[0] == created["id"] not in sim.project(0).world
    _, listed, _ = await call(http, "GET", f"{admin}/recordings", project="1")
    assert (listed["total"], listed["data"][0]["id"]) == (21, created["id"])
    _, changes, _ = await call(http, "POST", f"{admin}/step", n=2, project="0")
    assert len(changes["changes"]) == 2
    for key in KEYS[:2]:
        await call(http, "GET", f"{sim.url}/recordings", key, limit=1)
    _, stats, _ = await call(http, "GET", f"{admin}/stats")
    assert stats["recordings"] == sum(len(p.world) for p in sim.projects)
    assert [(p["key"], p["requests"], p["recordings"]) for p in stats["projects"]] == [
        (KEYS[0], 1, len(sim.project(0).world)), (KEYS[1], 1, 21)]
    _, one, _ = await call(http, "GET", f"{admin}/stats", project=KEYS[1])
    assert (one["index"], one["recordings"], one["dialect"]) == (1, 21, "documented")
    _, log, _ = await call(http, "GET", f"{admin}/requests", since=0)
    assert [r["project"] for r in log["requests"]] == [0, 1] and log["next"] == 2
    _, log, _ = await call(http, "GET", f"{admin}/requests", since=0, project="1")
    assert [r["project"] for r in log["requests"]] == [1] and log["next"] == 2


async def test_faults_limits_and_movers_are_per_project(
    served: Any, http: aiohttp.ClientSession,
) -> None:
    """Faults queued for project 1 hit its key only; its rate limit is set alone; latency
    given to serve is every project's; one project's world moves while the other's stays."""
    sim = await served(World(seed=3, recordings=20, start=START), projects=2,
                       faults=Faults(seed=1), latency_s=0.001)
    admin = f"{sim.origin}/_sim"
    assert [p.faults.latency_s for p in sim.projects] == [0.001, 0.001]
    assert sim.faults is sim.project(0).faults is not sim.project(1).faults
    _, snapshot, _ = await call(http, "POST", f"{admin}/faults", project="1",
                                json={"queue": [{"kind": "server_error", "n": 2}]})
    assert snapshot["queued"][0]["n"] == 2 and sim.project(0).faults.pending == 0
    codes = [(await call(http, "GET", f"{sim.url}/recordings", key))[0]
             for key in (KEYS[0], KEYS[1], KEYS[0], KEYS[1], KEYS[1])]
    assert codes[0] == codes[2] == codes[4] == 200 and {codes[1], codes[3]} <= {500, 503}
    _, limited, _ = await call(http, "POST", f"{admin}/rate-limit", limit="1", project=KEYS[0])
    assert limited == {"rate_limit": 1}
    assert [p.rate_limit for p in sim.projects] == [1, None]
    codes = [(await call(http, "GET", f"{sim.url}/recordings", key))[0]
             for key in (KEYS[0], KEYS[0], KEYS[1], KEYS[1])]
    assert codes == [200, 429, 200, 200]
    sim.rate_limit = None  # the Python setter sets every project's
    assert [p.rate_limit for p in sim.projects] == [None, None]
    still = sim.project(0).world.all()
    _, moving, _ = await call(http, "POST", f"{admin}/move", every_s="0.01", project="1")
    assert moving == {"moving": True} and sim.moving
    assert (sim.project(0).moving, sim.project(1).moving) == (False, True)
    before = sim.project(1).world.all()
    await wait_for(lambda: sim.project(1).world.all() != before, timeout=5)
    assert (await call(http, "POST", f"{admin}/freeze", project="1"))[1] == {"moving": False}
    assert not sim.moving and sim.project(0).world.all() == still
    sim.start_moving(0.01)  # Python: every project's world
    assert all(p.moving for p in sim.projects)
    await sim.stop_moving()
    assert not sim.moving


async def test_one_world_is_one_project_as_before(served: Any, http: aiohttp.ClientSession) -> None:
    """A single World: every key of api_keys reaches it, ?project= may be left out (or be 0
    or any of its keys), stats list the one project, file URLs carry no project."""
    sim = await served(World(seed=1, recordings=10, start=START),
                       api_keys={"sk_one": ("recordings:read",), "sk_two": ("recordings:read",),
                                 "sk_none": ()})
    assert len(sim.projects) == 1 and sim.project("sk_two") is sim.project(0)
    assert sim.project(0).key == "sk_one"
    for key in ("sk_one", "sk_two"):
        assert (await call(http, "GET", f"{sim.url}/recordings", key))[0] == 200
    assert (await call(http, "GET", f"{sim.url}/recordings", "sk_none"))[0] == 403
    for which in ({}, {"project": "0"}, {"project": "sk_two"}):
        assert (await call(http, "GET", f"{sim.origin}/_sim/recordings", **which))[0] == 200
    _, stats, _ = await call(http, "GET", f"{sim.origin}/_sim/stats")
    assert [p["requests"] for p in stats["projects"]] == [stats["requests"]] == [3]
    assert "project=" not in sim.file_url(sim.origin, "med_x")


async def test_a_key_with_no_scope_is_refused_in_its_project(
    served: Any, http: aiohttp.ClientSession,
) -> None:
    """api_keys sets the scopes of project keys: a key without recordings:read is a 403."""
    sim = await served(same_seed_worlds(), api_keys={"sk_beta": ()})
    assert (await call(http, "GET", f"{sim.url}/recordings", "sk_alpha"))[0] == 200
    assert (await call(http, "GET", f"{sim.url}/recordings", "sk_beta"))[0] == 403


# -- starting N projects: run_forever and the command line --------------------------------------


async def test_run_forever_announces_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    """The default announcement names the URL and each project's key and seed."""
    ready: list[Simulator] = []

    def on_ready(sim: Simulator) -> None:
        announce(sim)
        ready.append(sim)

    task = asyncio.create_task(run_forever(World(seed=8, recordings=3), projects=2,
                                           on_ready=on_ready, rate_limit=None))
    await wait_for(lambda: ready)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    out = capsys.readouterr().out
    assert f"2 projects (documented dialect) at {ready[0].url}" in out
    assert f"project 1: key {KEYS[1]} (3 recordings, seed {project_seed(8, 1)})" in out


@contextlib.contextmanager
def simulate_cli(args: list[str]) -> Iterator[tuple[str, list[str]]]:
    """`botasync simulate --port 0 ARGS` in its own process: (its URL line, the lines it
    printed up to the last project's key); stopped at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "botasync", "simulate", "--port", "0", *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "NO_COLOR": "1"})
    try:
        assert proc.stderr is not None
        last = project_key(int(args[args.index("--projects") + 1]) - 1)
        lines: list[str] = []
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith(f'api_key = "{last}"'):
                break
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        head = next(line for line in lines if line.startswith("simulator serving"))
        yield head, lines[lines.index(head) + 1:]
    finally:
        proc.terminate()
        proc.wait(10)


async def test_the_command_prints_projects_to_paste(
    tmp_path: Path, http: aiohttp.ClientSession,
) -> None:
    """`botasync simulate --projects 3` prints the URL and an [api] base_url with three
    [[projects]] entries that load as a botasync config, and serves each key its world."""
    with simulate_cli(["--projects", "3", "--recordings", "7", "--seed", "2"]) as (head, rest):
        assert head.startswith("simulator serving 3 projects of 7 recordings (documented")
        snippet = "\n".join(rest)
        parsed = tomllib.loads(snippet)
        url = parsed["api"]["base_url"]
        assert [p["api_key"] for p in parsed["projects"]] == KEYS
        (tmp_path / "botasync.toml").write_text(snippet)
        cfg = config.load(tmp_path / "botasync.toml", env={})
        assert [(v.project, v.api_key()) for v in cfg.each_project()] == [
            (f"project_{i}", KEYS[i]) for i in range(3)]
        seen = []
        for key in KEYS:
            status, page, _ = await call(http, "GET", f"{url}/recordings", key, limit=100)
            assert (status, len(page["data"])) == (200, 7)
            seen.append({i["id"] for i in page["data"]})
        assert not (seen[0] & seen[1] or seen[1] & seen[2])
        origin = url.removesuffix("/v1")
        _, stats, _ = await call(http, "GET", f"{origin}/_sim/stats")
        assert [p["seed"] for p in stats["projects"]] == [2, project_seed(2, 1),
                                                          project_seed(2, 2)]
        assert [p["rate_limit"] for p in stats["projects"]] == [100] * 3


def test_the_command_refuses_api_key_with_projects() -> None:
    """--api-key names the one project's key: with --projects it is a usage error."""
    done = subprocess.run([sys.executable, "-m", "botasync", "simulate", "--projects", "2",
                           "--api-key", "sk_mine"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--projects the keys are sk_test_project_0" in done.stderr


# -- one simulator, two projects, one mirror --------------------------------------------------


async def test_one_simulator_feeds_two_projects_into_one_mirror(tmp_path: Path) -> None:
    """Two [[projects]] against one simulator, the same seed (the same ids): `sync` mirrors
    each exactly and apart; a recording deleted in one project stays in the other's mirror;
    each project's requests are its own in the simulator's log, under its own limit."""
    from botasync.service.app import sync_once
    from tests.mirror import mirror_diff

    worlds = {"sk_test_one": World(seed=5, recordings=120, start=START),
              "sk_test_two": World(seed=5, recordings=120, start=START)}
    db = tmp_path / "m.db"
    async with serve(worlds, rate_limit=1000) as sim:
        path = tmp_path / "botasync.toml"
        path.write_text(f'[database]\npath = "{db}"\n[api]\nbase_url = "{sim.url}"\n' + "".join(
            f'[[projects]]\nname = "{name}"\napi_key = "sk_test_{name}"\n'
            for name in ("one", "two")))
        cfg = config.load(path, env={}, resolve_key=False)
        stats, _ = await sync_once(cfg, deliver_timeout=30)
        assert [s.created for s in stats] == [120, 120]
        gone = worlds["sk_test_one"].ids()[3]
        worlds["sk_test_one"].delete(gone)
        await sync_once(cfg, deliver_timeout=30)
        for name, world in zip(("one", "two"), worlds.values(), strict=True):
            assert mirror_diff(db, world.all(), name) == [], name
        assert {r.project for r in sim.requests} == {0, 1}
        assert [p.requests for p in sim.projects] == [
            sum(r.project == i for r in sim.requests) for i in (0, 1)]
        assert max(sim.max_requests_in_window(project=i) for i in (0, 1)) < 1000
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT project, deleted_at IS NOT NULL FROM recordings "
                                 "WHERE id = ?", (gone,)))
    conn.close()
    assert rows == {"one": 1, "two": 0}
