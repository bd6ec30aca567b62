"""The transcription and summary endpoints of /v1, in both dialects.

Documented: `GET /transcriptions/{id}` (with `text` and the `summary_id` that links its
summary) and `GET /summaries/{id}`; there are no lists. Deployed: also
`GET /transcriptions?recording_id=` and `GET /summaries?transcription_id=` (keyset cursor
pages), `full_text`, and errors as plain strings.

Besides the overall limit (counted by the gate in `api`), these endpoints share a limit of
their own per key (Bota documents "transcriptions 10/min"), each project its own.
Documented answers carry that bucket's `X-RateLimit-*` headers (its 429 also
`Retry-After`); deployed ones carry none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from botasync.simulator import api
from botasync.simulator.api import BadRequest, fail, json_body
from botasync.simulator.speech import InvalidKeyset

Handler = Callable[[web.Request], Awaitable[web.Response]]
SCOPE = "transcriptions"


def metered(handler: Handler) -> Handler:
    """Count the request against the transcription bucket; refuse it past the limit."""
    async def wrapped(request: web.Request) -> web.Response:
        sim, limiter = api.sim_of(request), api.project_of(request).transcription_limiter
        decision = limiter.hit(api.bearer_token(request) or "")
        quiet = sim.world.deployed
        if decision is not None and not decision.allowed:
            return fail(sim, 429, "rate_limit_exceeded", "too many transcription requests",
                        {"limit": decision.limit, "window_s": limiter.window_s,
                         "scope": SCOPE},
                        headers=None if quiet else decision.headers(), plain="Too many requests")
        response = await handler(request)
        if decision is not None and not quiet:
            response.headers.update(decision.headers())  # this bucket's, not the overall one
        return response

    wrapped.__doc__ = handler.__doc__
    return wrapped


def _not_found(request: web.Request, what: str) -> web.Response:
    item_id = request.match_info["id"]
    return fail(api.sim_of(request), 404, "not_found", f"{what} {item_id} not found",
                {"id": item_id}, plain=f"{what.capitalize()} not found")


@metered
async def get_transcription(request: web.Request) -> web.Response:
    """GET /v1/transcriptions/{id}: one transcription, or 404 (unknown or replaced)."""
    item = api.project_of(request).world.transcription(request.match_info["id"])
    return _not_found(request, "transcription") if item is None else json_body(orjson.dumps(item))


@metered
async def get_summary(request: web.Request) -> web.Response:
    """GET /v1/summaries/{id}: one summary, or 404."""
    item = api.project_of(request).world.summary(request.match_info["id"])
    return _not_found(request, "summary") if item is None else json_body(orjson.dumps(item))


def parse_keyset_query(query: Any, filter_name: str) -> tuple[str, int, str | None]:
    """(filter value, limit, cursor) of a deployed transcription or summary list query."""
    for name in (filter_name, "limit", "cursor"):
        if len(query.getall(name, [])) > 1:
            raise BadRequest(f"{name} given more than once", name)
    value = query.get(filter_name)
    if not value:
        raise BadRequest(f"{filter_name} is required", filter_name)
    return value, api.int_param(query, "limit", 25, 1, 100), query.get("cursor")


async def _list(request: web.Request, filter_name: str) -> web.Response:
    sim = api.sim_of(request)
    try:
        value, limit, cursor = parse_keyset_query(request.query, filter_name)
        transcripts = api.project_of(request).world.transcripts
        items = (transcripts.of_recording(value) if filter_name == "recording_id"
                 else transcripts.summaries_of(value))
        return json_body(transcripts.page(items, limit, cursor))
    except BadRequest as exc:
        return fail(sim, 400, "invalid_request", str(exc))
    except InvalidKeyset:
        return fail(sim, 400, "invalid_request", "invalid cursor")


@metered
async def list_transcriptions(request: web.Request) -> web.Response:
    """Deployed GET /v1/transcriptions?recording_id=: the recording's transcriptions, newest
    first, in keyset pages (an unknown or deleted recording has none)."""
    return await _list(request, "recording_id")


@metered
async def list_summaries(request: web.Request) -> web.Response:
    """Deployed GET /v1/summaries?transcription_id=: the transcription's summaries, newest
    first, in keyset pages."""
    return await _list(request, "transcription_id")


def add_routes(app: web.Application, *, deployed: bool) -> None:
    """Register the transcription and summary routes of one dialect."""
    app.router.add_get("/v1/transcriptions/{id}", get_transcription, allow_head=False)
    app.router.add_get("/v1/summaries/{id}", get_summary, allow_head=False)
    if deployed:
        app.router.add_get("/v1/transcriptions", list_transcriptions, allow_head=False)
        app.router.add_get("/v1/summaries", list_summaries, allow_head=False)
