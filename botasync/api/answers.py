"""An HTTP answer read as the API's: the JSON of a 2xx, or the `ApiError` it stands for.

The one place an HTTP status, an error body or an aiohttp exception becomes one of
botasync's errors, with a message that names the request (`label`) and quotes the
server in one readable line. Pure: the transport hands in what came back.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from botasync import jsoncodec
from botasync.backoff import parse_retry_after
from botasync.errors import (
    ApiError,
    ApiTransportError,
    AuthError,
    BadRequest,
    NotFound,
    RateLimited,
    ServerError,
)

# Server text quoted in a message is cut here, so an error stays one readable line.
MAX_QUOTED_CHARS = 200
_PARAM_KEYS = ("param", "parameter", "field", "name")


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


def decode(label: str, path: str, resp: Response, now_epoch: float) -> Any:
    """The JSON of a 2xx answer, or the `ApiError` the answer stands for."""
    if not 200 <= resp.status < 300:
        raise status_error(label, path, resp, now_epoch)
    try:
        return jsoncodec.loads(resp.body)
    except ValueError as exc:
        kind = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not JSON"
        ctype = resp.headers.get("Content-Type", "no content type")
        raise ApiTransportError(
            f"{label}: {resp.status} response body is {kind} ({ctype})",
            status=resp.status, request_id=_request_id(resp.headers),
        ) from exc


def transport_error(label: str, exc: BaseException, timeout_s: float) -> ApiTransportError:
    """A connection that failed, dropped or timed out."""
    if isinstance(exc, TimeoutError):
        what = f"no complete answer within {timeout_s:g} s"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        what = "connection dropped by the server"
    elif isinstance(exc, aiohttp.ClientConnectorError) and _is_dns(exc):
        what = f"the host name {exc.host} could not be resolved (DNS); is base_url right?"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        what = f"cannot connect to {exc.host}:{exc.port}"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        what = "response body cut short"
    else:
        what = f"{type(exc).__name__}: {_one_line(str(exc))}".rstrip(": ")
    return ApiTransportError(f"{label}: {what}")


def _is_dns(exc: aiohttp.ClientConnectorError) -> bool:
    """A name that does not resolve, told apart from a host that refuses."""
    dns_error = getattr(aiohttp, "ClientConnectorDNSError", ())
    return isinstance(exc, dns_error) or isinstance(exc.os_error, socket.gaierror)


def status_error(label: str, path: str, resp: Response, now_epoch: float) -> ApiError:
    """The error class for an HTTP error status, with the server's code and message."""
    code, message, details = _envelope(resp.body)
    st = resp.status
    kw: dict[str, Any] = {"status": st, "code": code, "request_id": _request_id(resp.headers)}
    said = f": {message}" if message else ""
    if st == 400:
        return BadRequest(f"{label}: bad request (400){_param(details)}{said}", **kw)
    if st == 401:
        return AuthError(f"{label}: API key rejected (401 unauthorized)", **kw)
    if st == 403:
        return AuthError(
            f"{label}: API key lacks the recordings:read scope (403 forbidden)", **kw
        )
    if st in (404, 410):
        # the list itself cannot be missing: the base URL is wrong (`/v1` forgotten, most
        # often), not a recording gone
        hint = "; does base_url end in /v1?" if path.rstrip("/") == "/recordings" else ""
        return NotFound(f"{label}: not found ({st}){hint}", **kw)
    if st == 429:
        wait = parse_retry_after(resp.headers, now_epoch)
        when = "no retry time given" if wait is None else f"retry in {wait:g} s"
        return RateLimited(f"{label}: rate limited (429), {when}", retry_after=wait, **kw)
    if st >= 500:
        why = f" {code}" if code else _not_json_hint(resp)
        return ServerError(f"{label}: server error {st}{why}{said}", **kw)
    if st == 408:
        return ApiTransportError(f"{label}: request timeout (408)", **kw)
    return ApiError(f"{label}: unexpected status {st}{said}", **kw)


def _envelope(body: bytes) -> tuple[str | None, str | None, Mapping[str, Any]]:
    """(code, message, details) from an error body, all empty when it is none of its forms.

    The documented form is `{"error": {"code", "message", "details"}}`; the deployed API
    also answers `{"error": "text"}` and `{"message": "text"}`.
    """
    try:
        data = jsoncodec.loads(body)
    except ValueError:
        return None, None, {}
    if not isinstance(data, dict):
        return None, None, {}
    err = data.get("error")
    if not isinstance(err, dict):
        text = err if isinstance(err, str) and err else data.get("message")
        said = _one_line(text) if isinstance(text, str) and text.strip() else None
        return None, said, {}
    code = err.get("code") if isinstance(err.get("code"), str) else None
    message = err.get("message")
    details = err.get("details")
    return (
        code,
        _one_line(message) if isinstance(message, str) and message else None,
        details if isinstance(details, dict) else {},
    )


def _param(details: Mapping[str, Any]) -> str:
    """`parameter 'limit'` from the error details, when the server names it."""
    for key in _PARAM_KEYS:
        value = details.get(key)
        if isinstance(value, str) and value:
            return f" parameter {_one_line(value)!r}"
    return ""


def _not_json_hint(resp: Response) -> str:
    """Say what came instead of an error envelope (an HTML page from a proxy, say)."""
    ctype = resp.headers.get("Content-Type", "")
    return f" (not the API: {ctype.split(';')[0]})" if ctype and "json" not in ctype else ""


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_QUOTED_CHARS else flat[: MAX_QUOTED_CHARS - 1] + "…"


def _request_id(headers: Mapping[str, str]) -> str | None:
    return headers.get("X-Request-Id") or headers.get("Request-Id")
