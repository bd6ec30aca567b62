"""The /v1 API and the file URLs: handlers, the auth/rate-limit/fault gate, the request log.

Every /v1 answer goes through `api_gate`: latency, the rate limit (counted per key),
then an injected fault if one is due, then auth, then the handler. The latency, the
limits and the faults are those of the project the request's key belongs to
(`project_of`), and the handler reads that project's world; a file URL names its project
in its query (`&project=N`, absent for the first). The documented
dialect sends `X-RateLimit-*` headers on every answer and `Retry-After` on a 429, and
its errors use the `{"error": {"code", "message", "details"}}` envelope. The deployed
dialect (handlers in `api_deployed`) enforces the same limit without any of those
headers, and its errors are plain strings: `{"error": "text"}` for a 4xx,
`{"message": "text"}` for a 405 or a 5xx.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDict, MultiDictProxy, MultiMapping

from botasync.simulator.archive import STATUSES
from botasync.simulator.clock import iso_s
from botasync.simulator.files import check_signature, parse_range, sign
from botasync.simulator.world import FileRef

if TYPE_CHECKING:
    from botasync.simulator.app import Simulator
    from botasync.simulator.projects import Project

SIM_KEY: web.AppKey[Simulator] = web.AppKey("botasync_simulator")
READ_SCOPE = "recordings:read"
OPEN_PATHS = ("/v1/openapi.yaml",)  # served without auth, limit or faults
INT_RE = re.compile(r"-?[0-9]{1,4000}")  # the contract sets no upper bound on offset
MEDIA_ID_RE = re.compile(r"med_[A-Za-z0-9]+")
HTML_502 = (b"<html><head><title>502 Bad Gateway</title></head><body>"
            b"<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>")
NON_UTF8 = b'{"data": [], "has_more": false, "note": "\xff\xfe\xfa bad bytes \xc3\x28"}'

log = structlog.get_logger("botasync.simulator")


class Dropped(web.Response):
    """The answer to a dropped request: the connection is gone, nothing is sent."""


def error(
    status: int, code: str, message: str, details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An error in the API's envelope."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = dict(details)
    return web.Response(status=status, body=orjson.dumps({"error": body}), headers=headers,
                        content_type="application/json")


def fail(
    sim: Simulator, status: int, code: str, message: str,
    details: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
    *, plain: str | None = None,
) -> web.Response:
    """An error in the world's dialect: the envelope, or a plain string (`plain` if given).

    Deployed errors carry no details; the caller leaves rate-limit headers out of them.
    """
    if not sim.world.deployed:
        return error(status, code, message, details, headers)
    key = "message" if status == 405 or status >= 500 else "error"
    return web.Response(status=status, body=orjson.dumps({key: plain or message}),
                        headers=headers, content_type="application/json")


def json_body(body: bytes, status: int = 200) -> web.Response:
    """A JSON answer from already serialised bytes."""
    return web.Response(status=status, body=body, content_type="application/json")


def bearer_token(request: web.Request) -> str | None:
    """The API key of `Authorization: Bearer <key>`, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def sim_of(request: web.Request) -> Simulator:
    """The simulator serving this request."""
    return request.app[SIM_KEY]


def project_of(request: web.Request) -> Project:
    """The project this request reads and counts against: its bearer key's (the first
    project's for a missing or unknown key), or for a file URL the one its query names."""
    sim = sim_of(request)
    if not request.path.startswith("/_files/"):
        return sim.project_for_key(bearer_token(request))
    try:  # a wrong or unknown one is the first's: its signature check then fails
        return sim.project(int(request.query.get("project", "0")))
    except (KeyError, ValueError):
        return sim.projects[0]


# -- the request log ---------------------------------------------------------------------


