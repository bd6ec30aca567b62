"""The simulator's deployed dialect, over loopback with a plain aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import re
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from botasync.simulator import ManualClock, Simulator, World, recording_bytes
from tests.conftest import API_KEY, SimulatorFactory

AUTH = {"Authorization": f"Bearer {API_KEY}"}
START = datetime(2026, 9, 30, 12, 0, tzinfo=UTC)
STATUSES = ("pending", "streaming", "uploaded", "processing", "completed", "failed",
            "integrity_failure")
ORDER = {"pending": 0, "streaming": 1, "uploaded": 2, "processing": 3, "completed": 4,
         "failed": 4, "integrity_failure": 4}
FIELDS = ["id", "project_id", "device_id", "end_user_id", "name", "status", "duration_seconds",
          "recorded_at", "file_size_bytes", "content_sha256", "content_sha256_verified_at",
          "source", "audio_url", "metadata", "created_at", "updated_at"]
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")


def deployed_world(recordings: int = 300, seed: int = 7, **options: Any) -> World:
    """A seeded world speaking the deployed dialect."""
    return World(seed=seed, recordings=recordings, dialect="deployed", **options)


@pytest.fixture
async def sim(simulator_factory: SimulatorFactory) -> Simulator:
    """A deployed world of 300 recordings, served with the rate limit off."""
    return await simulator_factory(deployed_world())


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session (not botasync's client)."""
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str] | None = None,
    **params: Any,
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """Make a request and return (status, parsed JSON body, headers)."""
    async with http.request(method, url, params=params,
                            headers=AUTH if headers is None else headers) as r:
        return r.status, orjson.loads(await r.read()), r.headers


