"""Transport: one API request sent until it succeeds or fails for good.

Each attempt takes its budget slots, then a concurrency slot, sends the request over the
one aiohttp session, feeds the server's rate-limit headers back into the budgets that
mirror that limit, and turns the answer into JSON or an `ApiError` (`answers`). A
retryable error waits out the backoff, or the server's own hint after a 429. aiohttp's
exceptions are translated before they leave this module; the API key never appears in a
message, a repr or a log line.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import aiohttp
import structlog

from botasync import __version__, metrics
from botasync.api.answers import Response, decode, transport_error
from botasync.api.budget import RequestBudget, acquire_all
from botasync.backoff import backoff_delay
from botasync.config import ApiConfig
from botasync.errors import ApiError, RateLimited

# the name people filter the request and retry lines on, from before the client was split
log = structlog.get_logger("botasync.client")

USER_AGENT = f"botasync/{__version__}"
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_CAP_S = 30.0
# A 429 without Retry-After or X-RateLimit-Reset: wait this long, doubled with every such
# 429 in a row (the deployed API may send neither), up to the backoff cap.
DEFAULT_RETRY_AFTER_S = 1.0

Bucket = Literal["main", "download", "transcripts"]
T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    """One API call as the retry loop sees it; `label` names it in messages and logs."""

    method: str
    path: str
    label: str
    params: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    bucket: Bucket = "main"  # which server limit the rate-limit headers describe


# (the request's label, a 2xx answer's JSON) -> what it says; an `ApiError` raised for a
# shape that is not the API's is retried like a bad status
Parser = Callable[[str, Any], T]


@dataclass(frozen=True)
class Budgets:
    """The budgets one call passes through: `every` is waited on before each attempt;
    `server` mirrors the limit the answer's rate-limit headers describe, so it is told
    what the server counts and paused by a 429."""

    every: Sequence[RequestBudget]
    server: Sequence[RequestBudget]


class Transport:
    """HTTP to the API: the session, the concurrency limit, the retry loop, the request count."""

    def __init__(
        self,
        api: ApiConfig,
        *,
        clock: Callable[[], float],
        rand: Callable[[], float] = random.random,
        backoff_base: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap: float = DEFAULT_BACKOFF_CAP_S,
        project: str = metrics.PROJECT,
    ) -> None:
        self._api = api
        self._project = project  # the metrics' label
        self._clock = clock  # wall clock (Unix seconds): the rate-limit headers use it
        self._rand = rand
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._sem = asyncio.Semaphore(api.concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.requests = 0  # HTTP requests sent, retries included
        self._blind_429s = 0  # 429s in a row that said nothing of when to come back

    async def aclose(self) -> None:
        """Close the HTTP session; calling it again does nothing."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def call(self, req: Request, budgets: Budgets, parse: Parser[T]) -> T:
        """Send `req` until it succeeds, fails for good, or runs out of retries.

        `parse` checks the answer's shape inside the loop, so a malformed 200 is retried too.
        """
        for attempt in range(self._api.max_retries + 1):
            try:
                result = parse(req.label, await self._attempt(req, budgets))
                self._blind_429s = 0
                return result
            except ApiError as err:
                self._scrub(err)
                if not err.retryable or attempt >= self._api.max_retries:
                    raise
                delay = self._retry_delay(err, attempt, budgets.server)
                log.warning(
                    "api.retry", request=req.label, attempt=attempt + 1,
                    delay_s=round(delay, 3), error=str(err),
                )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry_delay(
        self, err: ApiError, attempt: int, server: Sequence[RequestBudget]
    ) -> float:
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
            for budget in server:
                budget.pause_for(wait)
            delay = max(delay, wait)
        return delay

    async def _attempt(self, req: Request, budgets: Budgets) -> Any:
        """One HTTP exchange: budget slot, concurrency, send, observe, decode.

        The budget comes first: a request waiting for a budget (the reconcile share, the
        download-url limit) must not sit on a concurrency slot the tick's requests need.
        """
        session = self._get_session()
        async with acquire_all(budgets.every), self._sem:
            self.requests += 1
            started = time.monotonic()
            resp = await self._send(session, req)
        log.debug(
            "api.request", request=req.label, status=resp.status,
            elapsed_ms=round((time.monotonic() - started) * 1000, 1),
        )
        self._observe(req, resp, budgets.server)
        return decode(req.label, req.path, resp, self._clock())

    async def _send(self, session: aiohttp.ClientSession, req: Request) -> Response:
        headers = {"Authorization": f"Bearer {self._api.api_key.get_secret_value()}"}
        try:
            async with session.request(
                req.method, self._api.base_url + req.path,
                params=req.params, json=req.body, headers=headers,
            ) as resp:
                body = await resp.read()
                return Response(resp.status, resp.headers, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            metrics.api_response(req.path, None, project=self._project)
            raise transport_error(req.label, exc, self._api.timeout_s) from exc

    def _observe(self, req: Request, resp: Response, server: Sequence[RequestBudget]) -> None:
        """Tell the budget what the server counts (other clients share the project's limit)."""
        remaining = _int_header(resp.headers, "X-RateLimit-Remaining")
        reset = _float_header(resp.headers, "X-RateLimit-Reset")  # a fraction is kept
        for budget in server:
            budget.observe(remaining, reset, self._clock())
        metrics.api_response(req.path, resp.status, remaining if req.bucket == "main" else None,
                             self._project)

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