@web.middleware
async def log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record every API and file request with its arrival time and final status."""
    if request.path.startswith("/_sim/"):
        return await handler(request)
    sim, project = sim_of(request), project_of(request)
    arrived = project.world.clock.now()
    status = 0  # stays 0 for a dropped connection or a cancelled handler
    try:
        response = await handler(request)
        status = 0 if isinstance(response, Dropped) else response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        sim.record(arrived, request.method, request.path, request.query_string, status,
                   project.index)


# -- the gate in front of /v1 ---------------------------------------------------------------


@web.middleware
async def api_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Latency, rate limit, faults and auth for /v1, in the order a real gateway has them."""
    if not request.path.startswith("/v1/") or request.path in OPEN_PATHS:
        return await handler(request)
    sim, project = sim_of(request), project_of(request)
    if project.faults.latency_s > 0:
        await asyncio.sleep(project.faults.latency_s)
    token = bearer_token(request)
    decision = project.limiter.hit(token or "")
    quiet = sim.world.deployed  # enforces the limit but never says so in headers
    if decision is not None and not decision.allowed:
        return fail(sim, 429, "rate_limit_exceeded",
                    "too many requests; retry after the window resets",
                    {"limit": decision.limit, "window_s": project.limiter.window_s},
                    headers=None if quiet else decision.headers(), plain="Too many requests")
    kind = project.faults.pick(request.path)
    if kind is not None:
        log.debug("simulator.fault", kind=kind, path=request.path)
        response = await _fault(sim, project, kind, request,
                                lambda: _authorized(sim, request, handler, token))
    else:
        response = await _authorized(sim, request, handler, token)
    if decision is not None and not quiet and not isinstance(response, Dropped):
        for name, value in decision.headers().items():
            response.headers.setdefault(name, value)
    return response


async def _authorized(
    sim: Simulator, request: web.Request, handler: Handler, token: str | None,
) -> web.StreamResponse:
    """The handler's answer, or 401/403 when the key is missing, unknown or lacks the scope."""
    if token is None:
        return fail(sim, 401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'",
                    plain="Missing API key")
    scopes = sim.api_keys.get(token)
    if scopes is None:
        return fail(sim, 401, "unauthorized", "invalid API key", plain="Invalid API key")
    if READ_SCOPE not in scopes:
        return fail(sim, 403, "forbidden", f"this API key lacks the {READ_SCOPE} scope",
                    {"required_scope": READ_SCOPE}, plain=f"Missing scope: {READ_SCOPE}")
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return fail(sim, 404, "not_found", f"no such path: {request.path}", plain="Not found")
    except web.HTTPMethodNotAllowed as exc:
        allow = {"Allow": ", ".join(sorted(exc.allowed_methods))}
        return fail(sim, 405, "invalid_request",
                    f"{request.method} is not allowed on {request.path}", headers=allow,
                    plain="Method Not Allowed")