async def page(http: aiohttp.ClientSession, sim: Simulator, **params: Any) -> dict[str, Any]:
    """One list page (asserting a 200)."""
    status, body, _ = await call(http, "GET", f"{sim.url}/recordings", **params)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def walk(http: aiohttp.ClientSession, sim: Simulator, **params: Any) -> list[dict[str, Any]]:
    """Every item of the list, following next_cursor, as a client would walk it."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        body = await page(http, sim, limit=100, **params, **({"cursor": cursor} if cursor else {}))
        items.extend(body["data"])
        if not body["has_more"]:
            assert "next_cursor" not in body
            return items
        cursor = body["next_cursor"]


def with_file(world: World, source: str | None = None) -> dict[str, Any]:
    """A recording that has a stored file of more than 1000 bytes (from `source`, if given)."""
    return next(i for i in world.all() if i["audio_url"] and int(i["file_size_bytes"]) > 1000
                and source in (None, i["source"]))


# -- the world ------------------------------------------------------------------------------


def test_generated_world_is_plausible() -> None:
    """Every item has the deployed shape; its file fields agree with its status."""
    world = deployed_world(3000, seed=9, start=START)
    items = world.all()
    assert len({i["id"] for i in items}) == 3000
    assert {i["status"] for i in items} == set(STATUSES)
    assert {i["source"] for i in items} == {"device", "app_import", "api_upload"}
    assert len({i["project_id"] for i in items}) == 1
    assert items[0]["created_at"] == "2026-09-30T12:00:00Z"
    assert any(i["device_id"] is None for i in items) and any(i["end_user_id"] is None
                                                            for i in items)
    for item in items:
        assert list(item) == FIELDS
        assert item["updated_at"] >= item["created_at"]
        if item["status"] in ("pending", "streaming"):
            assert item["audio_url"] is item["file_size_bytes"] is item["duration_seconds"] is None
            continue
        size = item["file_size_bytes"]
        assert isinstance(size, str) and size.isdigit() and 0 < int(size) <= 262_144
        assert re.fullmatch(r"[0-9a-f]{64}", item["content_sha256"])
        assert isinstance(item["duration_seconds"], int)
        assert item["audio_url"].startswith("http")
        verified = item["content_sha256_verified_at"]
        assert (verified is not None) == (item["status"] in ("processing", "completed", "failed"))
    assert "media" not in items[0] and "duration_ms" not in items[0]


def test_world_is_deterministic_for_a_seed() -> None:
    """Same seed, start and clock give the same archive and changes (signed URLs too)."""
    def build(seed: int) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
        world = deployed_world(200, seed, start=START, clock=ManualClock(START.timestamp()))
        return world.all(), world.step(50), world.all()

    assert build(11) == build(11)
    assert build(11)[0] != build(12)[0]


def test_step_walks_the_seven_statuses_and_bumps_updated_at() -> None:
    """Steps reach streaming and integrity_failure, only move forward, and bump updated_at."""
    clock = ManualClock(START.timestamp())
    world = deployed_world(300, seed=5, start=START, clock=clock)
    before = {i["id"]: i for i in world.all()}
    seen: set[str] = set()
    changes: list[str] = []
    for _ in range(40):
        clock.advance(30)
        changes += world.step(10)
        seen |= {i["status"] for i in world.all()[:80]}
    assert {"streaming", "integrity_failure"} <= seen
    assert any("pending->streaming" in c for c in changes)
    assert any("uploaded->integrity_failure" in c for c in changes)
    for item in world.all():
        old = before.get(item["id"])
        if old is None:
            continue
        assert ORDER[item["status"]] >= ORDER[old["status"]]
        rest = {k: v for k, v in item.items() if k not in ("audio_url", "updated_at")}
        old_rest = {k: v for k, v in old.items() if k not in ("audio_url", "updated_at")}
        if rest != old_rest:
            assert item["updated_at"] > old["updated_at"], item["id"]
        else:
            assert item["updated_at"] == old["updated_at"]


def test_update_and_create_keep_the_object_consistent() -> None:
    """update bumps updated_at strictly (even on a still clock); a file appears with its hash."""
    clock = ManualClock(START.timestamp())
    world = deployed_world(30, seed=3, start=START, clock=clock)
    created = world.create(source="device")
    assert (created["status"], created["audio_url"], created["updated_at"]) == (
        "pending", None, created["created_at"])
    assert world.ids()[0] == created["id"]
    first = world.update(created["id"], name="Standup")
    second = world.update(created["id"], status="uploaded")
    assert created["updated_at"] < first["updated_at"] < second["updated_at"]
    size = int(second["file_size_bytes"])
    assert second["content_sha256"] == hashlib.sha256(
        recording_bytes(created["id"], size)).hexdigest()
    assert second["audio_url"] and second["duration_seconds"]
    same = world.update(created["id"], name="Standup")
    assert same["updated_at"] == second["updated_at"]
    given = world.update(created["id"], content_sha256="0" * 64, updated_at="2030-01-01T00:00:00Z")
    assert (given["content_sha256"], given["updated_at"]) == ("0" * 64, "2030-01-01T00:00:00Z")
    bigger = world.update(created["id"], file_size_bytes="5000")
    assert bigger["content_sha256"] == hashlib.sha256(
        recording_bytes(created["id"], 5000)).hexdigest()
    with pytest.raises(ValueError, match="no media items"):
        world.add_media(created["id"])
    with pytest.raises(ValueError, match="dialect"):
        World(dialect="legacy")  # type: ignore[arg-type]


async def test_world_builds_and_pages_fast() -> None:
    """10,000 recordings build in well under two seconds; a page with signed URLs stays cheap."""
    began = time.process_time()
    world = deployed_world(10_000, seed=1, start=START)
    assert time.process_time() - began < 2.0  # hashing whole files would take ten times that
    device = world.cast.devices[0]
    began = time.process_time()
    cursor = None
    for _ in range(60):
        body = orjson.loads(world.cursor_page_body(100, cursor))
        cursor = body["next_cursor"]
        world.cursor_page_body(100, None, status="completed")
        world.cursor_page_body(100, None, device_id=device)
    assert (time.process_time() - began) / 180 < 0.01


# -- cursor pages ---------------------------------------------------------------------------


async def test_cursor_walk_visits_every_item_once_while_the_world_changes(
    sim: Simulator, http: aiohttp.ClientSession,
) -> None:
    """New recordings at the top and deletions on both sides of the cursor shift nothing."""
    world = sim.world
    ids = world.ids()
    seen: list[str] = []
    deleted: set[str] = set()
    cursor = None
    for n in itertools.count():
        params = {"limit": 25, **({"cursor": cursor} if cursor else {})}
        body = await page(http, sim, **params)
        seen += [i["id"] for i in body["data"]]
        if n == 2:  # mid-walk: new ones on top, deletions before and after the cursor
            for _ in range(7):
                world.create()
            for rec_id in (ids[3], ids[80], ids[81], ids[150], ids[299]):
                world.delete(rec_id)
                deleted.add(rec_id)
        if not body["has_more"]:
            assert "next_cursor" not in body
            break
        cursor = body["next_cursor"]
    assert len(seen) == len(set(seen))
    assert seen == [i for i in ids if i not in deleted or ids.index(i) < 75]


async def test_cursors_survive_a_renumbering(
    sim: Simulator, http: aiohttp.ClientSession,
) -> None:
    """Many items pushed into one gap spread the ranks; a cursor from before still fits."""
    ids = sim.world.ids()
    first = await page(http, sim, limit=50)
    for n in range(60):  # more than the 20 halvings a gap allows
        sim.world.put_raw({"id": f"rec_raw{n}"}, position=10)
    second = await page(http, sim, limit=50, cursor=first["next_cursor"])
    assert [i["id"] for i in second["data"]] == ids[50:100]


async def test_order_offset_and_the_last_page(
    sim: Simulator, http: aiohttp.ClientSession,
) -> None:
    """Newest first by (created_at, id); offset is ignored; the last page has no cursor."""
    items = await walk(http, sim)
    assert [i["id"] for i in items] == sim.world.ids()
    keys = [(i["created_at"], i["id"]) for i in items]
    assert all(a > b for a, b in itertools.pairwise(keys))
    first = await page(http, sim, limit=5)
    shifted = await page(http, sim, limit=5, offset=50)
    assert [i["id"] for i in shifted["data"]] == [i["id"] for i in first["data"]]
    assert shifted["has_more"] and shifted["next_cursor"]
    default = await page(http, sim)
    assert (len(default["data"]), default["has_more"]) == (25, True)
    whole = await page(http, sim, limit=100, status="failed")
    assert (whole["has_more"], "next_cursor" in whole) == (False, False)


@pytest.mark.parametrize("cursor", [
    "not a cursor!", "", "aGVsbG8", base64.urlsafe_b64encode(b"v1.99.5").decode(),
    base64.urlsafe_b64encode(b"v1.0.x").decode(), "%%%",
])
async def test_bad_cursor_is_400(
    sim: Simulator, http: aiohttp.ClientSession, cursor: str,
) -> None:
    """A cursor the server did not make (or from a future epoch) gets 400 'invalid cursor'."""
    status, body, _ = await call(http, "GET", f"{sim.url}/recordings", cursor=cursor)
    assert (status, body) == (400, {"error": "invalid cursor"})


async def test_status_filter_and_ignore_status_filter(
    sim: Simulator, http: aiohttp.ClientSession,
) -> None:
    """status filters the walk (with the other filters); the knob makes the server ignore it."""
    everything = sim.world.all()
    device = everything[0]["device_id"]
    for params in ({"status": "completed"}, {"status": "integrity_failure"},
                   {"status": "completed", "device_id": device}):
        expected = [i["id"] for i in everything if all(i[k] == v for k, v in params.items())]
        assert [i["id"] for i in await walk(http, sim, **params)] == expected
    status, body, _ = await call(http, "GET", f"{sim.url}/recordings", status="done")
    assert (status, set(body)) == (400, {"error"})
    sim.ignore_status_filter = True
    assert [i["id"] for i in await walk(http, sim, status="failed")] == sim.world.ids()
    status, _, _ = await call(http, "GET", f"{sim.url}/recordings", status="done")
    assert status == 200


# -- audio URLs, files and download-url ----------------------------------------------------


async def test_audio_url_is_signed_anew_on_every_answer(
    sim: Simulator, http: aiohttp.ClientSession,
) -> None:
    """Two answers for the same item carry different URLs to the same path; both work."""
    first = (await page(http, sim, limit=100))["data"]
    second = (await page(http, sim, limit=100))["data"]
    item = next(i for i in first if i["audio_url"])
    again = next(i for i in second if i["id"] == item["id"])
    _, detail, _ = await call(http, "GET", f"{sim.url}/recordings/{item['id']}")
    urls = [item["audio_url"], again["audio_url"], detail["audio_url"]]
    assert len(set(urls)) == 3
    assert {u.split("?")[0] for u in urls} == {f"{sim.origin}/_files/{item['id']}"}
    assert {k: v for k, v in item.items() if k != "audio_url"} == {
        k: v for k, v in detail.items() if k != "audio_url"}
    for url in urls:
        async with http.get(url) as r:
            assert (r.status, len(await r.read())) == (200, int(item["file_size_bytes"]))
    assert all(i["audio_url"] is None for i in first if i["status"] in ("pending", "streaming"))


async def test_the_file_matches_its_hash_and_size(
    sim: Simulator, http: aiohttp.ClientSession,
) -> None:
    """The URL serves int(file_size_bytes) bytes whose sha256 is content_sha256, with ranges."""
    item = with_file(sim.world, "device")
    size = int(item["file_size_bytes"])
    async with http.get(item["audio_url"]) as r:
        data = await r.read()
        assert (r.status, r.headers["Content-Type"]) == (200, "audio/ogg")
    assert (len(data), hashlib.sha256(data).hexdigest()) == (size, item["content_sha256"])
    async with http.get(item["audio_url"], headers={"Range": "bytes=1000-"}) as r:
        assert (r.status, await r.read()) == (206, data[1000:])
    tampered = re.sub(r"nonce=[0-9a-f]+", "nonce=0", item["audio_url"])
    async with http.get(tampered) as r:
        assert r.status == 403
    sim.faults.queue("truncate")
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(item["audio_url"]) as r:
            await r.read()


@pytest.mark.parametrize(("source", "content_type", "size_type"), [
    ("device", "audio/ogg", str), ("app_import", "audio/mp4", int), ("api_upload", None, None),
])
async def test_download_url_get(
    sim: Simulator, http: aiohttp.ClientSession, source: str, content_type: str | None,
    size_type: type | None,
) -> None:
    """GET download-url: a fresh URL, expires_in, and the content type and size per source."""
    item = with_file(sim.world, source)
    url = f"{sim.url}/recordings/{item['id']}/download-url"
    status, body, _ = await call(http, "GET", url)
    assert status == 200
    assert list(body) == ["download_url", "expires_in", "content_type", "file_size_bytes"]
    assert (body["expires_in"], body["content_type"]) == (3600, content_type)
    size = int(item["file_size_bytes"])
    assert body["file_size_bytes"] == (None if size_type is None else size_type(size))
    _, again, _ = await call(http, "GET", url)
    assert again["download_url"] != body["download_url"]
    async with http.get(body["download_url"]) as r:
        assert hashlib.sha256(await r.read()).hexdigest() == item["content_sha256"]


async def test_download_url_refusals(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """No file yet or no recording: 404; POST (the documented form): 405 with a message."""
    base = f"{sim.url}/recordings"
    pending = sim.world.create()
    status, body, _ = await call(http, "GET", f"{base}/{pending['id']}/download-url")
    assert (status, set(body)) == (404, {"error"})
    status, body, _ = await call(http, "GET", f"{base}/rec_gone/download-url")
    assert (status, body) == (404, {"error": "Recording not found"})
    item = with_file(sim.world)
    async with http.post(f"{base}/{item['id']}/download-url", headers=AUTH,
                         json={"media_id": "med_x"}) as r:
        assert (r.status, await r.json()) == (405, {"message": "Method Not Allowed"})


async def test_download_url_has_its_own_limit(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """download-url calls are refused past their own limit, with a plain error, no headers."""
    sim = await simulator_factory(deployed_world(30, clock=ManualClock()), rate_limit=100,
                                  download_rate_limit=2)
    url = f"{sim.url}/recordings/{with_file(sim.world)['id']}/download-url"
    got = [await call(http, "GET", url) for _ in range(3)]
    assert [s for s, _, _ in got] == [200, 200, 429]
    assert got[2][1] == {"error": "Too many requests"}
    assert not any(h in got[2][2] for h in RATE_HEADERS)


# -- errors, rate limits, faults ------------------------------------------------------------


async def test_errors_are_plain_strings(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """4xx answers are {"error": text}; 405 and 5xx are {"message": text}; never an object."""
    base = f"{sim.url}/recordings"
    cases: list[tuple[str, dict[str, str] | None, dict[str, Any], int]] = [
        (base, None, {"limit": 0}, 400), (base, None, {"limit": "x"}, 400),
        (base, {}, {}, 401), (base, {"Authorization": "Bearer sk_test_wrong"}, {}, 401),
        (base, {"Authorization": "Bearer sk_test_noscope"}, {}, 403),
        (f"{base}/rec_gone", None, {}, 404), (f"{sim.url}/nothing", None, {}, 404),
    ]
    for url, headers, params, expected in cases:
        status, body, _ = await call(http, "GET", url, headers, **params)
        assert status == expected
        assert list(body) == ["error"] and isinstance(body["error"], str), body
    assert (await call(http, "GET", f"{base}/rec_gone"))[1] == {"error": "Recording not found"}
    sim.faults.queue("server_error", n=2)
    for _ in range(2):
        status, body, _ = await call(http, "GET", base)
        assert status in (500, 503)
        assert list(body) == ["message"] and isinstance(body["message"], str)


async def test_rate_limit_without_headers(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """The limit is enforced, but no answer (not even the 429) carries rate-limit headers."""
    clock = ManualClock()
    sim = await simulator_factory(deployed_world(20, clock=clock), rate_limit=3)
    got = [await call(http, "GET", f"{sim.url}/recordings", limit=1) for _ in range(4)]
    assert [s for s, _, _ in got] == [200, 200, 200, 429]
    assert got[3][1] == {"error": "Too many requests"}
    for _, _, headers in got:
        assert not any(h in headers for h in RATE_HEADERS)
    sim.faults.queue("rate_limited")
    clock.advance(60)
    status, body, headers = await call(http, "GET", f"{sim.url}/recordings")
    assert (status, body) == (429, {"error": "Too many requests"})
    assert not any(h in headers for h in RATE_HEADERS)


@pytest.mark.parametrize("kind", ["html_502", "malformed", "non_utf8", "slow", "drop"])
async def test_transport_faults(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession, kind: str,
) -> None:
    """The other faults behave as in the documented dialect."""
    sim = await simulator_factory(deployed_world(30))
    sim.faults.slow_s = 0.05
    sim.faults.queue(kind, n=2 if kind == "drop" else 1)  # aiohttp retries a dropped GET once
    try:
        async with http.get(f"{sim.url}/recordings", headers=AUTH) as r:
            status, body = r.status, await r.read()
    except aiohttp.ServerDisconnectedError:
        status, body = 0, b""
    expected = {"html_502": 502, "malformed": 200, "non_utf8": 200, "slow": 200, "drop": 0}
    assert status == expected[kind]
    if kind == "slow":
        assert len(orjson.loads(body)["data"]) == 25
    elif kind == "malformed":
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)
    assert sim.faults.injected == {kind: 2 if kind == "drop" else 1}


# -- admin --------------------------------------------------------------------------------------


async def test_admin_speaks_the_dialect(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """stats names the dialect; create/update/delete take deployed fields and refuse media."""
    admin = f"{sim.origin}/_sim"
    _, stats, _ = await call(http, "GET", f"{admin}/stats")
    assert (stats["dialect"], sum(stats["by_status"].values())) == ("deployed", 300)
    assert set(stats["by_status"]) == set(STATUSES)
    async with http.post(f"{admin}/recordings", json={"status": "uploaded", "source": "app_import",
                                                      "file_size_bytes": "4096"}) as r:
        created = await r.json()
        assert r.status == 201
    assert (created["file_size_bytes"], created["source"]) == ("4096", "app_import")
    assert created["audio_url"].startswith(f"{sim.origin}/_files/{created['id']}?")
    async with http.patch(f"{admin}/recordings/{created['id']}",
                          json={"status": "integrity_failure"}) as r:
        updated = await r.json()
    assert updated["status"] == "integrity_failure"
    assert updated["updated_at"] > created["updated_at"]
    async with http.patch(f"{admin}/recordings/{created['id']}", json={"media": []}) as r:
        assert (r.status, "documented" in (await r.json())["error"]) == (400, True)
    _, everything, _ = await call(http, "GET", f"{admin}/recordings")
    assert everything["total"] == 301
    assert everything["data"][0]["audio_url"].startswith(f"{sim.origin}/_files/")
    async with http.delete(f"{admin}/recordings/{created['id']}") as r:
        assert (await r.json())["id"] == created["id"]
    async with http.delete(f"{admin}/recordings/{created['id']}") as r:
        assert r.status == 404
    assert created["id"] not in sim.world


async def test_the_simulate_command_speaks_the_chosen_dialect(
    http: aiohttp.ClientSession,
) -> None:
    """`botasync simulate --dialect deployed` serves cursor pages; it stops on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "botasync", "simulate", "--port", "0", "--recordings", "30",
        "--no-rate-limit", "--dialect", "deployed", "--api-key", API_KEY,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        seen = b""
        while (found := re.search(rb"\(deployed dialect\) at (http://127\.0\.0\.1:\d+/v1)", seen)
               ) is None:
            line = await asyncio.wait_for(proc.stderr.readline(), timeout=30)
            assert line, seen.decode()
            seen += line
        url = found[1].decode()
        status, body, _ = await call(http, "GET", f"{url}/recordings", limit=10)
        assert (status, body["has_more"], len(body["data"])) == (200, True, 10)
        assert body["next_cursor"] and "project_id" in body["data"][0]
    finally:
        proc.terminate()
        await proc.wait()
