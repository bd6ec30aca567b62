"""BotaClient against the real simulator over loopback: paging, filters, faults, errors, budget."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from botasync.api.budget import RequestBudget
from botasync.api.client import USER_AGENT, BotaClient, DownloadUrl
from botasync.config import ApiConfig
from botasync.errors import (
    ApiError,
    ApiTransportError,
    AuthError,
    BadRequest,
    NotFound,
    RateLimited,
    ServerError,
)
from botasync.simulator import ManualClock, Simulator, World
from tests.conftest import SimulatorFactory, wait_for

MakeClient = Callable[..., BotaClient]


@pytest.fixture
async def make_client(api_key: str) -> AsyncIterator[MakeClient]:
    """Build clients for a simulator with tiny backoffs; all are closed at teardown."""
    made: list[BotaClient] = []

    def make(
        sim: Simulator, *, key: str = api_key, budget: RequestBudget | None = None,
        download_budget: RequestBudget | None = None,
        transcripts_budget: RequestBudget | None = None,
        clock: Callable[[], float] = time.time, **api: Any,
    ) -> BotaClient:
        cfg = ApiConfig(
            base_url=sim.url, api_key=SecretStr(key), **{"max_retries": 3, "timeout_s": 5.0, **api}
        )
        client = BotaClient(
            cfg, budget=budget, download_budget=download_budget,
            transcripts_budget=transcripts_budget, clock=clock,
            backoff_base=0.001, backoff_cap=0.01,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


async def _walk(client: BotaClient, **filters: Any) -> list[dict[str, Any]]:
    """Every item of a list, page by page."""
    items: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = await client.list_recordings(offset=offset, limit=100, **filters)
        items.extend(page.items)
        if not page.has_more:
            return items
        offset += 100


def _queries(sim: Simulator) -> list[dict[str, list[str]]]:
    return [parse_qs(r.query) for r in sim.requests]


# -- the happy paths ----------------------------------------------------------------------


async def test_walks_all_pages(simulator: Simulator, make_client: MakeClient) -> None:
    """A walk of 300 recordings takes three pages and returns every item, newest first."""
    client = make_client(simulator)
    items = await _walk(client)
    assert [i["id"] for i in items] == [r["id"] for r in simulator.world.all()]
    assert len(items) == 300
    assert client.requests == 3
    # the first page is asked for the same way in both dialects: without an offset
    assert [q.get("offset") for q in _queries(simulator)] == [None, ["100"], ["200"]]
    assert all(q["limit"] == ["100"] for q in _queries(simulator))


@pytest.mark.parametrize("field", ["status", "device_id", "end_user_id"])
async def test_filters_passed_through(
    simulator: Simulator, make_client: MakeClient, field: str
) -> None:
    """Each filter reaches the server and the items returned all match it."""
    world = simulator.world
    value = world.all()[0][field]
    client = make_client(simulator)
    items = await _walk(client, **{field: value})
    assert items
    assert all(i[field] == value for i in items)
    assert len(items) == sum(1 for r in world.all() if r[field] == value)
    assert all(q[field] == [value] for q in _queries(simulator))


async def test_empty_filters_are_left_out(simulator: Simulator, make_client: MakeClient) -> None:
    """An empty filter (the config's "" default) is not sent as `device_id=`."""
    client = make_client(simulator)
    page = await client.list_recordings(limit=5, device_id="", status=None)
    assert len(page.items) == 5
    assert _queries(simulator) == [{"limit": ["5"]}]


async def test_get_recording_returns_raw_dict(
    simulator: Simulator, make_client: MakeClient
) -> None:
    """A detail call returns the recording as the server sent it, unknown fields kept."""
    world = simulator.world
    rid = world.all()[3]["id"]
    world.update(rid, future_field={"x": 1})
    client = make_client(simulator)
    got = await client.get_recording(rid)
    assert got == world.get(rid)
    assert got["future_field"] == {"x": 1}


async def test_check_and_close(simulator: Simulator, make_client: MakeClient) -> None:
    """`check()` costs one request; `aclose()` twice is fine and a closed client refuses."""
    client = make_client(simulator)
    await client.check()
    assert [parse_qs(r.query)["limit"] for r in simulator.requests] == [["1"]]
    await client.aclose()
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.check()


async def test_async_with_closes(simulator: Simulator, api_key: str) -> None:
    """`async with` gives a working client and closes it on the way out."""
    cfg = ApiConfig(base_url=simulator.url, api_key=SecretStr(api_key))
    async with BotaClient(cfg) as client:
        page = await client.list_recordings(limit=2)
    assert len(page.items) == 2
    assert USER_AGENT.startswith("botasync/")
    with pytest.raises(RuntimeError):
        await client.list_recordings()


async def test_concurrency_bounds_requests_in_flight(
    simulator_factory: SimulatorFactory, world: World, make_client: MakeClient
) -> None:
    """With concurrency 2 and 50 ms latency, six calls take at least three rounds."""
    sim = await simulator_factory(world, latency_s=0.05)
    client = make_client(sim, concurrency=2)
    ids = [r["id"] for r in world.all()[:6]]
    started = time.monotonic()
    got = await asyncio.gather(*(client.get_recording(i) for i in ids))
    assert [g["id"] for g in got] == ids
    assert time.monotonic() - started >= 0.15 - 0.01


# -- faults: retried, and the call still succeeds --------------------------------------------


@pytest.mark.parametrize(
    ("kind", "n"),
    [
        ("server_error", 2),
        ("rate_limited", 1),
        ("drop", 2),
        ("malformed", 2),
        ("html_502", 2),
        ("slow", 1),
        ("non_utf8", 2),
    ],
)
async def test_fault_is_retried(
    simulator: Simulator, make_client: MakeClient, kind: str, n: int
) -> None:
    """Each fault kind is retried and the call returns the real page in the end."""
    simulator.faults.slow_s = 0.6
    simulator.faults.queue(kind, n=n)
    client = make_client(simulator, timeout_s=0.2)
    page = await client.list_recordings(limit=10)
    assert [i["id"] for i in page.items] == [r["id"] for r in simulator.world.all()[:10]]
    assert client.requests == n + 1
    assert simulator.faults.pending == 0
    await wait_for(lambda: len(simulator.requests) == n + 1, timeout=5)
    assert simulator.requests[-1].status == 200 or kind == "slow"


async def test_retries_exhausted_raise_the_last_error(
    simulator: Simulator, make_client: MakeClient
) -> None:
    """After `max_retries` retries the last error is raised, naming the request."""
    simulator.faults.queue("html_502", n=10)
    client = make_client(simulator, max_retries=2)
    with pytest.raises(ServerError) as info:
        await client.list_recordings(offset=200, limit=100)
    err = info.value
    assert err.status == 502
    assert str(err) == "GET /recordings offset=200: server error 502 (not the API: text/html)"
    assert client.requests == 3
    assert len(simulator.requests) == 3


async def test_dropped_connection_is_a_transport_error(
    simulator: Simulator, make_client: MakeClient
) -> None:
    """A connection cut on every try ends as ApiTransportError, chained, not an aiohttp error."""
    simulator.faults.queue("drop", n=10)
    client = make_client(simulator, max_retries=1)
    with pytest.raises(ApiTransportError, match="connection dropped") as info:
        await client.list_recordings()
    assert info.value.__cause__ is not None
    assert client.requests == 2
    assert [r.status for r in simulator.requests] == [0, 0]


async def test_unreachable_server(make_client: MakeClient, simulator: Simulator) -> None:
    """A refused connection is a retryable ApiTransportError naming host and port."""
    await simulator.aclose()
    client = make_client(simulator, max_retries=1)
    with pytest.raises(ApiTransportError, match=r"cannot connect to 127\.0\.0\.1") as info:
        await client.get_recording("rec_abc")
    assert info.value.retryable
    assert client.requests == 2


# -- errors that are not retried --------------------------------------------------------------


async def test_401_raises_at_once(simulator: Simulator, make_client: MakeClient) -> None:
    """A rejected key raises AuthError after exactly one request."""
    client = make_client(simulator, key="sk_test_wrong")
    with pytest.raises(AuthError) as info:
        await client.list_recordings()
    assert str(info.value) == "GET /recordings: API key rejected (401 unauthorized)"
    assert (info.value.status, info.value.code, info.value.exit_code) == (401, "unauthorized", 3)
    assert len(simulator.requests) == 1


async def test_403_raises_at_once(simulator: Simulator, make_client: MakeClient) -> None:
    """A key without the scope raises AuthError naming the scope after one request."""
    client = make_client(simulator, key="sk_test_noscope")
    with pytest.raises(AuthError, match=r"lacks the recordings:read scope \(403 forbidden\)"):
        await client.get_recording("rec_abc")
    assert len(simulator.requests) == 1


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [({"limit": 500}, "limit"), ({"status": "bogus"}, "status"), ({"offset": -1}, "offset")],
)
async def test_400_names_the_parameter(
    simulator: Simulator, make_client: MakeClient, kwargs: dict[str, Any], param: str
) -> None:
    """A refused parameter raises BadRequest naming it, with no retry."""
    client = make_client(simulator)
    with pytest.raises(BadRequest) as info:
        await client.list_recordings(**kwargs)
    assert f"parameter '{param}'" in str(info.value)
    assert not info.value.retryable
    assert len(simulator.requests) == 1


