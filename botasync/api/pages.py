"""Pages as the API gives them: by cursor where it sends one, by offset where it does not.

An answer with a `next_cursor` (the deployed dialect) is followed cursor by cursor: the
next page cannot be asked for before this one answers. An answer without one (the
documented dialect) is read by offset, `depth` pages ahead. Either way the pages come
out in order, with the offset or cursor that follows each, and a chain that breaks (a
cursor seen twice in one walk, `has_more` with no cursor, the same page again and again)
ends the walk with one `PaginationError` after the last good page was handed out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from botasync.api.dialect import Paging
from botasync.api.shapes import Page
from botasync.errors import PaginationError

REPEAT_LIMIT = 5  # identical full pages in a row that stop an offset walk (see RepeatGuard)

# fetch(offset, cursor) -> the page there; only one of the two is used
Fetch = Callable[[int, str | None], Coroutine[Any, Any, Page]]


@dataclass(frozen=True)
class PageRead:
    """One page, when it was asked for, and where the walk goes on from after it."""

    page: Page
    read_at: str
    offset: int  # the page's own offset (by offset); 0 by cursor
    next_offset: int
    next_cursor: str | None  # where the next page starts, by cursor
    paging: Paging | None  # None when the first page was also the last


class RepeatGuard:
    """Spots a walk whose pages keep coming back the same: a server ignoring `offset`.

    Without it such a server makes a walk spin forever, slowed only by the budget. A
    busy archive can repeat a page now and then (exactly a page of new recordings
    between two reads), but not REPEAT_LIMIT times in a row.
    """

    def __init__(self) -> None:
        self._last: tuple[Any, ...] = ()
        self._count = 0
        self.since = 0  # the offset of the first of the identical pages

    def repeated(self, offset: int, page: Page) -> bool:
        """Count the page; True at REPEAT_LIMIT identical full pages in a row."""
        ids = tuple(i.get("id") if isinstance(i, dict) else i for i in page.items)
        if not ids or not page.has_more or ids != self._last:
            self._last, self._count, self.since = ids, 1, offset
            return False
        self._count += 1
        return self._count >= REPEAT_LIMIT

    def error(self, offset: int) -> PaginationError:
        return PaginationError(
            f"GET /recordings returned the same {len(self._last)} items for {self._count} "
            f"pages in a row (offsets {self.since} to {offset}); the API seems to ignore "
            "`offset`, so this walk stops here"
        )


class Pager:
    """Walks one list from a starting offset or cursor; `pages()` yields them in order."""

    def __init__(
        self, fetch: Fetch, *, limit: int, depth: int, cap: int, now: Callable[[], str],
    ) -> None:
        self._fetch = fetch
        self._limit = limit
        self._depth = max(1, depth)
        self._cap = cap  # no offset read ahead at or past this (the archive's known end)
        self._now = now
        self.repeat_since: int | None = None  # set when an offset walk stopped on repeats

    async def pages(
        self, offset: int = 0, cursor: str | None = None,
    ) -> AsyncGenerator[PageRead, None]:
        """The pages from `offset` (or `cursor`), the first asked for alone.

        One page first: a rejected key or an empty archive costs one request, and the
        first answer tells which way the list pages.
        """
        read_at = self._now()
        first = await self._fetch(offset, cursor)
        if cursor is not None or first.next_cursor is not None:
            walk = self._by_cursor(first, read_at)
        else:
            walk = self._by_offset(first, offset, read_at)
        async for read in walk:
            yield read

    async def _by_cursor(self, page: Page, read_at: str) -> AsyncGenerator[PageRead, None]:
        used: set[str] = set()
        ahead: asyncio.Task[Page] | None = None
        try:
            while True:
                cursor = page.next_cursor if page.has_more else None
                if cursor is not None and self._depth > 1:
                    # ask for the next page while this one is written
                    ahead = asyncio.create_task(self._fetch(0, cursor))
                next_read_at = self._now()
                yield PageRead(page, read_at, 0, 0, cursor, "cursor")
                if not page.has_more:
                    return
                if cursor is None:
                    raise PaginationError(
                        "GET /recordings: a page says more follow (`has_more` true) but gives "
                        "no `next_cursor`; this walk stops here")
                if cursor in used:
                    raise PaginationError(
                        "GET /recordings: the API returned a `next_cursor` already followed in "
                        "this walk (the pages loop); this walk stops here")
                used.add(cursor)
                if ahead is None:
                    next_read_at = self._now()
                    page = await self._fetch(0, cursor)
                else:
                    page, ahead = await ahead, None
                read_at = next_read_at
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)

    async def _by_offset(
        self, first: Page, offset: int, read_at: str,
    ) -> AsyncGenerator[PageRead, None]:
        done: asyncio.Future[Page] = asyncio.get_running_loop().create_future()
        done.set_result(first)
        inflight: deque[tuple[int, asyncio.Future[Page], str]] = deque([(offset, done, read_at)])
        next_offset = offset + self._limit
        repeats = RepeatGuard()
        paging: Paging | None = "offset" if first.has_more else None
        try:
            while True:
                offset, pending, read_at = inflight.popleft()
                page = await pending
                if page.has_more:
                    paging = "offset"
                if page.has_more and self._depth > 1:
                    next_offset = self._ahead(inflight, next_offset)
                if repeats.repeated(offset, page):
                    self.repeat_since = repeats.since  # what came after it was no real page
                    raise repeats.error(offset)
                yield PageRead(page, read_at, offset, offset + self._limit, None, paging)
                if not page.has_more:
                    return
                # one page at a time (depth 1): the next is asked for only when wanted, so a
                # head pass that stops at an unchanged first page costs one request
                next_offset = self._ahead(inflight, next_offset)
        finally:
            for _, t, _ in inflight:
                t.cancel()
            await asyncio.gather(*(t for _, t, _ in inflight), return_exceptions=True)

    def _ahead(
        self, inflight: deque[tuple[int, asyncio.Future[Page], str]], next_offset: int,
    ) -> int:
        """Keep `depth` pages in flight (always one), none past the cap; the next offset."""
        while len(inflight) < self._depth and (not inflight or next_offset < self._cap):
            task = asyncio.create_task(self._fetch(next_offset, None))
            inflight.append((next_offset, task, self._now()))
            next_offset += self._limit
        return next_offset
