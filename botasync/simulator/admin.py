"""Admin endpoints under /_sim/ for out-of-process control (benchmarks, demo, torture tests).

No auth (the simulator serves loopback tooling); not rate limited, not faulted, and
left out of the request log so they never disturb what a test measures.

Each endpoint acts on one project, named by `?project=` (its index, 0, 1, .., or its API
key); it may be left out while the simulator serves one project. `GET /_sim/stats` and
`GET /_sim/requests` span every project unless one is named.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from botasync.simulator.api import SIM_KEY
from botasync.simulator.clock import ManualClock
from botasync.simulator.faults import KINDS, Faults

if TYPE_CHECKING:
    from botasync.simulator.app import Simulator
    from botasync.simulator.projects import Project
    from botasync.simulator.world import World

BATCH = 1000  # items per write when streaming the whole world
# fields only one dialect's recordings have: the other dialect's admin calls refuse them
ONLY_IN = {
    "documented": frozenset({"media", "duration_ms", "started_at", "ended_at",
                             "transcription_id"}),
    "deployed": frozenset({"project_id", "duration_seconds", "recorded_at", "content_sha256",
                           "content_sha256_verified_at", "source", "audio_url", "updated_at"}),
}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _bad(message: str) -> web.Response:
    return _json({"error": message}, status=400)


def _sim(request: web.Request) -> Simulator:
    return request.app[SIM_KEY]


def _named(request: web.Request) -> Project | None:
    """The project `?project=` names (an index or an API key), or None when it is absent;
    an unknown one is a 404."""
    sim, raw = _sim(request), request.query.get("project")
    if raw is None:
        return None
    try:
        return sim.project(raw)
    except KeyError:
        raise web.HTTPNotFound(text=orjson.dumps({
            "error": f"no such project: {raw!r}", "projects": _listing(sim)}).decode(),
            content_type="application/json") from None


def _listing(sim: Simulator) -> list[dict[str, Any]]:
    return [{"index": p.index, "key": p.key} for p in sim.projects]


def _project(request: web.Request) -> Project:
    """The one project an endpoint acts on: the one `?project=` names, or the only one; a
    400 when several are served and none is named."""
    sim, named = _sim(request), _named(request)
    if named is not None:
        return named
    if len(sim.projects) > 1:
        raise web.HTTPBadRequest(text=orjson.dumps({
            "error": f"this simulator serves {len(sim.projects)} projects: name one with "
                     "?project= (its index or its API key)", "projects": _listing(sim)}).decode(),
            content_type="application/json")
    return sim.projects[0]


def _world(request: web.Request) -> World:
    return _project(request).world


def _number(request: web.Request, name: str, default: float | None = None) -> float:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"{name} is required")
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


async def stats(request: web.Request) -> web.Response:
    """GET /_sim/stats: the dialect, recordings by status, requests by status code (summed
    over the projects), the first project's faults and settings, and each project's own
    under `projects`; `?project=` gives that one project's (with the dialect)."""
    sim, named = _sim(request), _named(request)
    if named is not None:
        return _json({"dialect": sim.dialect, **named.stats()})
    return _json(sim.stats())


async def recordings(request: web.Request) -> web.StreamResponse:
    """GET /_sim/recordings: the whole world as served, newest first (streamed).

    With `limit` (and `offset`) it returns that slice instead, unfiltered and unlimited.
    Deployed `audio_url`s are signed as an answer would sign them.
    """
    sim, project = _sim(request), _project(request)
    world = project.world
    origin = str(request.url.origin())

    def sign_url(file_id: str) -> str:
        return sim.file_url(origin, file_id, project.index)

    if "limit" in request.query:
        try:
            limit, offset = int(_number(request, "limit")), int(_number(request, "offset", 0))
        except ValueError as exc:
            return _bad(str(exc))
        body = world.page_body(max(0, limit), max(0, offset), sign_url=sign_url)
        return web.Response(body=body, content_type="application/json")
    response = web.StreamResponse()
    response.content_type = "application/json"
    await response.prepare(request)
    await response.write(b'{"total":' + str(len(world)).encode() + b',"data":[')
    batch: list[bytes] = []
    first = True
    for body in world.iter_bodies(sign_url):
        batch.append(body)
        if len(batch) == BATCH:
            await response.write((b"" if first else b",") + b",".join(batch))
            batch, first = [], False
    if batch:
        await response.write((b"" if first else b",") + b",".join(batch))
    await response.write(b"]}")
    await response.write_eof()
    return response


