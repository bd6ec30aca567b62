"""Syncer: the passes that read the API and write the mirror, at the API's minimum cost.

- full / reconcile: walk every page; a stored recording not seen in a complete walk is
  asked for by id, and a 404 makes it a tombstone. Resumable from its checkpoint.
- head: walk from the top, stop at the first page that is all known and unchanged.
- hot: list each non-terminal status; a stored one missing from its list has moved on.

The passes are made of the same parts: the `walker` reads the list page by page, the
`items` decide what each recording costs and write it with its events, the `runs`
keep each pass's row and a walk's checkpoint, and `learning` what the API has shown of
its dialect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from datetime import datetime

import structlog

from botasync.api.budget import RequestBudget
from botasync.api.client import BotaClient
from botasync.api.dialect import Learned
from botasync.api.models import DOCUMENTED_NON_TERMINAL, KNOWN_STATUSES, NON_TERMINAL
from botasync.config import Config
from botasync.envelope import iso, utc_now
from botasync.errors import BadRequest
from botasync.store.base import Database
from botasync.store.sqlite import Mirror
from botasync.sync.context import PassContext
from botasync.sync.estimate import probe_total
from botasync.sync.items import ItemSync
from botasync.sync.learning import Learning
from botasync.sync.runs import BACKFILL_DONE, WALK_KINDS, PassStats, Runs, Walk
from botasync.sync.walker import FilterIgnored, Walker

# importable from here, where they were before the syncer was split
__all__ = ["BACKFILL_DONE", "WALK_KINDS", "PassStats", "Progress", "Syncer"]

log = structlog.get_logger("botasync.sync")

HOT_FULL_AT = "hot_full_at"
HOT_FULL_EVERY = 10  # ticks' worth of time between hot passes that list every status
HOT_WATCH_CAP = 10  # in-flight recordings asked for by id in one tick, when no list shows them

Progress = Callable[[PassStats, int, int | None], None]


class Syncer:
    """Runs passes; `on_commit` is called after every transaction that wrote events."""

    def __init__(
        self,
        cfg: Config,
        client: BotaClient,
        store: Database,
        *,
        on_commit: Callable[[], None] | None = None,
        on_progress: Progress | None = None,
        reconcile_budget: RequestBudget | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.mirror = Mirror(store, cfg.project)
        self.log = log.bind(project=cfg.project)
        self.on_commit = on_commit or (lambda: None)
        self.on_progress = on_progress
        self.reconcile_budget = reconcile_budget
        self.clock = clock
        self._watch_turn = 0
        self._learning = Learning(self.mirror)
        self._runs = Runs(self.mirror, clock, self.log, lambda: client.requests)
        # `on_commit` may be set after the constructor (the downloader's notify)
        ctx = PassContext(cfg, client, self.mirror, self._learning, clock, self.log,
                          self._progress)
        self._items = ItemSync(ctx, on_commit=lambda: self.on_commit())
        self._walker = Walker(ctx, items=self._items, runs=self._runs)
        # one walk at a time: a reconcile due while the first walk (the tick's, during the
        # backfill) still runs would resume that very walk beside it, and the two would
        # each count the other's changes as the backfill's (events never delivered)
        self._walking = asyncio.Lock()

    @property
    def learned(self) -> Learned:
        """What the passes have learned of the API's dialect so far."""
        return self._learning.now

    # -- passes -------------------------------------------------------------------------

    async def full(self, *, kind: str = "full", resume: bool = True) -> PassStats:
        """Walk every page, then confirm what was not seen; resumes an interrupted walk."""
        budgets = [self.reconcile_budget] if kind == "reconcile" and self.reconcile_budget else []
        async with self._walking:
            walk = await self._begin(kind, resume=resume)
            if self.on_progress:
                walk.total = await self._estimate_total()
            return await self._runs.run(walk, self._full_body(walk, budgets))

    async def reconcile(self) -> list[PassStats]:
        """The daemon's reconcile walk; none while another walk of this project runs (the
        first one, which the ticks make): it would walk the same pages again, at once."""
        if self._walking.locked():
            self.log.info("reconcile_skipped", reason="a walk of this project is running")
            return []
        return [await self.full(kind="reconcile")]

    async def head(self, seen: set[str] | None = None) -> PassStats:
        """New recordings: walk from the top until a page is all known and unchanged.

        `seen`, if given, receives the ids the pass saw (the tick's hot pass uses it).
        """
        if not await self._runs.backfill_done():
            async with self._walking:
                walk = await self._begin("full", resume=True)
                stats = await self._runs.run(walk, self._full_body(walk, ()))
        else:
            walk = await self._begin("head", resume=False)
            stats = await self._runs.run(
                walk, self._walker.walk(walk, stop_when_unchanged=True, depth=1))
        if seen is not None and isinstance(walk.seen, set):
            seen |= walk.seen
        return stats

    async def hot(self, covered: set[str] | None = None) -> PassStats:
        """Recordings in flight: list each non-terminal status, ask for those that left.

        With `covered` (what the head pass just saw), a status whose stored recordings
        were all covered is not listed: in-flight recordings are usually the newest, so
        a tick often costs one request instead of four. Every `HOT_FULL_EVERY` ticks'
        worth of time, all three lists are walked anyway, to catch a finished recording
        that went back into processing deep in the archive.
        """
        walk = await self._begin("hot", resume=False)
        if covered is not None and await self._hot_full_due():
            covered = None
        return await self._runs.run(walk, self._hot_body(walk, covered))

    async def quick(self) -> list[PassStats]:
        """One daemon tick: the head pass (new recordings) then the hot pass.

        The tick has the store to itself (`Store.foreground`): the transcript worker
        writes between ticks, so its writes never delay the tick's recording events. Not
        while the tick is still the first walk (the backfill, minutes long): the worker
        goes on beside that.
        """
        seen: set[str] = set()
        backfilled = await self._runs.backfill_done()
        if not backfilled and self._walking.locked():
            return []  # the first walk goes on in a reconcile: this tick would only wait
        async with self.mirror.store.foreground() if backfilled else nullcontext():
            head = await self.head(seen)
            return [head, await self.hot(covered=seen)]

    # -- pass bodies --------------------------------------------------------------------

    async def _begin(self, kind: str, *, resume: bool) -> Walk:
        """A pass starts from what the database knows of the API, then its run row."""
        await self._learning.load()
        return await self._runs.begin(kind, resume=resume)

    async def _full_body(self, walk: Walk, budgets: Sequence[RequestBudget]) -> None:
        complete = await self._walker.walk(walk, depth=self.cfg.api.concurrency,
                                           budgets=budgets)
        if not complete:
            return
        missing = await self.mirror.live_ids_not_in(walk.seen)
        if missing:
            self.log.info("confirming_unseen", kind=walk.stats.kind, count=len(missing))
        for i in range(0, len(missing), self.cfg.sync.page_size):
            await self._items.confirm(walk, missing[i : i + self.cfg.sync.page_size], budgets)
        await self._runs.mark_backfill_done(walk)
        # a complete walk listed every in-flight recording too: as good as a full hot pass
        await self.mirror.set_state(HOT_FULL_AT, iso(self.clock()))

    async def _hot_body(self, walk: Walk, covered: set[str] | None) -> None:
        if covered is None:
            await self.mirror.set_state(HOT_FULL_AT, iso(self.clock()))
        watch: list[str] = []  # in flight, but no list shows them: asked for by id
        for status in NON_TERMINAL:
            stored = await self.mirror.live_ids(status=status)
            if status not in DOCUMENTED_NON_TERMINAL and not stored:
                continue  # never sent as a filter before the API has shown it
            if covered is not None and covered.issuperset(stored):
                continue
            if not self._filter_usable(status):
                watch += [i for i in stored if covered is None or i not in covered]
                continue
            walk.offset, walk.cursor, walk.seen = 0, None, set()  # what this list shows
            listed = await self._hot_list(walk, status)
            if listed is None:
                watch += [i for i in stored if i not in walk.seen]
                continue
            if not listed:
                return
            moved = [i for i in stored if i not in walk.seen]
            if moved:
                await self._items.confirm(walk, moved, ())
        watch += [i for i in await self.mirror.live_ids_in_unknown_status(KNOWN_STATUSES)
                  if covered is None or i not in covered]
        if watch:
            await self._items.confirm(walk, self._watch_turns(sorted(set(watch))), ())
        walk.stats.complete = True

    async def _hot_list(self, walk: Walk, status: str) -> bool | None:
        """Walk one status's list: True at its end, False if stopped, None if unusable.

        A filter the API refuses (400) or ignores is remembered; the in-flight
        recordings of that status are then asked for by id instead.
        """
        learning = self._learning
        try:
            listed = await self._walker.walk(walk, status=status, depth=1)
            if learning.now.filter_ignored_at is not None:
                self.log.info("status_filter_works", status=status)
                await learning.keep(learning.now.filter_works())
            return listed
        except BadRequest as e:
            self.log.warning("status_filter_refused", status=status, error=str(e))
            await learning.keep(learning.now.refused(status))
        except FilterIgnored:
            self.log.warning("status_filter_ignored", status=status,
                             note="a status-filtered page held other statuses; in-flight "
                                  "recordings are asked for by id until the filter works")
            await learning.keep(learning.now.filter_ignored(iso(self.clock())))
        return None

    def _filter_usable(self, status: str) -> bool:
        return self._learning.now.filter_usable(status, self.clock(),
                                                self.cfg.sync.reconcile_every_s)

    def _watch_turns(self, ids: list[str]) -> list[str]:
        """At most HOT_WATCH_CAP of `ids` per tick, taking turns so each is asked in time."""
        if len(ids) <= HOT_WATCH_CAP:
            return ids
        start = self._watch_turn % len(ids)
        self._watch_turn += HOT_WATCH_CAP
        return (ids[start:] + ids[:start])[:HOT_WATCH_CAP]

    async def _hot_full_due(self) -> bool:
        last = await self.mirror.get_state(HOT_FULL_AT)
        if last is None:
            return True
        age = (self.clock() - datetime.fromisoformat(last)).total_seconds()
        return age >= HOT_FULL_EVERY * self.cfg.sync.interval_s

    # -- progress -----------------------------------------------------------------------

    def _progress(self, walk: Walk) -> None:
        if self.on_progress:
            self.on_progress(walk.stats, walk.position, walk.total)

    async def _estimate_total(self) -> int | None:
        """How many recordings a walk will see: the mirror's count, a probe (see
        `estimate`), or None. Only with a progress bar."""
        known = await self.mirror.count()
        if known and await self._runs.backfill_done():
            return known  # a resumed first sync has a part of the archive only
        if self._learning.now.paging == "cursor":
            return None
        return await probe_total(lambda offset: self._walker.list(offset, None, (), limit=1),
                                 self.cfg.sync.page_size)