async def test_404_is_not_found(simulator: Simulator, make_client: MakeClient) -> None:
    """A deleted recording's detail raises NotFound after one request."""
    rid = simulator.world.all()[0]["id"]
    simulator.world.delete(rid)
    client = make_client(simulator)
    with pytest.raises(NotFound) as info:
        await client.get_recording(rid)
    assert (info.value.status, info.value.code) == (404, "not_found")
    assert str(info.value) == f"GET /recordings/{rid}: not found (404)"
    assert len(simulator.requests) == 1


async def test_odd_ids_stay_in_the_path(simulator: Simulator, make_client: MakeClient) -> None:
    """An id with a slash or a question mark is quoted, so it cannot change the path."""
    client = make_client(simulator)
    with pytest.raises(NotFound):
        await client.get_recording("rec_a/../x?y=1")
    assert simulator.requests[0].path.startswith("/v1/recordings/rec_a")
    assert simulator.requests[0].query == ""


# -- the rate limit ---------------------------------------------------------------------------


async def test_429_waits_retry_after(simulator: Simulator, make_client: MakeClient) -> None:
    """After a 429 with Retry-After: 1 the retry comes a second later, and succeeds."""
    simulator.faults.queue("rate_limited", n=1)
    client = make_client(simulator)
    page = await client.list_recordings(limit=3)
    assert len(page.items) == 3
    first, second = simulator.requests
    assert (first.status, second.status) == (429, 200)
    assert second.t - first.t >= 0.95


