"""BotaClient: the Bota API over aiohttp, with auth, the request budget, retries and error mapping.

Every request passes through the budget(s), feeds the server's rate-limit headers
back into them, and comes back as parsed JSON or as one of the `ApiError`
classes. aiohttp's exceptions are translated in one place (`_transport_error`,
`_status_error`, `_shape_error`) and never leave this module; the API key never
appears in a message, a repr or a log line.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import structlog

from botasync import __version__, jsoncodec, metrics
from botasync.api.budget import RequestBudget, acquire_all
from botasync.api.models import normalize_ts, to_count, to_number, to_ts
from botasync.backoff import backoff_delay, parse_retry_after
from botasync.config import ApiConfig
from botasync.errors import (
    ApiError,
    ApiTransportError,
    AuthError,
    BadRequest,
    NotFound,
    PaginationError,
    RateLimited,
    ServerError,
)
from botasync.lifecycle import AsyncClosing

log = structlog.get_logger("botasync.client")

USER_AGENT = f"botasync/{__version__}"
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_CAP_S = 30.0
# A 429 without Retry-After or X-RateLimit-Reset: wait this long, doubled with every such
# 429 in a row (the deployed API may send neither), up to the backoff cap.
DEFAULT_RETRY_AFTER_S = 1.0
# Server text quoted in a message is cut here, so an error stays one readable line.
MAX_QUOTED_CHARS = 200
_PARAM_KEYS = ("param", "parameter", "field", "name")
MAX_EXPIRES_IN_S = 7 * 24 * 3600  # a longer `expires_in` is not believed (S3 allows 7 days)

Bucket = Literal["main", "download", "transcripts"]
T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    """One page of `GET /recordings`: the items as received (unvalidated), `has_more`, and
    the deployed dialect's `next_cursor` (None where the API pages by offset, or at the end)."""

    items: list[Any]
    has_more: bool
    next_cursor: str | None = None


@dataclass(frozen=True)
class DownloadUrl:
    """A pre-signed URL for one file, read from either dialect's download-url answer.

    The URL is a credential, so repr hides it. `content_type` and `file_size_bytes` are
    None when the API does not say; `expires_at` comes from `expires_at` (documented) or
    from `expires_in` and the clock (deployed), and is None when neither is usable.
    """

    url: str = field(repr=False)
    media_id: str | None
    content_type: str | None
    file_size_bytes: int | None
    expires_at: str | None


@dataclass(frozen=True)
class _Request:
    """One API call as the retry loop sees it; `label` names it in messages and logs."""

    method: str
    path: str
    label: str
    params: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    bucket: Bucket = "main"  # which server limit the rate-limit headers describe


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


Parser = Callable[[_Request, Any], T]


