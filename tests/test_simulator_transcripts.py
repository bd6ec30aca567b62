"""The simulator's transcriptions and summaries, in both dialects, over loopback."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from botasync.simulator import DIALECTS, Dialect, ManualClock, Simulator, World
from tests.conftest import API_KEY, SimulatorFactory

AUTH = {"Authorization": f"Bearer {API_KEY}"}
START = datetime(2026, 9, 30, 12, 0, tzinfo=UTC)
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")
DOCUMENTED_FIELDS = ["id", "recording_id", "status", "language", "provider", "text", "segments",
                     "word_count", "error", "summary_id", "created_at", "updated_at",
                     "started_at", "completed_at"]
DEPLOYED_FIELDS = ["id", "recording_id", "status", "language", "provider", "full_text",
                   "segments", "word_count", "error", "created_at", "updated_at", "started_at",
                   "completed_at"]
SUMMARY_FIELDS = ["id", "project_id", "transcription_id", "template_id", "custom_prompt",
                  "provider", "output", "status", "error", "created_at", "updated_at",
                  "started_at", "completed_at"]


def world_of(dialect: Dialect, recordings: int = 120, seed: int = 7, **options: Any) -> World:
    """A seeded world on a manual clock (so summaries move only when the test says)."""
    options.setdefault("clock", ManualClock(START.timestamp()))
    return World(seed=seed, recordings=recordings, dialect=dialect, start=START, **options)


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> Dialect:
    """Each dialect in turn."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session (not botasync's client)."""
    async with aiohttp.ClientSession() as session:
        yield session


async def start(factory: SimulatorFactory, world: World, **options: Any) -> Simulator:
    """Serve `world` with both limits off unless given."""
    options.setdefault("transcription_rate_limit", None)
    return await factory(world, **options)