async def _fields(request: web.Request) -> dict[str, Any]:
    """The JSON object of a create/update body, checked against the world's dialect."""
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        raise ValueError("the body must be JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object of recording fields")
    world = _world(request)
    other = "documented" if world.deployed else "deployed"
    foreign = sorted(set(body) & ONLY_IN[other])
    if foreign:
        raise ValueError(f"{', '.join(foreign)}: a field of the {other} dialect; this world "
                         f"speaks the {world.dialect} one")
    return body


async def create_recording(request: web.Request) -> web.Response:
    """POST /_sim/recordings: a new recording at the top, with any fields of the body."""
    try:
        item = _world(request).create(**await _fields(request))
    except ValueError as exc:
        return _bad(str(exc))
    return _json(item, status=201)


async def update_recording(request: web.Request) -> web.Response:
    """PATCH /_sim/recordings/{id}: change fields (deployed: `updated_at` moves on)."""
    try:
        fields = await _fields(request)
        item = _world(request).update(request.match_info["id"], **fields)
    except ValueError as exc:
        return _bad(str(exc))
    except KeyError:
        return _json({"error": "no such recording"}, status=404)
    return _json(item)


async def delete_recording(request: web.Request) -> web.Response:
    """DELETE /_sim/recordings/{id}: remove a recording; returns its last state."""
    try:
        item = _world(request).delete(request.match_info["id"])
    except KeyError:
        return _json({"error": "no such recording"}, status=404)
    return _json(item)


async def step(request: web.Request) -> web.Response:
    """POST /_sim/step?n=: make n random changes now; returns their descriptions."""
    try:
        n = int(_number(request, "n", 1))
    except ValueError as exc:
        return _bad(str(exc))
    return _json({"changes": _world(request).step(n)})


async def move(request: web.Request) -> web.Response:
    """POST /_sim/move?every_s=&changes=: keep the world moving in the background."""
    project = _project(request)
    try:
        project.start_moving(_number(request, "every_s"), int(_number(request, "changes", 1)))
    except ValueError as exc:
        return _bad(str(exc))
    return _json({"moving": True})


async def freeze(request: web.Request) -> web.Response:
    """POST /_sim/freeze: stop the background changes."""
    await _project(request).stop_moving()
    return _json({"moving": False})


def _apply_faults(faults: Faults, body: dict[str, Any]) -> None:
    """Apply a faults document: clear, rates (nested or flat), slow_s, latency_s, queue."""
    unknown = set(body) - {"clear", "rates", "slow_s", "latency_s", "queue", *KINDS}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    if body.get("clear"):
        faults.clear()
    rates = body.get("rates", {k: v for k, v in body.items() if k in KINDS})
    if rates or "rates" in body:
        faults.set_rates({str(k): float(v) for k, v in dict(rates).items()})
    if "slow_s" in body:
        faults.slow_s = float(body["slow_s"])
    if "latency_s" in body:
        faults.latency_s = float(body["latency_s"])
    for entry in body.get("queue", []):
        faults.queue(str(entry["kind"]), int(entry.get("n", 1)), entry.get("path_prefix"))