class BotaClient(AsyncClosing):
    """The API calls botasync makes; `async with` it, or call `aclose()` when done."""

    def __init__(
        self,
        api: ApiConfig,
        *,
        budget: RequestBudget | None = None,
        download_budget: RequestBudget | None = None,
        transcripts_budget: RequestBudget | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        backoff_base: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap: float = DEFAULT_BACKOFF_CAP_S,
        project: str = metrics.PROJECT,
    ) -> None:
        self._api = api
        self.project = project  # the metrics' label
        self.budget = budget if budget is not None else RequestBudget(api.requests_per_minute)
        self.download_budget = download_budget
        self.transcripts_budget = transcripts_budget  # the transcription/summary endpoints
        self._clock = clock  # wall clock (Unix seconds): the rate-limit headers use it
        self._rand = rand
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._sem = asyncio.Semaphore(api.concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.requests = 0  # HTTP requests sent, retries included
        self._blind_429s = 0  # 429s in a row that said nothing of when to come back

    @classmethod
    def for_project(
        cls, api: ApiConfig, project: str, *, download_per_minute: int | None = None,
        transcripts_per_minute: int | None = None,
    ) -> BotaClient:
        """A project's client with budgets of its own (each Bota project has its own rate
        limit): the API's, and the download and transcript shares when given."""
        return cls(
            api, budget=RequestBudget(api.requests_per_minute),
            download_budget=RequestBudget(download_per_minute) if download_per_minute else None,
            transcripts_budget=(RequestBudget(transcripts_per_minute)
                                if transcripts_per_minute else None),
            backoff_base=api.retry_base_s, backoff_cap=api.retry_max_s, project=project)

    def __repr__(self) -> str:
        url = self._api.base_url
        return f"BotaClient(base_url={url!r}, api_key='***', requests={self.requests})"


    async def aclose(self) -> None:
        """Close the HTTP session; calling it again does nothing."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- the calls ---------------------------------------------------------------

    async def list_recordings(
        self,
        *,
        offset: int = 0,
        cursor: str | None = None,
        limit: int = 100,
        status: str | None = None,
        device_id: str | None = None,
        end_user_id: str | None = None,
        budgets: Sequence[RequestBudget] = (),
    ) -> Page:
        """One page of recordings, newest first; empty filters are left out.

        With a `cursor` (the deployed dialect's `next_cursor`) no offset is sent; the
        offset is sent only past the first page, so the first request is the same in
        both dialects.
        """
        params = {"limit": str(limit)}
        if cursor is not None:
            params["cursor"] = cursor
        elif offset:
            params["offset"] = str(offset)
        filters = {"status": status, "device_id": device_id, "end_user_id": end_user_id}
        params.update({k: v for k, v in filters.items() if v})
        # a cursor is opaque and may be long: the label names it, never quotes it
        shown = " ".join(
            f"{k}=…" if k == "cursor" else f"{k}={v}" for k, v in params.items() if k != "limit")
        req = _Request("GET", "/recordings", f"GET /recordings {shown}".rstrip(), params)
        return await self._call(req, budgets, _page)

    async def get_recording(
        self, recording_id: str, *, budgets: Sequence[RequestBudget] = ()
    ) -> Any:
        """One recording as received (a dict); NotFound when it does not exist (any more)."""
        path = f"/recordings/{quote(recording_id, safe='')}"
        req = _Request("GET", path, f"GET {path}")
        return await self._call(req, budgets, _recording)

    async def create_download_url(
        self, recording_id: str, media_id: str | None
    ) -> DownloadUrl:
        """The documented form: `POST .../download-url {"media_id"}`, a URL for one media file.

        Without a media id (a recording's own file) the POST carries no body. Also under
        the download budget, as is `get_download_url`.
        """
        path = f"/recordings/{quote(recording_id, safe='')}/download-url"
        label = f"POST {path}" + (f" media_id={media_id}" if media_id is not None else "")
        body = {"media_id": media_id} if media_id is not None else None
        req = _Request("POST", path, label, body=body, bucket="download")
        return await self._call(req, self._download_budgets(), self._download_url_parser())

    async def get_download_url(self, recording_id: str) -> DownloadUrl:
        """The deployed form: `GET .../download-url`, no body, a URL for the recording's file."""
        path = f"/recordings/{quote(recording_id, safe='')}/download-url"
        req = _Request("GET", path, f"GET {path}", bucket="download")
        return await self._call(req, self._download_budgets(), self._download_url_parser())

    def _download_budgets(self) -> list[RequestBudget]:
        return [self.download_budget] if self.download_budget is not None else []

    def _download_url_parser(self) -> Parser[DownloadUrl]:
        """`_download_url` with this client's clock: `expires_in` counts from the answer."""
        return lambda req, data: _download_url(req, data, self._clock())

    async def check(self) -> None:
        """One cheap call (a page of one) that proves the URL, the key and its scope."""
        await self.list_recordings(limit=1)

    # -- transcriptions and summaries: their own server limit (10 a minute), their own budget

    async def get_transcription(self, transcription_id: str) -> Any:
        """One transcription as received (a dict); NotFound when it does not exist (any more:
        the deployed API answers 404 for a transcription replaced by a re-run)."""
        path = f"/transcriptions/{quote(transcription_id, safe='')}"
        return await self._transcripts_call(path, {}, _object("transcription"))

    async def list_transcriptions(
        self, recording_id: str, cursor: str | None = None, *, limit: int = 20
    ) -> Page:
        """One page of a recording's transcriptions (the deployed dialect's list)."""
        params = {"recording_id": recording_id, "limit": str(limit)}
        if cursor is not None:
            params["cursor"] = cursor
        return await self._transcripts_call("/transcriptions", params, _page)

    async def get_summary(self, summary_id: str) -> Any:
        """One summary as received (a dict); NotFound when it does not exist."""
        path = f"/summaries/{quote(summary_id, safe='')}"
        return await self._transcripts_call(path, {}, _object("summary"))

    async def list_summaries(
        self, transcription_id: str, cursor: str | None = None, *, limit: int = 20
    ) -> Page:
        """One page of a transcription's summaries; NotFound where the API has no such list
        (the documented dialect links a summary by the transcription's `summary_id`)."""
        params = {"transcription_id": transcription_id, "limit": str(limit)}
        if cursor is not None:
            params["cursor"] = cursor
        return await self._transcripts_call("/summaries", params, _page)

    async def _transcripts_call(
        self, path: str, params: dict[str, str], parse: Parser[T]
    ) -> T:
        """A GET under the transcripts budget (and the overall one); a cursor is not quoted."""
        shown = " ".join(f"{k}=…" if k == "cursor" else f"{k}={v}"
                         for k, v in params.items() if k != "limit")
        req = _Request("GET", path, f"GET {path} {shown}".rstrip(), params, bucket="transcripts")
        extra = [self.transcripts_budget] if self.transcripts_budget is not None else []
        return await self._call(req, extra, parse)

    # -- the retry loop and one attempt --------------------------------------------

    async def _call(
        self, req: _Request, budgets: Sequence[RequestBudget], parse: Parser[T]
    ) -> T:
        """Send `req` until it succeeds, fails for good, or runs out of retries.

        `parse` checks the answer's shape inside the loop, so a malformed 200 is retried too.
        """
        every = [self.budget, *budgets]
        for attempt in range(self._api.max_retries + 1):
            try:
                result = parse(req, await self._attempt(req, every))
                self._blind_429s = 0
                return result
            except ApiError as err:
                self._scrub(err)
                if not err.retryable or attempt >= self._api.max_retries:
                    raise
                delay = self._retry_delay(err, attempt, req)
                log.warning(
                    "api.retry", request=req.label, attempt=attempt + 1,
                    delay_s=round(delay, 3), error=str(err),
                )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry_delay(self, err: ApiError, attempt: int, req: _Request) -> float:
        """Backoff with jitter; a 429 waits at least what the server asked, and so do the rest."""
        delay = backoff_delay(
            attempt, base=self._backoff_base, cap=self._backoff_cap, rand=self._rand
        )
        if isinstance(err, RateLimited):
            wait = err.retry_after
            if wait is None:
                # no hint at all: the budget alone keeps us under the limit, so a 429 means
                # other clients share it; back off exponentially while they keep it full
                wait = min(DEFAULT_RETRY_AFTER_S * 2 ** self._blind_429s, self._backoff_cap)
                self._blind_429s += 1
            for budget in self._server_budgets(req):
                budget.pause_for(wait)
            delay = max(delay, wait)
        return delay

    def _server_budgets(self, req: _Request) -> list[RequestBudget]:
        """The budgets mirroring the server limit that `req`'s rate-limit headers describe."""
        if req.bucket == "download" and self.download_budget is not None:
            return [self.download_budget]
        if req.bucket == "transcripts" and self.transcripts_budget is not None:
            return [self.transcripts_budget]
        return [self.budget]

    async def _attempt(self, req: _Request, budgets: Sequence[RequestBudget]) -> Any:
        """One HTTP exchange: budget slot, concurrency, send, observe, decode.

        The budget comes first: a request waiting for a budget (the reconcile share, the
        download-url limit) must not sit on a concurrency slot the tick's requests need.
        """
        session = self._get_session()
        async with acquire_all(budgets), self._sem:
            self.requests += 1
            started = time.monotonic()
            resp = await self._send(session, req)
        log.debug(
            "api.request", request=req.label, status=resp.status,
            elapsed_ms=round((time.monotonic() - started) * 1000, 1),
        )
        self._observe(req, resp)
        return _decode(req, resp, self._clock())

    async def _send(self, session: aiohttp.ClientSession, req: _Request) -> _Response:
        headers = {"Authorization": f"Bearer {self._api.api_key.get_secret_value()}"}
        try:
            async with session.request(
                req.method, self._api.base_url + req.path,
                params=req.params, json=req.body, headers=headers,
            ) as resp:
                body = await resp.read()
                return _Response(resp.status, resp.headers, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            metrics.api_response(req.path, None, project=self.project)
            raise _transport_error(req, exc, self._api.timeout_s) from exc

    def _observe(self, req: _Request, resp: _Response) -> None:
        """Tell the budget what the server counts (other clients share the project's limit)."""
        remaining = _int_header(resp.headers, "X-RateLimit-Remaining")
        reset = _float_header(resp.headers, "X-RateLimit-Reset")  # a fraction is kept
        for budget in self._server_budgets(req):
            budget.observe(remaining, reset, self._clock())
        metrics.api_response(req.path, resp.status, remaining if req.bucket == "main" else None,
                             self.project)

    def _get_session(self) -> aiohttp.ClientSession:
        """The one session, made on first use inside the running loop."""
        if self._closed:
            raise RuntimeError("BotaClient is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._api.timeout_s),
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                connector=aiohttp.TCPConnector(limit=self._api.concurrency),
            )
            # aiohttp silently resends a GET whose connection dropped; that second
            # request would bypass the budget and the count, and our own retry covers it.
            if hasattr(self._session, "_retry_connection"):
                self._session._retry_connection = False
        return self._session

    def _scrub(self, err: ApiError) -> None:
        """Belt and braces: should the server echo the key, cut it out of the message."""
        key = self._api.api_key.get_secret_value()
        if key and key in str(err):
            err.args = (str(err).replace(key, "***"),)


# -- decoding and error mapping: the one place foreign errors become ours ----------


def _decode(req: _Request, resp: _Response, now_epoch: float) -> Any:
    """The JSON of a 2xx answer, or the `ApiError` the answer stands for."""
    if not 200 <= resp.status < 300:
        raise _status_error(req, resp, now_epoch)
    try:
        return jsoncodec.loads(resp.body)
    except ValueError as exc:
        kind = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not JSON"
        ctype = resp.headers.get("Content-Type", "no content type")
        raise ApiTransportError(
            f"{req.label}: {resp.status} response body is {kind} ({ctype})",
            status=resp.status, request_id=_request_id(resp.headers),
        ) from exc


def _transport_error(req: _Request, exc: BaseException, timeout_s: float) -> ApiTransportError:
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
    return ApiTransportError(f"{req.label}: {what}")


def _is_dns(exc: aiohttp.ClientConnectorError) -> bool:
    """A name that does not resolve, told apart from a host that refuses."""
    dns_error = getattr(aiohttp, "ClientConnectorDNSError", ())
    return isinstance(exc, dns_error) or isinstance(exc.os_error, socket.gaierror)


def _status_error(req: _Request, resp: _Response, now_epoch: float) -> ApiError:
    """The error class for an HTTP error status, with the server's code and message."""
    code, message, details = _envelope(resp.body)
    st = resp.status
    kw: dict[str, Any] = {"status": st, "code": code, "request_id": _request_id(resp.headers)}
    said = f": {message}" if message else ""
    if st == 400:
        return BadRequest(f"{req.label}: bad request (400){_param(details)}{said}", **kw)
    if st == 401:
        return AuthError(f"{req.label}: API key rejected (401 unauthorized)", **kw)
    if st == 403:
        return AuthError(
            f"{req.label}: API key lacks the recordings:read scope (403 forbidden)", **kw
        )
    if st in (404, 410):
        # the list itself cannot be missing: the base URL is wrong (`/v1` forgotten, most
        # often), not a recording gone
        hint = "; does base_url end in /v1?" if req.path.rstrip("/") == "/recordings" else ""
        return NotFound(f"{req.label}: not found ({st}){hint}", **kw)
    if st == 429:
        wait = parse_retry_after(resp.headers, now_epoch)
        when = "no retry time given" if wait is None else f"retry in {wait:g} s"
        return RateLimited(f"{req.label}: rate limited (429), {when}", retry_after=wait, **kw)
    if st >= 500:
        why = f" {code}" if code else _not_json_hint(resp)
        return ServerError(f"{req.label}: server error {st}{why}{said}", **kw)
    if st == 408:
        return ApiTransportError(f"{req.label}: request timeout (408)", **kw)
    return ApiError(f"{req.label}: unexpected status {st}{said}", **kw)


def _shape_error(req: _Request, what: str) -> ApiTransportError:
    """A 2xx JSON answer that is not the documented shape (a proxy, a broken deploy)."""
    return ApiTransportError(f"{req.label}: response is {what}", status=200)


def _page(req: _Request, data: Any) -> Page:
    """A list answer: `data` a list and `has_more` a bool, or it is not the API talking."""
    if not (
        isinstance(data, dict)
        and isinstance(data.get("data"), list)
        and isinstance(data.get("has_more"), bool)
    ):
        raise _shape_error(req, "not a page (`data` list and `has_more` bool)")
    cursor = data.get("next_cursor")
    if cursor is not None and (not isinstance(cursor, str) or not cursor):
        raise _shape_error(req, "a page whose `next_cursor` is not a non-empty string")
    if not data["data"] and data["has_more"]:
        # believed, it would walk on forever: no item ever tells the walk it is done
        raise PaginationError(
            f"{req.label}: an empty page that says more follow (`has_more` true); "
            "the walk stops here", status=200)
    return Page(items=data["data"], has_more=data["has_more"], next_cursor=cursor)


def _recording(req: _Request, data: Any) -> Any:
    """A detail answer: one JSON object (validating its fields is the caller's business)."""
    if not isinstance(data, dict):
        raise _shape_error(req, "not a recording object")
    return data


def _object(what: str) -> Parser[Any]:
    """A detail answer that must be one JSON object (its fields are the caller's business)."""

    def parse(req: _Request, data: Any) -> Any:
        if not isinstance(data, dict):
            raise _shape_error(req, f"not a {what} object")
        return data

    return parse


def _download_url(req: _Request, data: Any, now_epoch: float) -> DownloadUrl:
    """Either dialect's download-url answer; only the URL itself is required.

    Documented: `{download_url, media_id, content_type, file_size_bytes, expires_at}`.
    Deployed: `{download_url, expires_in, content_type (nullable), file_size_bytes (an
    int, a decimal string or null)}`. A field that is missing or unreadable is None.
    """
    if not isinstance(data, dict):
        raise _shape_error(req, "not a download-url object")
    url = data.get("download_url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise _shape_error(req, "a download-url object without an http(s) `download_url`")
    content_type, media_id = data.get("content_type"), data.get("media_id")
    return DownloadUrl(
        url=url,
        media_id=media_id if isinstance(media_id, str) else None,
        content_type=content_type if isinstance(content_type, str) and content_type else None,
        file_size_bytes=to_count(data.get("file_size_bytes")),
        expires_at=_expiry(data, now_epoch),
    )


def _expiry(data: Mapping[str, Any], now_epoch: float) -> str | None:
    """`expires_at` as sent, or now plus `expires_in` seconds; None when neither reads."""
    at = to_ts(data.get("expires_at"))
    if at is not None:
        return at
    seconds = to_number(data.get("expires_in"))
    if seconds is None or seconds <= 0 or seconds > MAX_EXPIRES_IN_S:
        return None
    when = datetime.fromtimestamp(now_epoch + float(seconds), UTC)
    return normalize_ts(when.isoformat())


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


def _not_json_hint(resp: _Response) -> str:
    """Say what came instead of an error envelope (an HTML page from a proxy, say)."""
    ctype = resp.headers.get("Content-Type", "")
    return f" (not the API: {ctype.split(';')[0]})" if ctype and "json" not in ctype else ""


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_QUOTED_CHARS else flat[: MAX_QUOTED_CHARS - 1] + "…"


def _request_id(headers: Mapping[str, str]) -> str | None:
    return headers.get("X-Request-Id") or headers.get("Request-Id")


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = _float_header(headers, name)
    try:
        return None if value is None else int(value)
    except (ValueError, OverflowError):
        return None


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    """A numeric header as sent (`1750000060`, `1750000060.25`); None when it is not one.

    A reset time is not cut to the whole second below it: that would end a wait early.
    """
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
