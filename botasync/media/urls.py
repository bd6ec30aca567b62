"""Pre-signed download URLs: asked of the API in the form it speaks, cached while fresh.

The URL comes in one of two forms, and the API says which by refusing the other: the
documented `POST /recordings/{id}/download-url {"media_id"}` for a media item, and the
deployed `GET /recordings/{id}/download-url` for a recording's own file (the media
row whose id is the recording's). The form that worked is kept in the project's `state`
row `download_form` and tried first from then on. Choosing the form is pure; `Urls`
makes the calls and keeps what they show.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal

import structlog

from botasync.api.client import BotaClient, DownloadUrl
from botasync.api.models import normalize_ts
from botasync.errors import ApiError, AuthError
from botasync.media import files as fs
from botasync.media.ledger import Failure
from botasync.media.queue import Clock, Job
from botasync.store.sqlite import Mirror

URL_MARGIN_S = 60.0  # a cached URL this close to expiry is renewed before use
FORM_KEY = "download_form"  # the `state` row naming the download-url form the API speaks

Form = Literal["GET", "POST"]


def first_form(learned: Form | None, media_id: str) -> Form:
    """The download-url form to try first: the one the API took before, else by the row.

    A media item (`med_...`) is named in the documented POST; a recording's own file
    (the row's id is the recording's) has no media id to send, so it is the GET.
    """
    if learned is not None:
        return learned
    return "POST" if media_id.startswith("med_") else "GET"


def other_form(form: Form) -> Form:
    return "GET" if form == "POST" else "POST"


def try_other(learned: Form | None, status: int | None) -> bool:
    """Whether an answer to the first form asks for one try of the other.

    A 405 always: that form is not (or no longer) the API's. A 404 only while no form
    is learned: it may be a route the API lacks as much as a file it lacks; once a form
    has worked, its 404 is a missing file.
    """
    return status == 405 or (status == 404 and learned is None)


def learned_form(tried: Sequence[tuple[Form, int]]) -> Form | None:
    """Which form the API speaks, from the statuses its forms got (2xx: it worked).

    A form that worked is the API's; so is one that got a 404 while the other got a
    405 (the route is there, the file is not). Anything else says nothing.
    """
    for form, status in tried:
        if 200 <= status < 300:
            return form
    refused = [form for form, status in tried if status == 405]
    found = [form for form, status in tried if status == 404]
    if len(refused) == 1 and len(found) == 1:
        return found[0]
    return None


def _expires(url: DownloadUrl) -> datetime | None:
    if url.expires_at is None:
        return None
    try:
        return datetime.fromisoformat(normalize_ts(url.expires_at).replace("Z", "+00:00"))
    except ValueError:
        return None


class Urls:
    """One project's download URLs: a cache by media id, and the form the API speaks."""

    def __init__(self, client: BotaClient, mirror: Mirror, project: str, clock: Clock) -> None:
        self._client = client
        self._mirror = mirror
        self._clock = clock
        self._cache: dict[str, DownloadUrl] = {}
        self._lock = asyncio.Lock()  # one download-url call at a time, see `_new`
        self._form: Form | None = None  # the download-url form the API took (`state`)
        # the lines of the downloader's logger, bound lazily (see `Downloader._log`)
        self._log = structlog.get_logger("botasync.media", project=project)

    async def load(self) -> None:
        """Read the form learned before from the `state` table."""
        learned = await self._mirror.get_state(FORM_KEY)
        self._form = "GET" if learned == "GET" else "POST" if learned == "POST" else None

    def forget(self, media_id: str) -> None:
        """Drop the item's cached URL: it was refused, or its file has landed."""
        self._cache.pop(media_id, None)

    async def get(self, job: Job) -> DownloadUrl:
        """A pre-signed URL for the item: the cached one while it is fresh, else a new one."""
        cached = self._cache.get(job.media_id)
        expires = _expires(cached) if cached else None
        if cached and expires and expires - self._clock() > timedelta(seconds=URL_MARGIN_S):
            return cached
        url = await self._new(job)
        self._cache[job.media_id] = url
        return url

    async def _new(self, job: Job) -> DownloadUrl:
        """Ask the API for a URL, one call at a time, in the form it speaks.

        The learned form first (else the row's: see `first_form`); a 405, or a 404 while
        nothing is learned, gets one try of the other form. What the answers show is
        remembered in the `state` table.
        """
        async with self._lock:
            first = first_form(self._form, job.media_id)
            tried: list[tuple[Form, int]] = []
            errors: list[ApiError] = []
            for form in (first, other_form(first)):
                try:
                    url = await self._ask(form, job)
                except ApiError as e:
                    tried.append((form, e.status or 0))
                    errors.append(e)
                    if form == first and try_other(self._form, e.status):
                        continue
                    break
                tried.append((form, 200))
                await self._remember(learned_form(tried))
                return url
            await self._remember(learned_form(tried))
        # the error of the form the API has (its 404), not of the one it refused (405)
        err = next((e for e in errors if e.status != 405), errors[-1])
        if isinstance(err, AuthError):
            self._log.error("media.auth_failed", error=str(err))
        raise Failure(f"download-url: {err}")

    async def _ask(self, form: Form, job: Job) -> DownloadUrl:
        """One download-url call in `form`; a recording's own file sends no media id.

        It waits for the download budget (30 a minute) first, so the call does not sit on
        a slot of the overall budget, which the metadata sync needs, while it is full.
        """
        budget = self._client.download_budget
        delay = budget.delay() if budget is not None else 0.0
        if 0 < delay < math.inf:
            await asyncio.sleep(delay)
        if form == "GET":
            return await self._client.get_download_url(job.recording_id)
        media_id = job.media_id if fs.MEDIA_ID_RE.fullmatch(job.media_id) else None
        return await self._client.create_download_url(job.recording_id, media_id)

    async def _remember(self, form: Form | None) -> None:
        """Keep the form the API speaks, in memory and in the database, when it is news."""
        if form is None or form == self._form:
            return
        self._log.info("media.download_form", form=form, previous=self._form)
        self._form = form
        await self._mirror.set_state(FORM_KEY, form)
