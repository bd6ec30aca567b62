"""BotaClient: the Bota API's endpoints, each a request under its budgets and a parser.

The HTTP underneath (the session, retries, rate-limit headers) is the `transport`'s;
reading an error answer is `answers`'; the shapes of the 2xx answers are `shapes`'. The
API key never appears in a message, a repr or a log line.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

from botasync import metrics
from botasync.api import shapes
from botasync.api.budget import RequestBudget
from botasync.api.shapes import DownloadUrl, Page
from botasync.api.transport import (
    DEFAULT_BACKOFF_BASE_S,
    DEFAULT_BACKOFF_CAP_S,
    USER_AGENT,
    Bucket,
    Budgets,
    Parser,
    Request,
    Transport,
)
from botasync.config import ApiConfig
from botasync.lifecycle import AsyncClosing

# importable from here, where they were before the client was split
__all__ = ["USER_AGENT", "BotaClient", "DownloadUrl", "Page"]

T = TypeVar("T")


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
        self._clock = clock  # wall clock (Unix seconds): `expires_in` counts from it
        self._transport = Transport(
            api, clock=clock, rand=rand, backoff_base=backoff_base, backoff_cap=backoff_cap,
            project=project)

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

    @property
    def requests(self) -> int:
        """HTTP requests sent, retries included."""
        return self._transport.requests

    async def aclose(self) -> None:
        """Close the HTTP session; calling it again does nothing."""
        await self._transport.aclose()

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
        req = Request("GET", "/recordings", _get_label("/recordings", params), params)
        return await self._call(req, budgets, shapes.page)

    async def get_recording(
        self, recording_id: str, *, budgets: Sequence[RequestBudget] = ()
    ) -> Any:
        """One recording as received (a dict); NotFound when it does not exist (any more)."""
        path = f"/recordings/{quote(recording_id, safe='')}"
        req = Request("GET", path, f"GET {path}")
        return await self._call(req, budgets, shapes.one_object("recording"))

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
        req = Request("POST", path, label, body=body, bucket="download")
        return await self._call(req, self._download_budgets(), self._download_url_parser())

    async def get_download_url(self, recording_id: str) -> DownloadUrl:
        """The deployed form: `GET .../download-url`, no body, a URL for the recording's file."""
        path = f"/recordings/{quote(recording_id, safe='')}/download-url"
        req = Request("GET", path, f"GET {path}", bucket="download")
        return await self._call(req, self._download_budgets(), self._download_url_parser())

    def _download_budgets(self) -> list[RequestBudget]:
        return [self.download_budget] if self.download_budget is not None else []

    def _download_url_parser(self) -> Parser[DownloadUrl]:
        """`shapes.download_url` with this client's clock: `expires_in` counts from the answer."""
        return lambda label, data: shapes.download_url(label, data, self._clock())

    async def check(self) -> None:
        """One cheap call (a page of one) that proves the URL, the key and its scope."""
        await self.list_recordings(limit=1)

    # -- transcriptions and summaries: their own server limit (10 a minute), their own budget

    async def get_transcription(self, transcription_id: str) -> Any:
        """One transcription as received (a dict); NotFound when it does not exist (any more:
        the deployed API answers 404 for a transcription replaced by a re-run)."""
        path = f"/transcriptions/{quote(transcription_id, safe='')}"
        return await self._transcripts_call(path, {}, shapes.one_object("transcription"))

    async def list_transcriptions(
        self, recording_id: str, cursor: str | None = None, *, limit: int = 20
    ) -> Page:
        """One page of a recording's transcriptions (the deployed dialect's list)."""
        params = {"recording_id": recording_id, "limit": str(limit)}
        if cursor is not None:
            params["cursor"] = cursor
        return await self._transcripts_call("/transcriptions", params, shapes.page)

    async def get_summary(self, summary_id: str) -> Any:
        """One summary as received (a dict); NotFound when it does not exist."""
        path = f"/summaries/{quote(summary_id, safe='')}"
        return await self._transcripts_call(path, {}, shapes.one_object("summary"))

    async def list_summaries(
        self, transcription_id: str, cursor: str | None = None, *, limit: int = 20
    ) -> Page:
        """One page of a transcription's summaries; NotFound where the API has no such list
        (the documented dialect links a summary by the transcription's `summary_id`)."""
        params = {"transcription_id": transcription_id, "limit": str(limit)}
        if cursor is not None:
            params["cursor"] = cursor
        return await self._transcripts_call("/summaries", params, shapes.page)

    async def _transcripts_call(
        self, path: str, params: dict[str, str], parse: Parser[T]
    ) -> T:
        """A GET under the transcripts budget (and the overall one)."""
        req = Request("GET", path, _get_label(path, params), params, bucket="transcripts")
        extra = [self.transcripts_budget] if self.transcripts_budget is not None else []
        return await self._call(req, extra, parse)

    async def _call(
        self, req: Request, budgets: Sequence[RequestBudget], parse: Parser[T]
    ) -> T:
        """`req` through the transport, under the overall budget and `budgets`."""
        every = [self.budget, *budgets]
        return await self._transport.call(req, Budgets(every, self._server_budgets(req.bucket)),
                                          parse)

    def _server_budgets(self, bucket: Bucket) -> list[RequestBudget]:
        """The budgets mirroring the server limit that `bucket`'s rate-limit headers describe."""
        if bucket == "download" and self.download_budget is not None:
            return [self.download_budget]
        if bucket == "transcripts" and self.transcripts_budget is not None:
            return [self.transcripts_budget]
        return [self.budget]


def _get_label(path: str, params: Mapping[str, str]) -> str:
    """`GET /recordings offset=200 status=pending`: the limit left out, and a cursor (opaque,
    and it may be long) named but never quoted."""
    shown = " ".join(
        f"{k}=…" if k == "cursor" else f"{k}={v}" for k, v in params.items() if k != "limit")
    return f"GET {path} {shown}".rstrip()