async def call(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None, **params: Any,
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """GET a URL; return (status, parsed JSON body, headers)."""
    async with http.get(url, params=params, headers=AUTH if headers is None else headers) as r:
        return r.status, orjson.loads(await r.read()), r.headers


def transcribed(world: World, status: str = "completed") -> list[dict[str, Any]]:
    """The transcriptions (in `status`) of every recording, newest recording first."""
    return [t for rec_id in world.ids() for t in world.transcriptions_of(rec_id)
            if t["status"] == status]


async def walk(
    http: aiohttp.ClientSession, url: str, limit: int, **params: Any,
) -> list[list[dict[str, Any]]]:
    """Every page of a cursor list, following next_cursor."""
    pages, cursor = [], None
    while True:
        status, body, _ = await call(http, url, limit=limit, **params,
                                     **({"cursor": cursor} if cursor else {}))
        assert status == 200, body
        pages.append(body["data"])
        if not body["has_more"]:
            assert "next_cursor" not in body
            return pages
        cursor = body["next_cursor"]


# -- shapes -----------------------------------------------------------------------------------


async def test_shapes_in_each_dialect(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession, dialect: Dialect,
) -> None:
    """Documented: `text`, `summary_id`, confidences, error objects; deployed: `full_text`,
    no `summary_id`, error strings; the API serves what the world says."""
    world = world_of(dialect)
    sim = await start(simulator_factory, world)
    deployed = dialect == "deployed"
    completed = transcribed(world)
    failed = transcribed(world, "failed")
    assert len(completed) > 60 and failed
    for item in completed[:5] + failed[:2]:
        status, body, _ = await call(http, f"{sim.url}/transcriptions/{item['id']}")
        assert (status, body) == (200, item)
        assert list(body) == (DEPLOYED_FIELDS if deployed else DOCUMENTED_FIELDS)
    done, broken = completed[0], failed[0]
    text = done["full_text" if deployed else "text"]
    assert isinstance(text, str) and done["word_count"] == len(text.split())
    assert done["language"] and done["provider"] and done["error"] is None
    assert all(("confidence" in s) is not deployed for s in done["segments"])
    assert broken["segments"] is None and broken["word_count"] is None
    if deployed:
        assert isinstance(broken["error"], str) and broken["error"]
    else:
        assert set(broken["error"]) == {"code", "message"}
        assert broken["summary_id"] is None
        linked = next(t for t in completed if t["summary_id"])
        status, summary, _ = await call(http, f"{sim.url}/summaries/{linked['summary_id']}")
        assert (status, summary["transcription_id"]) == (200, linked["id"])
        assert list(summary) == SUMMARY_FIELDS
        assert all(world.get(t["recording_id"])["transcription_id"] == t["id"]  # type: ignore[index]
                   for t in completed)


async def test_summaries_have_outputs_and_failures(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession, dialect: Dialect,
) -> None:
    """Completed summaries carry an output object; a few failed ones an error and no output."""
    world = world_of(dialect, recordings=300)
    sim = await start(simulator_factory, world)
    summaries = [s for t in transcribed(world) for s in world.summaries_of(t["id"])]
    statuses = {s["status"] for s in summaries}
    assert {"completed", "failed"} <= statuses
    for summary in summaries:
        assert list(summary) == SUMMARY_FIELDS
        assert summary["project_id"].startswith("proj_")
        if summary["status"] == "completed":
            output = summary["output"]
            assert set(output) == {"title", "bullets", "action_items"}
            assert output["bullets"] and summary["error"] is None
        elif summary["status"] == "failed":
            assert summary["output"] is None and summary["error"]
            assert isinstance(summary["error"], str if dialect == "deployed" else dict)
    sample = summaries[0]
    status, body, _ = await call(http, f"{sim.url}/summaries/{sample['id']}")
    assert (status, body) == (200, sample)
    if dialect == "documented":
        assert max(len(world.summaries_of(t["id"])) for t in transcribed(world)) == 1
    else:
        assert max(len(world.summaries_of(t["id"])) for t in transcribed(world)) == 2


async def test_documented_has_no_lists(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """Documented: GET /transcriptions and /summaries (the deployed lists) are 404 envelopes."""
    world = world_of("documented")
    sim = await start(simulator_factory, world)
    txn = transcribed(world)[0]
    for path, params in (("transcriptions", {"recording_id": txn["recording_id"]}),
                         ("summaries", {"transcription_id": txn["id"]})):
        status, body, _ = await call(http, f"{sim.url}/{path}", **params)
        assert (status, body["error"]["code"]) == (404, "not_found")
    status, body, _ = await call(http, f"{sim.url}/transcriptions/txn_nothing")
    assert (status, body["error"]["code"], body["error"]["details"]) == (
        404, "not_found", {"id": "txn_nothing"})


async def test_deployed_errors_are_plain(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """Deployed: unknown ids 404 with a plain string; a list without its filter, with a bad
    limit or a cursor it did not make is a 400; an unknown recording has an empty list."""
    sim = await start(simulator_factory, world_of("deployed"))
    base = sim.url
    cases: list[tuple[str, dict[str, Any], int, str | None]] = [
        (f"{base}/transcriptions/txn_nothing", {}, 404, "Transcription not found"),
        (f"{base}/summaries/sum_nothing", {}, 404, "Summary not found"),
        (f"{base}/transcriptions", {}, 400, "recording_id is required"),
        (f"{base}/summaries", {}, 400, "transcription_id is required"),
        (f"{base}/transcriptions", {"recording_id": "rec_x", "cursor": "nope"}, 400,
         "invalid cursor"),
        (f"{base}/summaries", {"transcription_id": "txn_x", "limit": 0}, 400, None),
    ]
    for url, params, expected, text in cases:
        status, body, _ = await call(http, url, **params)
        assert status == expected
        assert list(body) == ["error"] and isinstance(body["error"], str)
        assert text is None or body["error"] == text
    status, body, _ = await call(http, f"{base}/transcriptions", recording_id="rec_nobody")
    assert (status, body) == (200, {"data": [], "has_more": False})


# -- content ------------------------------------------------------------------------------------


def test_segments_move_forward_and_word_counts_add_up(dialect: Dialect) -> None:
    """Segments start strictly later, end after they start and fit the recording; the text
    is their words; 2-3 speakers; some text is not ASCII, some has quotes."""
    world = world_of(dialect, recordings=300)
    texts = []
    for txn in transcribed(world):
        segments = txn["segments"]
        text = txn["full_text" if dialect == "deployed" else "text"]
        texts.append(text)
        assert segments and text == " ".join(s["text"] for s in segments)
        assert txn["word_count"] == len(text.split())
        for a, b in itertools.pairwise(segments):
            assert a["start"] < a["end"] <= b["start"] < b["end"]
        rec = world.get(txn["recording_id"])
        assert rec is not None
        length = rec["duration_seconds"] if dialect == "deployed" else rec["duration_ms"] / 1000
        assert segments[-1]["end"] <= length + 1
        speakers = {s.get("speaker") for s in segments}
        assert speakers == {None} or 2 <= len(speakers) <= 3
    joined = " ".join(texts)
    assert not joined.isascii() and '"' in joined and "'" in joined
    assert len({t["language"] for t in transcribed(world)}) >= 3


def test_lazy_generation_is_deterministic() -> None:
    """Two worlds of one seed serve the same transcriptions and summaries whatever order they
    are read in; a world holds none until one is read, so 100,000 recordings build fast."""
    def read(world: World, order: list[str]) -> dict[str, Any]:
        seen = {}
        for rec_id in order:
            for txn in world.transcriptions_of(rec_id):
                seen[txn["id"]] = (txn, world.summaries_of(txn["id"]))
        return seen

    for dialect in DIALECTS:
        one, two = world_of(dialect, seed=11), world_of(dialect, seed=11)
        assert len(one.transcripts) == 0
        ids = one.ids()
        assert read(one, ids) == read(two, ids[::-1])
        assert read(one, ids) != read(world_of(dialect, seed=12), world_of(dialect, seed=12).ids())
    began = time.process_time()
    big = World(seed=1, recordings=20_000, dialect="deployed")
    assert time.process_time() - began < 6  # the recordings alone: no transcript is made
    assert len(big.transcripts) == 0
    assert len(big.transcriptions_of(big.ids()[10_000])) == len(big.transcripts) == 1


# -- lifecycle ----------------------------------------------------------------------------------


async def test_in_flight_transcriptions_complete_with_their_recording(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """Deployed: a processing recording's transcription is pending or processing (no text);
    when the recording completes, so does its transcription, now; its summaries then move
    from pending to completed as the clock goes on."""
    clock = ManualClock(START.timestamp() + 3600)
    world = world_of("deployed", clock=clock)
    sim = await start(simulator_factory, world)
    rec_id = world.create(status="processing")["id"]
    status, page, _ = await call(http, f"{sim.url}/transcriptions", recording_id=rec_id)
    assert status == 200
    [running] = page["data"]
    assert running["status"] in ("pending", "processing")
    assert running["full_text"] is running["segments"] is running["completed_at"] is None
    clock.advance(90)
    world.update(rec_id, status="completed")
    status, done, _ = await call(http, f"{sim.url}/transcriptions/{running['id']}")
    assert (status, done["status"], done["id"]) == (200, "completed", running["id"])  # seeded
    assert done["completed_at"] == done["updated_at"] == "2026-09-30T13:01:30Z"
    assert done["full_text"] and done["updated_at"] > running["updated_at"]
    summaries = world.summaries_of(done["id"])
    assert summaries and {s["status"] for s in summaries} == {"pending"}
    clock.advance(5)
    assert {s["status"] for s in world.summaries_of(done["id"])} == {"processing"}
    clock.advance(120)
    assert {s["status"] for s in world.summaries_of(done["id"])} <= {"completed", "failed"}


def test_documented_transcriptions_follow_the_recording() -> None:
    """Documented: a recording that completes gets a transcription_id whose transcription is
    completed; a forced processing one completes when told, a failed one has no summary."""
    world = world_of("documented", recordings=200)
    changes = world.step(200)
    newly = [c.split()[0] for c in changes if c.endswith("processing->completed")]
    linked = [r for r in newly if r in world and world.get(r)["transcription_id"]]  # type: ignore[index]
    assert linked
    for rec_id in linked:
        [txn] = world.transcriptions_of(rec_id)
        assert txn["status"] in ("completed", "failed")
    rec_id = linked[0]
    rerun = world.retranscribe(rec_id, status="processing")
    assert (rerun["status"], rerun["text"], rerun["summary_id"]) == ("processing", None, None)
    done = world.update_transcription(rerun["id"], status="completed")
    assert done["status"] == "completed" and done["text"]
    failed = world.fail_transcription(rec_id, "Audio could not be decoded")
    assert failed["error"] == {"code": "transcription_failed",
                               "message": "Audio could not be decoded"}
    assert failed["summary_id"] is None and world.summaries_of(failed["id"]) == []
    with pytest.raises(ValueError, match="no audio"):
        world.retranscribe(world.create()["id"])
    with pytest.raises(ValueError, match="one transcription"):
        world.add_transcription(rec_id)


async def test_a_replaced_transcription_is_gone(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession, dialect: Dialect,
) -> None:
    """retranscribe: a new id serves, the old one and its summaries 404; documented, the
    recording names the new one; deployed, the list shows only the new one. A deleted
    recording's transcriptions 404 too."""
    world = world_of(dialect)
    sim = await start(simulator_factory, world)
    old = next(t for t in transcribed(world) if world.summaries_of(t["id"]))
    old_summary = world.summaries_of(old["id"])[0]["id"]
    assert (await call(http, f"{sim.url}/summaries/{old_summary}"))[0] == 200
    new = world.retranscribe(old["recording_id"])
    assert new["id"] != old["id"] and new["status"] == "completed"
    assert (await call(http, f"{sim.url}/transcriptions/{old['id']}"))[0] == 404
    assert (await call(http, f"{sim.url}/summaries/{old_summary}"))[0] == 404
    status, body, _ = await call(http, f"{sim.url}/transcriptions/{new['id']}")
    assert (status, body) == (200, new)
    assert world.transcription(old["id"]) is None and world.summary(old_summary) is None
    if dialect == "documented":
        _, rec, _ = await call(http, f"{sim.url}/recordings/{old['recording_id']}")
        assert rec["transcription_id"] == new["id"]
    else:
        _, page, _ = await call(http, f"{sim.url}/transcriptions",
                                recording_id=old["recording_id"])
        assert [t["id"] for t in page["data"]] == [new["id"]]
    world.delete(old["recording_id"])
    assert (await call(http, f"{sim.url}/transcriptions/{new['id']}"))[0] == 404


def test_step_sometimes_retranscribes(dialect: Dialect) -> None:
    """Some random steps re-run a transcription; the replaced id is gone afterwards."""
    world = world_of(dialect, recordings=200)
    before = {t["recording_id"]: t["id"] for t in transcribed(world)}
    changes = world.step(600)
    latest = {c.split()[0]: c.split()[-1] for c in changes if " transcription replaced by " in c}
    assert latest
    for rec_id, new_id in latest.items():
        assert world.transcription(before.get(rec_id, "txn_none")) is None
        if rec_id in world:
            assert [t["id"] for t in world.transcriptions_of(rec_id)] == [new_id]


# -- cursor pages --------------------------------------------------------------------------------


async def test_cursor_walk_of_transcriptions(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """Deployed: transcriptions of one recording walk newest first in keyset pages; one added
    or re-run during the walk (at the top) shifts nothing, and the walk sees each once."""
    clock = ManualClock(START.timestamp() + 3600)
    world = world_of("deployed", clock=clock)
    sim = await start(simulator_factory, world)
    rec_id = transcribed(world)[0]["recording_id"]
    for _ in range(6):
        clock.advance(1)
        world.add_transcription(rec_id)
    before = [t["id"] for t in world.transcriptions_of(rec_id)]
    assert len(before) == 7
    url, seen, cursor = f"{sim.url}/transcriptions", [], None
    for n in itertools.count():
        status, page, _ = await call(http, url, recording_id=rec_id, limit=2,
                                     **({"cursor": cursor} if cursor else {}))
        assert status == 200 and len(page["data"]) <= 2
        seen += [t["id"] for t in page["data"]]
        if n == 0:
            clock.advance(1)
            world.add_transcription(rec_id, status="pending")
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == before
    pages = await walk(http, url, 3, recording_id=rec_id)
    assert [len(p) for p in pages] == [3, 3, 2]
    keys = [(t["created_at"], t["id"]) for p in pages for t in p]
    assert keys == sorted(keys, reverse=True)
    world.retranscribe(rec_id)
    ids = [t["id"] for p in await walk(http, url, 100, recording_id=rec_id) for t in p]
    assert len(ids) == 8 and before[-1] not in ids  # the own one (the oldest) was replaced


async def test_cursor_walk_of_summaries(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """Deployed: a transcription's summaries walk newest first, one a page."""
    world = world_of("deployed", recordings=300)
    sim = await start(simulator_factory, world)
    txn = next(t for t in transcribed(world) if len(world.summaries_of(t["id"])) == 2)
    pages = await walk(http, f"{sim.url}/summaries", 1, transcription_id=txn["id"])
    assert [p for p in pages] == [[s] for s in world.summaries_of(txn["id"])]


# -- the limit, faults, admin --------------------------------------------------------------------


async def test_the_transcription_limit(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession, dialect: Dialect,
) -> None:
    """10 a minute per key over transcriptions and summaries, counted besides the overall
    limit: the 11th is a 429 while recordings still answer; documented headers describe
    each bucket, deployed ones none; a new window lets them through again."""
    clock = ManualClock(START.timestamp() + 3600)
    world = world_of(dialect, clock=clock)
    sim = await start(simulator_factory, world, rate_limit=100, transcription_rate_limit=10)
    txn = transcribed(world)[0]
    got = [await call(http, f"{sim.url}/transcriptions/{txn['id']}") for _ in range(10)]
    got.append(await call(http, f"{sim.url}/summaries/sum_nothing"))
    assert [s for s, _, _ in got] == [200] * 10 + [429]
    status, _, headers = await call(http, f"{sim.url}/recordings", limit=1)
    assert status == 200
    if dialect == "deployed":
        assert got[10][1] == {"error": "Too many requests"}
        assert not any(h in hs for _, _, hs in [*got, (0, 0, headers)] for h in RATE_HEADERS)
    else:
        assert [hs["X-RateLimit-Remaining"] for _, _, hs in got] == [
            str(n) for n in range(9, -1, -1)] + ["0"]
        assert got[0][2]["X-RateLimit-Limit"] == "10"
        assert got[10][1]["error"]["details"]["scope"] == "transcriptions"
        assert got[10][2]["Retry-After"] == "60"
        assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("100", "88")
    clock.advance(60)
    assert (await call(http, f"{sim.url}/transcriptions/{txn['id']}"))[0] == 200
    sim.rate_limit = 1  # the overall limit refuses first, and then this bucket is not counted
    await call(http, f"{sim.url}/recordings")
    assert (await call(http, f"{sim.url}/transcriptions/{txn['id']}"))[0] == 429
    assert sim.transcription_limiter.hit(API_KEY).remaining == 8  # type: ignore[union-attr]


async def test_faults_hit_these_endpoints(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession, dialect: Dialect,
) -> None:
    """A fault queued for /v1/transcriptions is served there, in the dialect's form."""
    world = world_of(dialect)
    sim = await start(simulator_factory, world)
    txn = transcribed(world)[0]
    sim.faults.queue("server_error", path_prefix="/v1/transcriptions")
    status, body, _ = await call(http, f"{sim.url}/transcriptions/{txn['id']}")
    assert status in (500, 503)
    assert list(body) == (["message"] if dialect == "deployed" else ["error"])
    sim.faults.queue("malformed", path_prefix="/v1/summaries")
    async with http.get(f"{sim.url}/summaries/sum_x", headers=AUTH) as r:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(await r.read())
    assert sim.faults.injected == {"server_error": 1, "malformed": 1}


async def test_admin_transcription_endpoints(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession, dialect: Dialect,
) -> None:
    """/_sim/ re-runs, fails, patches and lists transcriptions, and sets their limit."""
    world = world_of(dialect)
    sim = await start(simulator_factory, world)
    admin = f"{sim.origin}/_sim"
    txn = transcribed(world)[0]
    rec_id = txn["recording_id"]
    async with http.post(f"{admin}/recordings/{rec_id}/retranscribe",
                         json={"status": "processing"}) as r:
        new = await r.json()
    assert (r.status, new["status"]) == (200, "processing") and new["id"] != txn["id"]
    async with http.patch(f"{admin}/transcriptions/{new['id']}",
                          json={"status": "completed", "provider": None}) as r:
        patched = await r.json()
    assert (patched["status"], patched["provider"]) == ("completed", None)
    assert world.transcription(new["id"]) == patched
    async with http.post(f"{admin}/recordings/{rec_id}/fail-transcription",
                         json={"message": "boom"}) as r:
        assert (await r.json())["status"] == "failed"
    _, listed, _ = await call(http, f"{admin}/recordings/{rec_id}/transcriptions")
    assert listed["data"] == world.transcriptions_of(rec_id)
    _, one, _ = await call(http, f"{admin}/transcriptions/{new['id']}")
    assert one["status"] == "failed"
    _, every, _ = await call(http, f"{admin}/transcriptions")
    assert len(every["data"]) == sum(len(world.transcriptions_of(r)) for r in world.ids())
    _, sums, _ = await call(http, f"{admin}/summaries")
    if sums["data"]:
        _, first, _ = await call(http, f"{admin}/summaries/{sums['data'][0]['id']}")
        assert first == sums["data"][0]
    for bad in (f"{admin}/transcriptions/{txn['id']}", f"{admin}/summaries/sum_none"):
        assert (await call(http, bad))[0] == 404
    async with http.post(f"{admin}/recordings/rec_nobody/retranscribe") as r:
        assert r.status == 404
    async with http.post(f"{admin}/recordings/{rec_id}/retranscribe", json={"status": "x"}) as r:
        assert r.status == 400
    async with http.post(f"{admin}/recordings/{rec_id}/transcriptions") as r:
        assert r.status == (201 if dialect == "deployed" else 400)
    async with http.post(f"{admin}/rate-limit",
                         params={"limit": "3", "bucket": "transcriptions"}) as r:
        assert (await r.json()) == {"transcription_rate_limit": 3}
    assert (sim.transcription_rate_limit, sim.rate_limit) == (3, None)
    _, stats, _ = await call(http, f"{admin}/stats")
    assert stats["transcription_rate_limit"] == 3
