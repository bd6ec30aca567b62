"""Walking the recordings list: page after page from a walk's offset or cursor.

Pages come as the API gives them: an answer with a `next_cursor` (the deployed dialect)
is followed cursor by cursor; without one, pages are read by offset, several ahead.
Each page read is handed to `ItemSync`, then the walk's checkpoint moves past it. A
resumed walk counts what its first run covered as seen, and starts again from the top
when the API did not understand its saved cursor.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import aclosing
from typing import Any

from botasync.api.budget import RequestBudget
from botasync.api.client import Page
from botasync.api.pages import Pager, PageRead
from botasync.envelope import iso
from botasync.errors import BadRequest, PaginationError
from botasync.sync.context import PassContext
from botasync.sync.items import ItemSync
from botasync.sync.runs import WALK_KINDS, Runs, Walk
from botasync.sync.seen import SeenIds


class FilterIgnored(Exception):
    """A `status`-filtered page held other statuses: the API ignores the filter."""


class Walker:
    """Walks one project's list for the passes; `progress` after every page."""

    def __init__(self, ctx: PassContext, *, items: ItemSync, runs: Runs) -> None:
        self._ctx = ctx
        self._items = items
        self._runs = runs
        self._device_id = ctx.cfg.sync.device_id or None
        self._end_user_id = ctx.cfg.sync.end_user_id or None

    async def walk(
        self,
        walk: Walk,
        *,
        status: str | None = None,
        depth: int = 1,
        stop_when_unchanged: bool = False,
        budgets: Sequence[RequestBudget] = (),
    ) -> bool:
        """Walk pages from the walk's offset or cursor; True when it reached the end."""
        pager = self._pager(status, depth, budgets, cap=await self._cap(status, depth))
        try:
            async with aclosing(pager.pages(walk.offset, walk.cursor)) as reads:
                async for read in reads:
                    if walk.resumed and await self._resumed(walk, read):
                        return await self.walk(walk, status=status, depth=depth,
                                               stop_when_unchanged=stop_when_unchanged,
                                               budgets=budgets)
                    all_unchanged = await self._read(walk, read, budgets, status)
                    if not read.page.has_more:
                        walk.stats.complete = status is None
                        return True
                    if stop_when_unchanged and all_unchanged:
                        walk.stats.complete = True
                        return False
        except BadRequest as e:
            if not (walk.resumed and walk.cursor is not None):
                raise
            await self._restart(walk, f"the API refused the saved cursor ({e})")
            return await self.walk(walk, status=status, depth=depth,
                                   stop_when_unchanged=stop_when_unchanged, budgets=budgets)
        except PaginationError:
            if pager.repeat_since is not None:
                walk.offset = walk.position = pager.repeat_since
                await self._runs.checkpoint(walk)
            raise
        return True  # a pager that ends does so on a last page: not reached

    async def list(
        self, offset: int, status: str | None, budgets: Sequence[RequestBudget],
        *, cursor: str | None = None, limit: int | None = None,
    ) -> Page:
        """One page of the list, under the configured device and end-user filters."""
        return await self._ctx.client.list_recordings(
            offset=offset, cursor=cursor, limit=limit or self._ctx.cfg.sync.page_size,
            status=status, budgets=budgets, device_id=self._device_id,
            end_user_id=self._end_user_id,
        )

    async def _read(
        self, walk: Walk, read: PageRead, budgets: Sequence[RequestBudget], status: str | None,
    ) -> bool:
        """Write one page and move the checkpoint past it; True when all was unchanged."""
        walk.resumed = False
        learned = self._ctx.learning.now
        if read.paging is not None and read.paging != learned.paging:
            self._ctx.log.info("paging_learned", paging=read.paging, was=learned.paging)
            await self._ctx.learning.keep(learned.paged(read.paging))
        all_unchanged = await self._items.page(walk, read.page.items, budgets, read.read_at)
        if read.paging == "cursor":
            walk.position += len(read.page.items)
            walk.cursor = read.next_cursor
        else:
            walk.offset = walk.position = read.next_offset
        await self._runs.checkpoint(walk)
        self._ctx.progress(walk)
        if status is not None and _other_status(read.page.items, status):
            raise FilterIgnored(status)
        return all_unchanged

    def _pager(
        self, status: str | None, depth: int, budgets: Sequence[RequestBudget], *, cap: int,
    ) -> Pager:
        async def fetch(offset: int, cursor: str | None) -> Page:
            return await self.list(offset, status, budgets, cursor=cursor)

        return Pager(fetch, limit=self._ctx.cfg.sync.page_size, depth=depth, cap=cap,
                     now=lambda: iso(self._ctx.clock()))

    async def _resumed(self, walk: Walk, read: PageRead) -> bool:
        """The first page of a resumed walk: True when the walk must start again instead.

        A saved cursor answered with the list's first page was not understood (cursors
        may expire; an API that changed its paging ignores them): the walk starts again
        from the top, once, never in a loop. Otherwise what the interrupted walk covered
        counts as seen: the stored recordings newer than this page. Only an estimate,
        which is safe: a recording is tombstoned only after its detail answers 404.
        """
        items = [i for i in read.page.items if isinstance(i, dict)]
        first = items[0].get("id") if items else None
        if walk.cursor is not None and first is not None and (
                first == await self._ctx.mirror.newest_live_id()):
            await self._restart(walk, "the API answered the saved cursor with the first page")
            return True
        created = [c for c in (i.get("created_at") for i in items) if isinstance(c, str)]
        if created:
            walk.seen.update(await self._ctx.mirror.live_ids_created_after(max(created)))
        return False

    async def _restart(self, walk: Walk, why: str) -> None:
        self._ctx.log.warning("walk_restarted", kind=walk.stats.kind, reason=why)
        walk.offset, walk.cursor, walk.position, walk.resumed = 0, None, 0, False
        walk.seen = SeenIds() if walk.stats.kind in WALK_KINDS else set()
        await self._runs.checkpoint(walk)

    async def _cap(self, status: str | None, depth: int) -> int:
        """Fetch ahead freely on a first sync; later, not far past the known archive's end."""
        if depth <= 1 or status is not None:
            return 1 << 62
        known = await self._ctx.mirror.count()
        return (1 << 62) if known == 0 else known


def _other_status(items: list[Any], status: str) -> bool:
    """Whether a page listed by `status` holds a recording of another status."""
    return any(isinstance(i, dict) and "status" in i and i["status"] != status for i in items)