async def test_429_after_last_retry(simulator: Simulator, make_client: MakeClient) -> None:
    """With no retries left a 429 raises RateLimited carrying the server's wait."""
    simulator.faults.queue("rate_limited", n=1)
    client = make_client(simulator, max_retries=0)
    with pytest.raises(RateLimited) as info:
        await client.list_recordings()
    assert info.value.retry_after == 1.0
    assert info.value.retryable


@pytest.mark.parametrize(("limit", "expected_wait"), [(1, 60.0), (3, 20.0)])
async def test_rate_limit_headers_feed_the_budget(
    simulator_factory: SimulatorFactory, make_client: MakeClient, limit: int, expected_wait: float
) -> None:
    """None left at the server holds requests until its reset; few left spreads them out."""
    clock = ManualClock()  # the server's window never moves: the reset stays 60 s away
    sim = await simulator_factory(World(seed=3, recordings=20, clock=clock), rate_limit=limit)
    client = make_client(sim, clock=clock.now)
    await client.list_recordings(limit=1)
    assert client.budget.delay() == pytest.approx(expected_wait, abs=1.0)
    assert len(sim.requests) == 1


def _fixed_windows(times: list[float], window_s: float) -> list[int]:
    """Requests in each window of a fixed-window limiter, whose window opens at the first
    request after the last window ended (as the simulator's)."""
    counts: list[int] = []
    end = -math.inf
    for t in sorted(times):
        if t >= end:
            counts.append(0)
            end = t + window_s
        counts[-1] += 1
    return counts


