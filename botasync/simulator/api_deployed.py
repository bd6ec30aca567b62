"""The deployed dialect's /v1 handlers: cursor pages, signed `audio_url`s, GET download-url.

The gate, auth, faults and files are shared with the documented dialect (`api`); errors
here are plain strings (`api.fail`).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from botasync.simulator import api
from botasync.simulator.api import BadRequest, fail, json_body
from botasync.simulator.deployed import STATUSES, InvalidCursor
from botasync.simulator.world import Signer

LIST_PARAMS = ("limit", "cursor", "status", "device_id", "end_user_id")


def parse_list_query(query: Any) -> dict[str, Any]:
    """Validate the list parameters (a multidict) for `cursor_page_body`; `offset` is ignored."""
    for name in LIST_PARAMS:
        if len(query.getall(name, [])) > 1:
            raise BadRequest(f"{name} given more than once", name)
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}, got {status!r}", "status")
    return {
        "limit": api.int_param(query, "limit", 25, 1, 100),
        "cursor": query.get("cursor"),
        "status": status,
        "device_id": query.get("device_id"),
        "end_user_id": query.get("end_user_id"),
    }


def _signer(request: web.Request) -> Signer:
    """Signs file URLs of the request's project on the origin the client reached, anew for
    every call."""
    sim, origin = api.sim_of(request), str(request.url.origin())
    index = api.project_of(request).index
    return lambda file_id: sim.file_url(origin, file_id, index)


def _not_found(request: web.Request) -> web.Response:
    return fail(api.sim_of(request), 404, "not_found", "Recording not found")


async def list_recordings(request: web.Request) -> web.Response:
    """GET /v1/recordings: one keyset page, newest first; `next_cursor` unless it is the last."""
    sim = api.sim_of(request)
    query = api.without_status(request.query) if sim.ignore_status_filter else request.query
    try:
        params = parse_list_query(query)
        world = api.project_of(request).world
        return json_body(world.cursor_page_body(**params, sign_url=_signer(request)))
    except BadRequest as exc:
        return fail(sim, 400, "invalid_request", str(exc))
    except InvalidCursor:
        return fail(sim, 400, "invalid_request", "invalid cursor")


async def get_recording(request: web.Request) -> web.Response:
    """GET /v1/recordings/{id}: one recording with a newly signed `audio_url`, or 404."""
    body = api.project_of(request).world.detail_body(request.match_info["id"], _signer(request))
    return _not_found(request) if body is None else json_body(body)


async def download_url(request: web.Request) -> web.Response:
    """GET /v1/recordings/{id}/download-url: a signed URL to the recording's stored file."""
    sim, project = api.sim_of(request), api.project_of(request)
    decision = project.download_limiter.hit(api.bearer_token(request) or "")
    if decision is not None and not decision.allowed:
        return fail(sim, 429, "rate_limit_exceeded", "Too many requests")
    rec_id = request.match_info["id"]
    try:
        info = project.world.download_info(rec_id)
    except KeyError:
        return _not_found(request)
    if info is None:
        return fail(sim, 404, "not_found", "Recording has no audio file yet")
    answer = {"download_url": _signer(request)(rec_id), "expires_in": round(sim.url_ttl_s),
              **info}
    return json_body(orjson.dumps(answer))


def add_routes(app: web.Application) -> None:
    """Register the deployed dialect's /v1 routes and the shared ones."""
    app.router.add_get("/v1/recordings", list_recordings, allow_head=False)
    app.router.add_get("/v1/recordings/{id}", get_recording, allow_head=False)
    app.router.add_get("/v1/recordings/{id}/download-url", download_url, allow_head=False)
    api.add_shared_routes(app)