async def _fault(
    sim: Simulator, project: Project, kind: str, request: web.Request,
    answer: Callable[[], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """The response for an injected fault; `answer()` gives the real one when needed."""
    if kind == "slow":
        await asyncio.sleep(project.faults.slow_s)
        return await answer()
    if kind == "server_error":
        status = project.faults.server_error_status()
        return fail(sim, status, "internal_error",
                    "internal error" if status == 500 else "service temporarily unavailable",
                    plain="Internal Server Error" if status == 500 else "Service Unavailable")
    if kind == "rate_limited":
        if sim.world.deployed:
            return fail(sim, 429, "rate_limit_exceeded", "Too many requests")
        reset = str(math.ceil(project.world.clock.now()) + 1)
        return error(429, "rate_limit_exceeded", "too many requests", headers={
            "Retry-After": "1", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
    if kind == "drop":
        if request.transport is not None:
            request.transport.abort()
        return Dropped(status=500)
    if kind == "html_502":
        return web.Response(status=502, body=HTML_502, content_type="text/html")
    if kind == "non_utf8":
        return web.Response(status=200, body=NON_UTF8, content_type="application/json",
                            charset="utf-8")
    real = await answer()  # malformed: the real body, cut short
    body = real.body if isinstance(real, web.Response) and isinstance(real.body, bytes) else b"{}"
    return json_body(body[: max(1, len(body) // 2)])


# -- handlers -------------------------------------------------------------------------------


class BadRequest(ValueError):
    """A parameter the API refuses (400 invalid_request)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def int_param(
    query: Mapping[str, str], name: str, default: int, low: int, high: int | None
) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not INT_RE.fullmatch(raw):
        raise BadRequest(f"{name} must be an integer, got {raw!r}", name)
    value = int(raw)
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name} must be {bounds}, got {value}", name)
    return value


def without_status(query: MultiMapping[str]) -> MultiDictProxy[str]:
    """The query minus `status`: what a server that ignores the filter reads."""
    return MultiDictProxy(MultiDict([(k, v) for k, v in query.items() if k != "status"]))


def parse_list_query(query: Any) -> dict[str, Any]:
    """Validate the list parameters (a multidict) into keyword arguments for `page_body`."""
    for name in ("limit", "offset", "status", "device_id", "end_user_id"):
        if len(query.getall(name, [])) > 1:
            raise BadRequest(f"{name} given more than once", name)
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}, got {status!r}", "status")
    return {
        "limit": int_param(query, "limit", 25, 1, 100),
        "offset": int_param(query, "offset", 0, 0, None),  # past the end: an empty page
        "status": status,
        "device_id": query.get("device_id"),
        "end_user_id": query.get("end_user_id"),
    }


async def list_recordings(request: web.Request) -> web.Response:
    """GET /v1/recordings: one page, newest first."""
    sim = sim_of(request)
    query = without_status(request.query) if sim.ignore_status_filter else request.query
    try:
        params = parse_list_query(query)
    except BadRequest as exc:
        return error(400, "invalid_request", str(exc), {"param": exc.param})
    if sim.ignore_offset:  # a broken server (or proxy) that drops the query's offset
        params["offset"] = 0
    return json_body(project_of(request).world.page_body(**params))


def _not_found(rec_id: str) -> web.Response:
    return error(404, "not_found", f"recording {rec_id} not found", {"id": rec_id})


async def get_recording(request: web.Request) -> web.Response:
    """GET /v1/recordings/{id}: one recording, or 404."""
    rec_id = request.match_info["id"]
    body = project_of(request).world.detail_body(rec_id)
    return _not_found(rec_id) if body is None else json_body(body)


async def _requested_media_id(request: web.Request) -> str:
    """The `media_id` of a download-url body, or BadRequest."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be JSON: {\"media_id\": \"med_...\"}", "body") from None
    media_id = body.get("media_id") if isinstance(body, dict) else None
    if not isinstance(media_id, str) or not MEDIA_ID_RE.fullmatch(media_id):
        raise BadRequest("media_id must be a string like med_...", "media_id")
    return media_id


async def create_download_url(request: web.Request) -> web.Response:
    """POST /v1/recordings/{id}/download-url: a pre-signed URL for one uploaded media file."""
    sim, project = sim_of(request), project_of(request)
    decision = project.download_limiter.hit(bearer_token(request) or "")
    if decision is not None and not decision.allowed:
        return error(429, "rate_limit_exceeded", "too many download-url requests",
                     {"limit": decision.limit, "window_s": project.download_limiter.window_s,
                      "scope": "download_url"},
                     headers=decision.headers())
    rec_id = request.match_info["id"]
    try:
        media_id = await _requested_media_id(request)
    except BadRequest as exc:
        return error(400, "invalid_request", str(exc), {"param": exc.param})
    if rec_id not in project.world:
        return _not_found(rec_id)
    media = project.world.find_media(media_id, rec_id)
    if media is None:
        return error(404, "not_found", f"media {media_id} not found on {rec_id}", {"id": media_id})
    if media.get("status") != "uploaded":
        return error(400, "invalid_request", f"media {media_id} is not uploaded yet",
                     {"param": "media_id", "status": media.get("status")})
    return json_body(orjson.dumps(_signed_url(sim, project, request, media)))


def _signed_url(
    sim: Simulator, project: Project, request: web.Request, media: dict[str, Any],
) -> dict[str, Any]:
    expires = math.ceil(project.world.clock.now() + sim.url_ttl_s)
    sig = sign(sim.secret_of(project.index), media["id"], expires)
    return {
        "download_url": f"{request.url.origin()}/_files/{media['id']}?expires={expires}&sig={sig}"
                        f"{sim.project_query(project.index)}",
        "media_id": media["id"],
        "content_type": media.get("mime_type") or "application/octet-stream",
        "file_size_bytes": int(media.get("file_size_bytes") or 0),
        "expires_at": iso_s(expires),
    }


async def openapi_yaml(request: web.Request) -> web.Response:
    """GET /v1/openapi.yaml: the contract this server follows."""
    return web.Response(body=sim_of(request).openapi_text(), content_type="application/yaml")


# -- files ------------------------------------------------------------------------------------


def _file_plan(
    sim: Simulator, request: web.Request, size: int,
) -> tuple[int, int, int] | web.Response:
    """(status, start, end) for the requested range, or a 416 answer."""
    header = request.headers.get("Range")
    if not sim.range_requests or header is None:
        return 200, 0, size
    wanted = parse_range(header, size)
    if wanted == "unsatisfiable":
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    if isinstance(wanted, tuple):
        return 206, wanted[0], wanted[1]
    return 200, 0, size


async def serve_file(request: web.Request) -> web.StreamResponse:
    """GET /_files/{file_id}: the file behind a pre-signed URL, streamed in chunks.

    The file is a media item's (documented) or a recording's own (deployed).
    """
    sim, project = sim_of(request), project_of(request)
    file_id = request.match_info["file_id"]
    query = request.query
    refused = check_signature(sim.secret_of(project.index), file_id, query.get("expires", ""),
                              query.get("sig", ""), project.world.clock.now(),
                              query.get("nonce", ""))
    if refused:
        return web.Response(status=403, text=refused)
    ref = project.world.file(file_id)
    if ref is None:
        return web.Response(status=404, text="NoSuchKey: the file no longer exists")
    plan = _file_plan(sim, request, ref.size)
    if isinstance(plan, web.Response):
        return plan
    status, start, end = plan
    return await _stream(sim, project, request, ref, status, start, end)


async def _stream(
    sim: Simulator, project: Project, request: web.Request, ref: FileRef, status: int,
    start: int, end: int,
) -> web.StreamResponse:
    """Send bytes start..end; a `truncate` fault stops halfway and cuts the connection."""
    size = ref.size
    response = web.StreamResponse(status=status)
    response.content_type = ref.content_type
    response.content_length = end - start
    if sim.range_requests:
        response.headers["Accept-Ranges"] = "bytes"
    if status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    truncate = project.faults.pick(request.path) == "truncate"
    await response.prepare(request)
    stop = start + (end - start) // 2 if truncate else end
    for chunk in ref.chunks(start, stop):
        await response.write(chunk)
    if truncate and request.transport is not None:
        request.transport.abort()
        return response
    await response.write_eof()
    return response


def add_shared_routes(app: web.Application) -> None:
    """Register the routes both dialects serve: the contract and the file URLs."""
    app.router.add_get("/v1/openapi.yaml", openapi_yaml)
    app.router.add_get("/_files/{file_id}", serve_file)


def add_routes(app: web.Application) -> None:
    """Register the documented dialect's /v1 routes and the shared ones."""
    app.router.add_get("/v1/recordings", list_recordings, allow_head=False)
    app.router.add_get("/v1/recordings/{id}", get_recording, allow_head=False)
    app.router.add_post("/v1/recordings/{id}/download-url", create_download_url)
    add_shared_routes(app)