def _transcription_ids(world: World) -> list[str]:
    return [r["transcription_id"] for r in world.all() if r.get("transcription_id")]


async def test_transcripts_fill_every_server_window(
    simulator_factory: SimulatorFactory, make_client: MakeClient
) -> None:
    """Documented headers, 10 a window: the last request a window allows ("1 left") goes
    inside that window, not at its reset, so 20 transcriptions take two windows, not three."""
    window = 1.5  # its reset in whole seconds is at most 2.5 s after the window opened
    world = World(seed=7, recordings=60)
    sim = await simulator_factory(world, transcription_rate_limit=10)
    sim.transcription_limiter.window_s = window
    client = make_client(sim, transcripts_budget=RequestBudget(10, window_s=window))
    ids = _transcription_ids(world)[:20]
    assert len(ids) == 20
    for i in ids:  # one after the other, as the transcript worker asks: each answer is seen
        assert (await client.get_transcription(i))["id"] == i
    answered = [r for r in sim.requests if r.path.startswith("/v1/transcriptions/")]
    assert [r.status for r in answered] == [200] * 20
    assert _fixed_windows([r.t for r in answered], window) == [10, 10]


async def test_a_fractional_reset_is_not_cut_short(
    simulator_factory: SimulatorFactory, make_client: MakeClient
) -> None:
    """A reset sent with a fraction (`...000.75`) is waited for in full: cut to the whole
    second below, it would be in the past (ignored) or too early (a 429)."""
    clock = ManualClock(1_750_000_000.0)  # the server's window stays put: its reset too
    world = World(seed=7, recordings=60, clock=clock)
    sim = await simulator_factory(world, transcription_rate_limit=10)
    sim.transcription_limiter.window_s = 0.75
    sim.transcription_limiter.resolution_s = 0.05
    ids = _transcription_ids(world)[:10]
    other = make_client(sim, clock=clock.now)  # another client of the project: 9 of the 10
    for i in ids[:9]:
        await other.get_transcription(i)
    client = make_client(sim, clock=clock.now,
                         transcripts_budget=RequestBudget(10, window_s=60.0))
    await client.get_transcription(ids[9])
    assert client.transcripts_budget is not None
    assert client.transcripts_budget.delay() == pytest.approx(0.75, abs=0.05)


async def test_budget_holds_under_load(
    simulator_factory: SimulatorFactory, world: World, make_client: MakeClient
) -> None:
    """60 concurrent calls under a 20-per-0.5 s budget never put 21 in a server window."""
    sim = await simulator_factory(world, latency_s=0.005)
    window = 0.5
    client = make_client(sim, budget=RequestBudget(20, window_s=window), concurrency=16)
    ids = [r["id"] for r in world.all()[:60]]
    started = time.monotonic()
    got = await asyncio.wait_for(
        asyncio.gather(*(client.get_recording(i) for i in ids)), 10
    )
    assert [g["id"] for g in got] == ids
    assert len(sim.requests) == 60
    assert sim.max_requests_in_window(window) <= 20
    assert time.monotonic() - started >= 2 * window  # the third 20 had to wait two windows


async def test_reconcile_share_budget(
    simulator: Simulator, make_client: MakeClient
) -> None:
    """A call given an extra budget takes a slot in it as well as in the client's own."""
    share = RequestBudget(2, window_s=5.0)
    client = make_client(simulator, budget=RequestBudget(10, window_s=5.0))
    await client.list_recordings(limit=1, budgets=[share])
    await client.list_recordings(limit=1)
    assert (client.budget.used(), share.used()) == (2, 1)


