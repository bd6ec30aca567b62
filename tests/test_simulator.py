"""The Bota API simulator, over loopback with a plain aiohttp client."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from botasync.simulator import (
    FAULT_KINDS,
    Faults,
    ManualClock,
    Simulator,
    World,
    file_bytes,
    run_forever,
)
from botasync.simulator.api import NON_UTF8
from tests.conftest import API_KEY, SimulatorFactory, wait_for

AUTH = {"Authorization": f"Bearer {API_KEY}"}
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ORDER = {"pending": 0, "uploaded": 1, "processing": 2, "completed": 3, "failed": 3}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session (not botasync's client)."""
    async with aiohttp.ClientSession() as session:
        yield session


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None, **params: Any,
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """GET a URL and return (status, parsed JSON body, headers)."""
    async with http.get(url, params=params, headers=AUTH if headers is None else headers) as r:
        return r.status, orjson.loads(await r.read()), r.headers


async def walk(http: aiohttp.ClientSession, sim: Simulator, **params: Any) -> list[dict[str, Any]]:
    """Every item of the list, page by page, as a client would walk it."""
    items: list[dict[str, Any]] = []
    offset = 0
    while True:
        status, body, _ = await get_json(http, f"{sim.url}/recordings", limit=100, offset=offset,
                                         **params)
        assert status == 200
        items.extend(body["data"])
        if not body["has_more"]:
            return items
        offset += 100


def uploaded_media(world: World) -> tuple[str, dict[str, Any]]:
    """A recording id and one of its uploaded media items."""
    for item in world.all():
        for media in item["media"]:
            if media["status"] == "uploaded" and media["file_size_bytes"] > 1000:
                return item["id"], media
    raise AssertionError("no uploaded media in the world")


async def download_url(
    http: aiohttp.ClientSession, sim: Simulator, rec_id: str, media_id: str,
) -> tuple[int, Any]:
    """POST download-url and return (status, body)."""
    async with http.post(f"{sim.url}/recordings/{rec_id}/download-url", headers=AUTH,
                         json={"media_id": media_id}) as r:
        return r.status, orjson.loads(await r.read())


# -- the list -------------------------------------------------------------------------------------


async def test_walk_returns_the_whole_world_newest_first(
    simulator: Simulator, http: aiohttp.ClientSession,
) -> None:
    """Walking pages of 100 yields every recording once, created_at strictly descending."""
    items = await walk(http, simulator)
    assert [i["id"] for i in items] == simulator.world.ids()
    assert len(items) == 300
    stamps = [datetime.fromisoformat(i["created_at"]) for i in items]
    assert all(a > b for a, b in itertools.pairwise(stamps))