async def faults(request: web.Request) -> web.Response:
    """GET or POST /_sim/faults: read, or change, the fault settings (JSON body)."""
    project = _project(request)
    if request.method == "POST":
        try:
            body = orjson.loads(await request.read() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            _apply_faults(project.faults, body)
        except (ValueError, TypeError, KeyError) as exc:
            return _bad(f"bad faults document: {exc}")
    return _json(project.faults.snapshot())


async def requests_log(request: web.Request) -> web.Response:
    """GET /_sim/requests?since=N: log entries from index N on, and the next index to ask;
    each names its `project` (an index). With `?project=`, only that project's entries
    (`next` still counts them all).

    A long-running simulator lets its oldest entries go; `since` then starts at the
    oldest it still has.
    """
    sim, named = _sim(request), _named(request)
    try:
        since = max(0, int(_number(request, "since", 0)))
    except ValueError as exc:
        return _bad(str(exc))
    since = max(since, sim.logged_before)  # older entries were let go
    records = sim.requests[since - sim.logged_before:]
    entries = [r.as_dict() for r in records if named is None or r.project == named.index]
    return _json({"requests": entries, "next": since + len(records)})


async def clock(request: web.Request) -> web.Response:
    """POST /_sim/clock?advance=S: move a manual clock forward (409 on a real clock)."""
    world_clock = _world(request).clock
    if not isinstance(world_clock, ManualClock):
        return _json({"error": "the world runs on the real clock"}, status=409)
    try:
        now = world_clock.advance(_number(request, "advance"))
    except ValueError as exc:
        return _bad(str(exc))
    return _json({"now": now})


async def rate_limit(request: web.Request) -> web.Response:
    """POST /_sim/rate-limit?limit=N|off[&bucket=transcriptions]: change the per-minute limit
    (a fresh window): the overall one, or the transcription and summary endpoints' own."""
    sim = _project(request)
    raw = request.query.get("limit", "")
    if raw != "off" and not raw.isdigit():
        return _bad("limit must be a whole number or 'off'")
    bucket = request.query.get("bucket", "all")
    if bucket == "transcriptions":
        sim.transcription_rate_limit = None if raw == "off" else int(raw)
        return _json({"transcription_rate_limit": sim.transcription_rate_limit})
    if bucket != "all":
        return _bad("bucket must be 'all' or 'transcriptions'")
    sim.rate_limit = None if raw == "off" else int(raw)
    return _json({"rate_limit": sim.rate_limit})


# -- transcriptions and summaries ------------------------------------------------------------


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object of a request body (empty: {}), or ValueError."""
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        raise ValueError("the body must be JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def _answer(make: Callable[[], Any], missing: str, status: int = 200) -> web.Response:
    """`make()` as JSON; its KeyError a 404 naming `missing`, its ValueError a 400."""
    try:
        result = make()
    except KeyError:
        return _json({"error": f"no such {missing}"}, status=404)
    except (ValueError, TypeError) as exc:
        return _bad(str(exc))
    if result is None:
        return _json({"error": f"no such {missing}"}, status=404)
    return _json(result, status=status)


async def recording_transcriptions(request: web.Request) -> web.Response:
    """GET /_sim/recordings/{id}/transcriptions: its transcriptions as served, newest first.
    POST: (deployed) add another one beside its own, `{"status"}` (default completed)."""
    world, rec_id = _world(request), request.match_info["id"]
    if request.method == "GET":
        return _answer(lambda: {"data": world.transcriptions_of(rec_id)}, "recording")
    try:
        body = await _body(request)
    except ValueError as exc:
        return _bad(str(exc))
    return _answer(lambda: world.add_transcription(rec_id, str(body.get("status", "completed"))),
                   "recording", status=201)


async def retranscribe(request: web.Request) -> web.Response:
    """POST /_sim/recordings/{id}/retranscribe: replace its transcription under a new id
    (body `{"status"}`, default completed); returns the new one. The old id 404s."""
    world, rec_id = _world(request), request.match_info["id"]
    try:
        body = await _body(request)
    except ValueError as exc:
        return _bad(str(exc))
    return _answer(lambda: world.retranscribe(rec_id, str(body.get("status", "completed"))),
                   "recording")


async def fail_transcription(request: web.Request) -> web.Response:
    """POST /_sim/recordings/{id}/fail-transcription: its transcription fails now (body
    `{"message"}` optional); returns it."""
    world, rec_id = _world(request), request.match_info["id"]
    try:
        message = (await _body(request)).get("message")
    except ValueError as exc:
        return _bad(str(exc))
    return _answer(lambda: world.fail_transcription(
        rec_id, None if message is None else str(message)), "recording")


async def transcription(request: web.Request) -> web.Response:
    """GET /_sim/transcriptions/{id}: one as served. PATCH: force `status` (and `error`);
    other fields of the body are served as given."""
    world, txn_id = _world(request), request.match_info["id"]
    if request.method == "GET":
        return _answer(lambda: world.transcription(txn_id), "transcription")
    try:
        fields = await _body(request)
    except ValueError as exc:
        return _bad(str(exc))
    return _answer(lambda: world.update_transcription(txn_id, **fields), "transcription")


async def transcription_summaries(request: web.Request) -> web.Response:
    """GET /_sim/transcriptions/{id}/summaries: its summaries as served, newest first."""
    world, txn_id = _world(request), request.match_info["id"]
    return _answer(lambda: {"data": world.summaries_of(txn_id)}, "transcription")


async def summary(request: web.Request) -> web.Response:
    """GET /_sim/summaries/{id}: one summary as served."""
    world, sum_id = _world(request), request.match_info["id"]
    return _answer(lambda: world.summary(sum_id), "summary")


def _every(world: World, summaries: bool) -> Iterator[dict[str, Any]]:
    """Every transcription (or summary) of the world, newest recording first."""
    for rec_id in world.ids():
        try:
            items = world.transcriptions_of(rec_id)
        except KeyError:
            continue  # deleted meanwhile
        for item in items:
            yield from world.summaries_of(item["id"]) if summaries else (item,)


async def every_transcription(request: web.Request) -> web.StreamResponse:
    """GET /_sim/transcriptions (or /_sim/summaries): all of them as served, newest recording
    first (streamed; it makes every transcript there is: meant for worlds of thousands)."""
    world = _world(request)  # before the answer starts: a missing ?project= is a 400
    response = web.StreamResponse()
    response.content_type = "application/json"
    await response.prepare(request)
    await response.write(b'{"data":[')
    summaries = request.path.rstrip("/").endswith("/summaries")
    batch: list[bytes] = []
    first = True
    for item in _every(world, summaries):
        batch.append(orjson.dumps(item))
        if len(batch) == BATCH // 10:
            await response.write((b"" if first else b",") + b",".join(batch))
            batch, first = [], False
    if batch:
        await response.write((b"" if first else b",") + b",".join(batch))
    await response.write(b"]}")
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    """Register the /_sim/ routes."""
    app.router.add_get("/_sim/stats", stats)
    app.router.add_get("/_sim/recordings", recordings)
    app.router.add_post("/_sim/recordings", create_recording)
    app.router.add_patch("/_sim/recordings/{id}", update_recording)
    app.router.add_delete("/_sim/recordings/{id}", delete_recording)
    app.router.add_post("/_sim/step", step)
    app.router.add_post("/_sim/move", move)
    app.router.add_post("/_sim/freeze", freeze)
    app.router.add_get("/_sim/faults", faults)
    app.router.add_post("/_sim/faults", faults)
    app.router.add_get("/_sim/requests", requests_log)
    app.router.add_post("/_sim/clock", clock)
    app.router.add_post("/_sim/rate-limit", rate_limit)
    app.router.add_get("/_sim/recordings/{id}/transcriptions", recording_transcriptions)
    app.router.add_post("/_sim/recordings/{id}/transcriptions", recording_transcriptions)
    app.router.add_post("/_sim/recordings/{id}/retranscribe", retranscribe)
    app.router.add_post("/_sim/recordings/{id}/fail-transcription", fail_transcription)
    app.router.add_get("/_sim/transcriptions", every_transcription)
    app.router.add_get("/_sim/transcriptions/{id}", transcription)
    app.router.add_patch("/_sim/transcriptions/{id}", transcription)
    app.router.add_get("/_sim/transcriptions/{id}/summaries", transcription_summaries)
    app.router.add_get("/_sim/summaries", every_transcription)
    app.router.add_get("/_sim/summaries/{id}", summary)