# -- download URLs -----------------------------------------------------------------------------


def _uploaded_media(world: World) -> tuple[str, dict[str, Any]]:
    for rec in world.all():
        for media in rec.get("media") or []:
            if media["status"] == "uploaded":
                return rec["id"], media
    raise AssertionError("the seeded world has no uploaded media")


async def test_download_url(simulator: Simulator, make_client: MakeClient) -> None:
    """A download URL names the file and counts against both budgets; repr hides the URL."""
    rid, media = _uploaded_media(simulator.world)
    downloads = RequestBudget(5, window_s=5.0)
    client = make_client(simulator, download_budget=downloads)
    got = await client.create_download_url(rid, media["id"])
    assert isinstance(got, DownloadUrl)
    assert (got.media_id, got.content_type, got.file_size_bytes) == (
        media["id"], media["mime_type"], media["file_size_bytes"])
    assert got.url.startswith(simulator.origin + "/_files/")
    assert got.expires_at is not None and got.expires_at.endswith("Z")
    assert "sig=" not in repr(got)
    assert (client.budget.used(), downloads.used()) == (1, 1)
    assert simulator.requests[0].method == "POST"


async def test_download_url_of_pending_media(
    simulator: Simulator, make_client: MakeClient
) -> None:
    """Asking for a media item not uploaded yet is a BadRequest naming media_id."""
    rid = simulator.world.all()[0]["id"]
    media = simulator.world.add_media(rid, status="pending")
    client = make_client(simulator)
    with pytest.raises(BadRequest, match="parameter 'media_id'"):
        await client.create_download_url(rid, media["id"])
    assert len(simulator.requests) == 1


# -- the key stays secret ------------------------------------------------------------------------


async def test_key_never_in_errors_reprs_or_logs(
    simulator_factory: SimulatorFactory, world: World, make_client: MakeClient
) -> None:
    """No error, repr or log line produced on any failure path contains the API key."""
    secret = "sk_live_TOPSECRET42"
    sim = await simulator_factory(world, api_keys={secret: ["recordings:read"]})
    errors: list[ApiError] = []
    with capture_logs() as logs:
        client = make_client(sim, key=secret, max_retries=1)
        sim.faults.queue("server_error", n=2)
        sim.faults.queue("malformed", n=2)
        for call in (
            client.list_recordings(), client.list_recordings(),
            client.list_recordings(limit=0), client.get_recording("rec_nope"),
        ):
            with pytest.raises(ApiError) as info:
                await call
            errors.append(info.value)
        for bad_key in (secret + "x", "sk_test_noscope"):
            with pytest.raises(AuthError) as auth:
                await make_client(sim, key=bad_key).check()
            errors.append(auth.value)
    assert [type(e) for e in errors] == [
        ServerError, ApiTransportError, BadRequest, NotFound, AuthError, AuthError]
    assert any(e["event"] == "api.retry" for e in logs)
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [repr(client), str(logs)]
    assert all(secret not in t for t in texts)


async def test_deployed_errors_are_read_in_their_plain_forms(
    simulator_factory: SimulatorFactory, make_client: MakeClient,
) -> None:
    """`{"error": "text"}` and `{"message": "text"}` are quoted like the documented form."""
    sim = await simulator_factory(World(seed=3, recordings=5, dialect="deployed"))
    client = make_client(sim)
    with pytest.raises(BadRequest, match="invalid cursor"):
        await client.list_recordings(cursor="not a cursor!")
    with pytest.raises(NotFound):
        await client.get_recording("rec_nothere")
    page = await client.list_recordings(limit=2)
    assert page.next_cursor and len(page.items) == 2
    rest = await client.list_recordings(limit=2, cursor=page.next_cursor)
    assert rest.items[0]["id"] != page.items[0]["id"]
    assert sim.requests[-1].query.count("cursor=") == 1 and "offset" not in sim.requests[-1].query