async def test_default_page_and_has_more(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    """Without parameters a page holds 25 items; has_more turns false exactly at the end."""
    status, body, _ = await get_json(http, f"{simulator.url}/recordings")
    assert (status, len(body["data"]), body["has_more"]) == (200, 25, True)
    _, last, _ = await get_json(http, f"{simulator.url}/recordings", limit=50, offset=250)
    assert (len(last["data"]), last["has_more"]) == (50, False)
    _, beyond, _ = await get_json(http, f"{simulator.url}/recordings", offset=300)
    assert beyond == {"data": [], "has_more": False}


async def test_filters_match_a_plain_scan(
    simulator: Simulator, http: aiohttp.ClientSession,
) -> None:
    """status, device_id and end_user_id filters (alone and together) match a scan of the world."""
    everything = simulator.world.all()
    device, user = everything[0]["device_id"], everything[0]["end_user_id"]
    cases: list[dict[str, str]] = [
        {"status": "completed"}, {"status": "pending"}, {"status": "failed"},
        {"device_id": device}, {"end_user_id": user},
        {"status": "completed", "device_id": device, "end_user_id": user},
        {"device_id": "dev_nobody"},
    ]
    for params in cases:
        expected = [i["id"] for i in everything if all(i[k] == v for k, v in params.items())]
        got = [i["id"] for i in await walk(http, simulator, **params)]
        assert got == expected, params
    assert len([i for i in everything if i["status"] == "completed"]) > 200


async def test_offsets_shift_when_items_are_created_and_deleted(
    simulator: Simulator, http: aiohttp.ClientSession,
) -> None:
    """A new recording pushes a page down by one; a deletion above it pulls it up by one."""
    world, url = simulator.world, f"{simulator.url}/recordings"
    ids = world.ids()
    _, page, _ = await get_json(http, url, limit=5, offset=10)
    assert [i["id"] for i in page["data"]] == ids[10:15]
    created = world.create()
    _, page, _ = await get_json(http, url, limit=5, offset=10)
    assert [i["id"] for i in page["data"]] == ids[9:14]
    _, top, _ = await get_json(http, url, limit=1)
    assert top["data"][0]["id"] == created["id"]
    assert (created["status"], [m["status"] for m in created["media"]]) == ("pending", ["pending"])
    world.delete(ids[0])
    world.delete(ids[3])
    _, page, _ = await get_json(http, url, limit=5, offset=10)
    assert [i["id"] for i in page["data"]] == [i for i in ids if i not in (ids[0], ids[3])][9:14]


async def test_detail_and_404(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    """A recording's detail equals its list entry; an unknown or deleted id is a 404 envelope."""
    first = simulator.world.all()[0]
    status, body, _ = await get_json(http, f"{simulator.url}/recordings/{first['id']}")
    assert (status, body) == (200, first)
    simulator.world.delete(first["id"])
    status, body, _ = await get_json(http, f"{simulator.url}/recordings/{first['id']}")
    assert status == 404
    assert body["error"]["code"] == "not_found"
    assert first["id"] in body["error"]["message"]
    status, body, _ = await get_json(http, f"{simulator.url}/nothing-here")
    assert (status, body["error"]["code"]) == (404, "not_found")


@pytest.mark.parametrize("query", [
    "limit=0", "limit=101", "limit=abc", "limit=1.5", "limit=", "offset=-1", "offset=x",
    "status=done", "status=", "limit=5&limit=6",
])
async def test_bad_list_parameters_are_400(
    simulator: Simulator, http: aiohttp.ClientSession, query: str,
) -> None:
    """Out-of-range, non-integer, unknown-status or repeated parameters get invalid_request."""
    async with http.get(f"{simulator.url}/recordings?{query}", headers=AUTH) as r:
        body = orjson.loads(await r.read())
        assert r.status == 400
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["details"]["param"] == query.split("=")[0]


@pytest.mark.parametrize(("headers", "status", "code"), [
    ({}, 401, "unauthorized"),
    ({"Authorization": "Bearer sk_test_wrong"}, 401, "unauthorized"),
    ({"Authorization": f"Basic {API_KEY}"}, 401, "unauthorized"),
    ({"Authorization": "Bearer sk_test_noscope"}, 403, "forbidden"),
])
async def test_auth_errors(
    simulator: Simulator, http: aiohttp.ClientSession, headers: dict[str, str], status: int,
    code: str,
) -> None:
    """A missing or unknown key is a 401; a key without recordings:read is a 403 naming it."""
    got, body, _ = await get_json(http, f"{simulator.url}/recordings", headers=headers)
    assert (got, body["error"]["code"]) == (status, code)
    if status == 403:
        assert "recordings:read" in body["error"]["message"]
    assert "sk_test" not in body["error"]["message"]


# -- rate limits and the request log --------------------------------------------------------------


async def test_rate_limit_headers_429_and_reset(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """Headers count down, one over the limit gets 429 + Retry-After, a new window resets."""
    clock = ManualClock(1_750_000_000.0)
    sim = await simulator_factory(World(seed=1, recordings=20, clock=clock), rate_limit=3)
    seen = []
    for _ in range(3):
        status, _, headers = await get_json(http, f"{sim.url}/recordings", limit=1)
        seen.append((status, headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"],
                     headers["X-RateLimit-Reset"]))
    assert seen == [(200, "3", str(n), "1750000060") for n in (2, 1, 0)]
    clock.advance(20.5)
    status, body, headers = await get_json(http, f"{sim.url}/recordings", limit=1)
    assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")
    assert (headers["Retry-After"], headers["X-RateLimit-Remaining"]) == ("40", "0")
    clock.advance(39.5)
    status, _, headers = await get_json(http, f"{sim.url}/recordings", limit=1)
    assert (status, headers["X-RateLimit-Remaining"]) == (200, "2")
    assert [r.status for r in sim.requests] == [200, 200, 200, 429, 200]
    assert [r.t for r in sim.requests][-2:] == [1_750_000_020.5, 1_750_000_060.0]
    assert sim.max_requests_in_window(60.0) == 4


async def test_rate_limit_off_sends_no_headers(
    simulator: Simulator, http: aiohttp.ClientSession,
) -> None:
    """With the limit off (None) nothing is refused and no X-RateLimit headers are sent."""
    for _ in range(5):
        status, _, headers = await get_json(http, f"{simulator.url}/recordings", limit=1)
        assert status == 200
        assert "X-RateLimit-Limit" not in headers


async def test_download_url_has_its_own_limit(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """download-url calls are refused past their own limit while list calls still pass."""
    world = World(seed=2, recordings=30, clock=ManualClock())
    sim = await simulator_factory(world, rate_limit=100, download_rate_limit=2)
    rec_id, media = uploaded_media(world)
    statuses = [(await download_url(http, sim, rec_id, media["id"]))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    status, body = await download_url(http, sim, rec_id, media["id"])
    assert (status, body["error"]["details"]["scope"]) == (429, "download_url")
    status, _, headers = await get_json(http, f"{sim.url}/recordings", limit=1)
    assert (status, headers["X-RateLimit-Remaining"]) == (200, "95")


async def test_request_log_records_query_and_status(
    simulator: Simulator, http: aiohttp.ClientSession,
) -> None:
    """API requests are logged with method, path, query string and status; admin calls are not."""
    await get_json(http, f"{simulator.url}/recordings", limit=2, status="failed")
    await get_json(http, f"{simulator.url}/recordings/rec_missing")
    await get_json(http, f"{simulator.origin}/_sim/stats")
    got = [(r.method, r.path, r.query, r.status) for r in simulator.requests]
    assert got == [("GET", "/v1/recordings", "limit=2&status=failed", 200),
                   ("GET", "/v1/recordings/rec_missing", "", 404)]
    assert all(abs(r.t - time.time()) < 60 for r in simulator.requests)


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["server_error", "rate_limited", "html_502", "malformed",
                                  "non_utf8"])
async def test_queued_fault_kinds(
    simulator: Simulator, http: aiohttp.ClientSession, kind: str,
) -> None:
    """A queued fault hits the next matching request only, with the documented shape."""
    simulator.faults.queue(kind)
    async with http.get(f"{simulator.url}/recordings", headers=AUTH) as r:
        status, body, headers = r.status, await r.read(), r.headers
    if kind == "server_error":
        assert status in (500, 503)
        assert orjson.loads(body)["error"]["code"] == "internal_error"
    elif kind == "rate_limited":
        assert (status, headers["Retry-After"]) == (429, "1")
        assert orjson.loads(body)["error"]["code"] == "rate_limit_exceeded"
    elif kind == "html_502":
        assert (status, headers["Content-Type"].split(";")[0]) == (502, "text/html")
        assert body.startswith(b"<html>")
    elif kind == "malformed":
        assert status == 200
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)
    else:
        assert (status, body) == (200, NON_UTF8)
        with pytest.raises(UnicodeDecodeError):
            body.decode("utf-8")
    status, page, _ = await get_json(http, f"{simulator.url}/recordings")
    assert (status, len(page["data"])) == (200, 25)
    assert simulator.faults.injected == {kind: 1}


async def test_drop_closes_the_connection(
    simulator: Simulator, http: aiohttp.ClientSession,
) -> None:
    """A dropped request gets no answer at all and is logged with status 0."""
    # aiohttp retries an idempotent GET once on a dropped connection, so drop two.
    simulator.faults.queue("drop", n=2)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await get_json(http, f"{simulator.url}/recordings")
    assert [r.status for r in simulator.requests] == [0, 0]
    status, _, _ = await get_json(http, f"{simulator.url}/recordings")
    assert status == 200


async def test_slow_fault_and_latency(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """latency_s delays every answer; a slow fault adds slow_s on top of it."""
    sim = await simulator_factory(latency_s=0.05, faults=Faults(slow_s=0.2))
    began = time.monotonic()
    status, _, _ = await get_json(http, f"{sim.url}/recordings", limit=1)
    plain = time.monotonic() - began
    sim.faults.queue("slow")
    began = time.monotonic()
    status_slow, _, _ = await get_json(http, f"{sim.url}/recordings", limit=1)
    slow = time.monotonic() - began
    assert (status, status_slow) == (200, 200)
    assert plain >= 0.05
    assert slow >= 0.25


async def test_queue_respects_the_path_prefix(
    simulator: Simulator, http: aiohttp.ClientSession,
) -> None:
    """A fault queued for detail calls leaves list calls alone."""
    rec_id = simulator.world.ids()[0]
    simulator.faults.queue("server_error", path_prefix=f"/v1/recordings/{rec_id}")
    status, _, _ = await get_json(http, f"{simulator.url}/recordings")
    assert status == 200
    status, _, _ = await get_json(http, f"{simulator.url}/recordings/{rec_id}")
    assert status in (500, 503)


def test_random_fault_rates_are_seeded() -> None:
    """The same seed and rates pick the same faults in the same order, near the set rates."""
    def picks(seed: int) -> list[str | None]:
        faults = Faults(seed, rates={"server_error": 0.2, "drop": 0.1})
        return [faults.pick("/v1/recordings") for _ in range(2000)]

    first = picks(5)
    assert first == picks(5)
    assert first != picks(6)
    assert 300 < first.count("server_error") < 500
    assert 120 < first.count("drop") < 280
    assert Faults(rates={"truncate": 1.0}).pick("/v1/recordings") is None
    misplaced = Faults()
    misplaced.queue("truncate", path_prefix="/")
    misplaced.queue("drop", path_prefix="/")
    assert misplaced.pick("/v1/recordings") == "drop"
    assert misplaced.pick("/_files/med_1") == "truncate"
    with pytest.raises(ValueError, match="unknown fault kind"):
        Faults(rates={"explode": 0.1})
    assert set(FAULT_KINDS) >= {"server_error", "drop", "truncate"}


# -- download URLs and files ---------------------------------------------------------------------


async def test_download_url_and_file_bytes(
    simulator: Simulator, http: aiohttp.ClientSession,
) -> None:
    """The URL serves exactly file_size_bytes deterministic bytes, without the API key."""
    rec_id, media = uploaded_media(simulator.world)
    status, body = await download_url(http, simulator, rec_id, media["id"])
    assert status == 200
    assert body["media_id"] == media["id"]
    assert (body["content_type"], body["file_size_bytes"]) == (
        media["mime_type"], media["file_size_bytes"])
    expires = datetime.fromisoformat(body["expires_at"]).timestamp()
    assert 3590 < expires - time.time() <= 3601
    assert body["download_url"].startswith(f"{simulator.origin}/_files/{media['id']}?")
    async with http.get(body["download_url"]) as r:
        data = await r.read()
        assert (r.status, r.headers["Content-Type"]) == (200, media["mime_type"])
    assert data == file_bytes(media["id"], media["file_size_bytes"])
    assert len(data) == media["file_size_bytes"]
    assert simulator.requests[-1].path == f"/_files/{media['id']}"


async def test_range_requests(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """`Range: bytes=N-` gets 206 and the tail; switched off, the whole file comes back with 200."""
    world = World(seed=3, recordings=40)
    on = await simulator_factory(world)
    off = await simulator_factory(world, range_requests=False)
    rec_id, media = uploaded_media(world)
    size, whole = media["file_size_bytes"], file_bytes(media["id"], media["file_size_bytes"])
    _, body = await download_url(http, on, rec_id, media["id"])
    async with http.get(body["download_url"], headers={"Range": "bytes=1000-"}) as r:
        assert (r.status, r.headers["Content-Range"]) == (206, f"bytes 1000-{size - 1}/{size}")
        assert await r.read() == whole[1000:]
    async with http.get(body["download_url"], headers={"Range": f"bytes={size}-"}) as r:
        assert (r.status, r.headers["Content-Range"]) == (416, f"bytes */{size}")
    _, body = await download_url(http, off, rec_id, media["id"])
    async with http.get(body["download_url"], headers={"Range": "bytes=1000-"}) as r:
        assert (r.status, await r.read()) == (200, whole)


async def test_expired_and_tampered_urls_are_refused(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """A URL past its expiry, or with a changed signature or expiry, gets a 403."""
    clock = ManualClock()
    sim = await simulator_factory(World(seed=4, recordings=40, clock=clock), url_ttl_s=600)
    rec_id, media = uploaded_media(sim.world)
    _, body = await download_url(http, sim, rec_id, media["id"])
    url = body["download_url"]
    expires = int(url.split("expires=")[1].split("&")[0])
    assert expires == int(clock.now()) + 600
    bad_sig = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    later = url.replace(f"expires={expires}", f"expires={expires + 3600}")
    for tampered in (bad_sig, later, url.split("&sig=")[0]):
        async with http.get(tampered) as r:
            assert r.status == 403
    clock.advance(599)
    async with http.get(url) as r:
        assert r.status == 200
        await r.read()
    clock.advance(1)
    async with http.get(url) as r:
        assert (r.status, await r.text()) == (403, "AccessDenied: Request has expired")


async def test_download_url_errors(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    """Unknown recording or media is 404; a pending media item or a bad body is 400."""
    world = simulator.world
    rec_id, media = uploaded_media(world)
    assert (await download_url(http, simulator, "rec_unknown", media["id"]))[0] == 404
    assert (await download_url(http, simulator, rec_id, "med_unknown"))[0] == 404
    created = world.create()
    status, body = await download_url(http, simulator, created["id"], created["media"][0]["id"])
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    for raw in (b"not json", b"[]", b'{"media_id": 5}', b'{"media": "med_x"}'):
        async with http.post(f"{simulator.url}/recordings/{rec_id}/download-url", data=raw,
                             headers=AUTH) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "invalid_request"


async def test_truncate_fault_sends_fewer_bytes(
    simulator: Simulator, http: aiohttp.ClientSession,
) -> None:
    """A truncated download promises the full length, sends half, and cuts the connection."""
    rec_id, media = uploaded_media(simulator.world)
    _, body = await download_url(http, simulator, rec_id, media["id"])
    simulator.faults.queue("truncate")
    received = bytearray()

    async def fetch() -> None:
        async with http.get(body["download_url"]) as r:
            assert r.content_length == media["file_size_bytes"]
            async for chunk in r.content.iter_any():
                received.extend(chunk)

    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch()
    assert 0 < len(received) < media["file_size_bytes"]
    assert bytes(received) == file_bytes(media["id"], media["file_size_bytes"])[: len(received)]


# -- the world ------------------------------------------------------------------------------------


def test_world_is_deterministic_for_a_seed() -> None:
    """Same seed and start give the same archive and the same changes; another seed does not."""
    def build(seed: int) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
        world = World(seed, 200, start=START, clock=ManualClock(START.timestamp()))
        return world.all(), world.step(50), world.all()

    assert build(11) == build(11)
    assert build(11)[0] != build(12)[0]


def test_generated_world_is_plausible() -> None:
    """Ids, statuses, media, timestamps and extra fields look like a real archive."""
    items = World(seed=9, recordings=2000, start=START).all()
    statuses = [i["status"] for i in items]
    assert statuses.count("completed") > 1600
    assert 50 < statuses.count("failed") < 300
    assert sum(s in ("pending", "uploaded", "processing") for s in statuses) == 40
    assert all(s in ("completed", "failed") for s in statuses[40:])
    assert items[0]["created_at"] == "2025-03-01T12:00:00Z"
    assert len({i["id"] for i in items}) == 2000
    assert any(i["name"] is None for i in items)
    assert any(i["metadata"] is None for i in items)
    assert any("language" in i for i in items)
    assert any(i["device_id"] is None for i in items)
    assert {m["type"] for i in items for m in i["media"]} == {"audio", "image", "video"}
    for item in items:
        assert item["started_at"] < item["ended_at"] < item["created_at"]
        assert all(m["file_size_bytes"] <= 262_144 for m in item["media"])
        if item["status"] == "pending":
            assert item["duration_ms"] is None
        else:
            assert item["duration_ms"] is not None
        if item["transcription_id"] is not None:
            assert item["status"] == "completed"


def test_step_moves_recordings_forward_only() -> None:
    """Random steps only move statuses forward and keep uploaded ones consistent."""
    clock = ManualClock(START.timestamp())
    world = World(seed=5, recordings=300, start=START, clock=clock)
    before = {i["id"]: i for i in world.all()}
    changes = []
    for _ in range(20):
        clock.advance(30)
        changes += world.step(20)
    assert len(changes) == 400
    after = world.all()
    words = [c.split()[0] if c.startswith(("created", "deleted")) else c.split()[1]
             for c in changes]
    kinds = {"->" if "->" in w else w for w in words}
    # "transcription": a re-run transcription ("rec_... transcription replaced by txn_...")
    assert kinds == {"created", "deleted", "->", "media", "name", "metadata", "transcription"}
    for item in after:
        old = before.get(item["id"])
        if old is not None:
            assert ORDER[item["status"]] >= ORDER[old["status"]]
        if item["status"] in ("uploaded", "processing", "completed"):
            assert item["duration_ms"] is not None
            assert any(m["type"] == "audio" and m["status"] == "uploaded"
                       for m in item["media"]) or not item["media"]
    stamps = [datetime.fromisoformat(i["created_at"]) for i in after]
    assert stamps == sorted(stamps, reverse=True)
    assert len(set(stamps)) == len(stamps)


def test_mutations_keep_indices_right() -> None:
    """update, add/update/remove media and delete are reflected in pages and filters at once."""
    world = World(seed=6, recordings=50, start=START)
    rec_id = world.ids()[10]
    world.update(rec_id, status="failed", name="renamed")
    failed = orjson.loads(world.page_body(100, 0, status="failed"))["data"]
    assert rec_id in [i["id"] for i in failed]
    assert world.get(rec_id)["name"] == "renamed"  # type: ignore[index]
    media = world.add_media(rec_id, type="video")
    assert (media["status"], media["file_size_bytes"]) == ("pending", 0)
    uploaded = world.update_media(rec_id, media["id"], status="uploaded")
    assert 0 < uploaded["file_size_bytes"] <= world.max_file_bytes
    assert world.find_media(media["id"], rec_id) == uploaded
    world.remove_media(rec_id, media["id"])
    assert world.find_media(media["id"]) is None
    world.delete(rec_id)
    assert world.get(rec_id) is None
    assert rec_id not in world.page_body(100, 0, status="failed").decode()
    assert len(world) == 49
    with pytest.raises(KeyError):
        world.update(rec_id, name="ghost")


def test_put_raw_serves_arbitrary_items_in_place() -> None:
    """put_raw inserts any item at a position of the list, even many times at the same spot."""
    world = World(seed=8, recordings=20, start=START)
    ids = world.ids()
    world.put_raw({"id": "rec_raw1", "status": "weird", "media": "nope"}, position=3)
    world.put_raw({"name": "no id at all"}, position=0)
    served = world.all()
    assert served[0] == {"name": "no id at all"}
    assert served[4] == {"id": "rec_raw1", "status": "weird", "media": "nope"}
    assert world.get("rec_raw1") == served[4]
    for n in range(60):  # enough to use up the rank gap and force a renumbering
        world.put_raw({"id": f"rec_same{n}"}, position=10)
    order = [i.get("id") for i in world.all()]
    assert order[10:70] == [f"rec_same{n}" for n in reversed(range(60))]
    assert [i for i in order if i in ids] == ids


async def test_world_page_is_fast_on_a_large_archive() -> None:
    """A page of 100 from 20,000 recordings, filtered or not, costs well under a millisecond."""
    world = World(seed=1, recordings=20_000, start=START)
    device = world.cast.devices[0]
    began = time.process_time()
    for n in range(200):
        world.page_body(100, n * 100)
        world.page_body(100, n, status="completed")
        world.page_body(100, n, device_id=device)
    per_page = (time.process_time() - began) / 600
    assert per_page < 0.001
    assert len(orjson.loads(world.page_body(100, 19_950))["data"]) == 50


# -- admin endpoints and lifecycle ----------------------------------------------------------------


async def test_admin_endpoints(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    """/_sim/ reports stats, streams the world, steps it, sets faults and serves the log."""
    admin = f"{simulator.origin}/_sim"
    await get_json(http, f"{simulator.url}/recordings", limit=1)
    _, stats, _ = await get_json(http, f"{admin}/stats")
    assert (stats["recordings"], stats["requests"], stats["by_status_code"]) == (300, 1, {"200": 1})
    assert sum(stats["by_status"].values()) == 300
    _, everything, _ = await get_json(http, f"{admin}/recordings")
    assert (everything["total"], everything["data"]) == (300, simulator.world.all())
    _, sliced, _ = await get_json(http, f"{admin}/recordings", limit=250, offset=10)
    assert sliced["data"] == simulator.world.all()[10:260]
    async with http.post(f"{admin}/step", params={"n": 3}) as r:
        assert len((await r.json())["changes"]) == 3
    async with http.post(f"{admin}/faults", json={"rates": {"drop": 0.5}, "latency_s": 0.01,
                                                  "queue": [{"kind": "html_502", "n": 2}]}) as r:
        faults = await r.json()
    assert (faults["rates"], faults["latency_s"], faults["queued"][0]["n"]) == (
        {"drop": 0.5}, 0.01, 2)
    async with http.post(f"{admin}/faults", json={"explode": 1}) as r:
        assert r.status == 400
    async with http.post(f"{admin}/faults", json={"clear": True}) as r:
        assert (await r.json())["rates"] == {}
    _, log, _ = await get_json(http, f"{admin}/requests", since=0)
    assert (log["next"], log["requests"][0]["path"]) == (1, "/v1/recordings")
    async with http.post(f"{admin}/rate-limit", params={"limit": "7"}) as r:
        assert (await r.json()) == {"rate_limit": 7}
    async with http.post(f"{admin}/clock", params={"advance": "5"}) as r:
        assert r.status == 409


async def test_the_world_moves_in_the_background(
    simulator: Simulator, http: aiohttp.ClientSession,
) -> None:
    """start_moving changes the world on its own until stop_moving; /_sim/move does the same."""
    before = simulator.world.all()
    simulator.start_moving(every_s=0.01, changes=5)
    await wait_for(lambda: simulator.world.all() != before, timeout=5)
    await simulator.stop_moving()
    assert not simulator.moving
    async with http.post(f"{simulator.origin}/_sim/move", params={"every_s": "0.01"}) as r:
        assert (await r.json()) == {"moving": True}
    assert simulator.moving
    async with http.post(f"{simulator.origin}/_sim/freeze") as r:
        assert (await r.json()) == {"moving": False}
    assert not simulator.moving


async def test_run_forever_reports_its_url_and_stops_on_cancel(
    http: aiohttp.ClientSession,
) -> None:
    """run_forever calls on_ready with a live simulator and shuts down when cancelled."""
    ready: list[Simulator] = []
    task = asyncio.create_task(run_forever(World(seed=1, recordings=5), on_ready=ready.append,
                                           rate_limit=None))
    await wait_for(lambda: ready)
    status, body, _ = await get_json(http, f"{ready[0].url}/recordings")
    assert (status, len(body["data"])) == (200, 5)
    async with http.get(f"{ready[0].url}/openapi.yaml") as r:
        assert (await r.text()).startswith("openapi: 3.1.0")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(aiohttp.ClientConnectionError):
        await get_json(http, f"{ready[0].url}/recordings")


async def test_long_running_log_keeps_the_newest(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    """With `max_logged`, old log entries go; counts and `/_sim/requests` indexes stay true."""
    simulator.max_logged = 10
    for offset in range(25):
        status, _, _ = await get_json(http, f"{simulator.url}/recordings", limit=1, offset=offset)
        assert status == 200
    assert 5 <= len(simulator.requests) <= 10
    assert simulator.requests[-1].query.endswith("offset=24")
    _, stats, _ = await get_json(http, f"{simulator.origin}/_sim/stats")
    assert stats["requests"] == 25
    _, log, _ = await get_json(http, f"{simulator.origin}/_sim/requests", since=0)
    assert log["next"] == 25  # admin calls are not logged
    assert len(log["requests"]) == len(simulator.requests)


async def test_ignore_offset_serves_the_first_page_always(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    """The misbehaving mode: every offset gets the first page."""
    simulator.ignore_offset = True
    _, first, _ = await get_json(http, f"{simulator.url}/recordings", limit=5)
    _, later, _ = await get_json(http, f"{simulator.url}/recordings", limit=5, offset=20)
    assert first["data"] == later["data"] and later["has_more"]


async def test_ignore_status_filter_serves_unfiltered_pages(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    """The misbehaving mode: `status` is ignored (even an unknown one), the rest still holds."""
    simulator.ignore_status_filter = True
    items = await walk(http, simulator, status="failed")
    assert [i["id"] for i in items] == simulator.world.ids()
    status, _, _ = await get_json(http, f"{simulator.url}/recordings", status="done")
    assert status == 200


async def test_download_url_is_post_only(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    """GET on the download-url path (the deployed form) is a 405 envelope naming POST."""
    rec_id, _ = uploaded_media(simulator.world)
    status, body, headers = await get_json(
        http, f"{simulator.url}/recordings/{rec_id}/download-url")
    assert (status, body["error"]["code"], headers["Allow"]) == (405, "invalid_request", "POST")


async def test_admin_creates_updates_and_deletes(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    """POST/PATCH/DELETE /_sim/recordings change the world; deployed-only fields are refused."""
    admin = f"{simulator.origin}/_sim"
    _, stats, _ = await get_json(http, f"{admin}/stats")
    assert stats["dialect"] == "documented"
    async with http.post(f"{admin}/recordings", json={"name": "Added", "language": "fr"}) as r:
        created = await r.json()
        assert r.status == 201
    assert (created["name"], created["language"], created["status"]) == ("Added", "fr", "pending")
    assert simulator.world.ids()[0] == created["id"]
    async with http.patch(f"{admin}/recordings/{created['id']}", json={"status": "failed"}) as r:
        assert (await r.json())["status"] == "failed"
    assert simulator.world.get(created["id"])["status"] == "failed"  # type: ignore[index]
    for body in ({"source": "device"}, [1], {"updated_at": "2026-01-01T00:00:00Z"}):
        async with http.patch(f"{admin}/recordings/{created['id']}", json=body) as r:
            assert r.status == 400
    async with http.patch(f"{admin}/recordings/rec_nobody", json={"name": "x"}) as r:
        assert r.status == 404
    async with http.delete(f"{admin}/recordings/{created['id']}") as r:
        assert (await r.json())["id"] == created["id"]
    assert created["id"] not in simulator.world
