"""Syncer: the passes that read the API and write the mirror, at the API's minimum cost.

- full / reconcile: walk every page; a stored recording not seen in a complete walk is
  asked for by id, and a 404 makes it a tombstone. Resumable from its checkpoint.
- head: walk from the top, stop at the first page that is all known and unchanged.
- hot: list each non-terminal status; a stored one missing from its list has moved on.

Pages come as the API gives them: an answer with a `next_cursor` (the deployed dialect)
is followed cursor by cursor; without one, pages are read by offset, several ahead.

Per item: unchanged fingerprint -> nothing; changed -> detail; never stored -> the list
item itself, unless a detail has shown that details carry fields list items lack
(`[sync] detail` changes this).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import structlog

from botasync.api import dialect
from botasync.api.budget import RequestBudget
from botasync.api.client import BotaClient, Page
from botasync.api.models import (
    DOCUMENTED_NON_TERMINAL,
    KNOWN_STATUSES,
    NON_TERMINAL,
    InvalidItem,
    Recording,
    parse_recording,
)
from botasync.api.pages import Pager, PageRead
from botasync.config import Config
from botasync.envelope import EventFactory, EventIds, iso, utc_now
from botasync.errors import BadRequest, NotFound, PaginationError
from botasync.store.base import Database
from botasync.store.sqlite import Mirror, PageWrite, Upsert
from botasync.sync.diff import deleted, diff
from botasync.sync.fingerprint import VOLATILE_KEYS, fingerprint
from botasync.sync.seen import SeenIds

log = structlog.get_logger("botasync.sync")

BACKFILL_DONE = "backfill_done"
HOT_FULL_AT = "hot_full_at"
HOT_FULL_EVERY = 10  # ticks' worth of time between hot passes that list every status
WALK_KINDS = ("full", "reconcile")
HOT_WATCH_CAP = 10  # in-flight recordings asked for by id in one tick, when no list shows them


@dataclass
class PassStats:
    """What one pass did; written to `sync_runs` and logged as one line."""

    kind: str
    pages: int = 0
    requests: int = 0
    seen: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: int = 0
    deleted: int = 0
    events: int = 0
    seconds: float = 0.0
    complete: bool = False
    error: str | None = None

    def counts(self) -> dict[str, int]:
        keys = ("pages", "requests", "seen", "created", "updated", "unchanged", "invalid",
                "deleted", "events")
        return {k: int(getattr(self, k)) for k in keys}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _FilterIgnored(Exception):
    """A `status`-filtered page held other statuses: the API ignores the filter."""


@dataclass
class _Walk:
    """The state of one walk: what it has seen, where it is.

    By offset, `offset` is the next page's offset; by cursor, `cursor` is the next page's
    cursor. `position` counts the items walked (the offset, by offset): it is the
    checkpoint's `position` and what progress shows.
    """

    stats: PassStats
    run_id: int
    offset: int = 0
    cursor: str | None = None
    position: int = 0
    resumed: bool = False
    seen: set[str] | SeenIds = field(default_factory=set)  # SeenIds for full walks
    backfill: bool = False
    total: int | None = None  # estimated recordings, for progress only


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
        self.ids = EventIds()
        self._invalid_seen: set[str] = set()
        self._unknown_statuses: set[str] = set()
        self._watch_turn = 0
        self.learned = dialect.Learned()
        self.device_id = cfg.sync.device_id or None
        self.end_user_id = cfg.sync.end_user_id or None
        # one walk at a time: a reconcile due while the first walk (the tick's, during the
        # backfill) still runs would resume that very walk beside it, and the two would
        # each count the other's changes as the backfill's (events never delivered)
        self._walking = asyncio.Lock()

    # -- passes -------------------------------------------------------------------------

    async def full(self, *, kind: str = "full", resume: bool = True) -> PassStats:
        """Walk every page, then confirm what was not seen; resumes an interrupted walk."""
        budgets = [self.reconcile_budget] if kind == "reconcile" and self.reconcile_budget else []
        async with self._walking:
            walk = await self._begin(kind, resume=resume)
            if self.on_progress:
                walk.total = await self._estimate_total()
            return await self._run(walk, self._full_body(walk, budgets))

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
        if not await self._backfill_done():
            async with self._walking:
                walk = await self._begin("full", resume=True)
                stats = await self._run(walk, self._full_body(walk, ()))
        else:
            walk = await self._begin("head", resume=False)
            stats = await self._run(walk, self._walk(walk, stop_when_unchanged=True, depth=1))
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
        return await self._run(walk, self._hot_body(walk, covered))

    async def quick(self) -> list[PassStats]:
        """One daemon tick: the head pass (new recordings) then the hot pass.

        The tick has the store to itself (`Store.foreground`): the transcript worker
        writes between ticks, so its writes never delay the tick's recording events. Not
        while the tick is still the first walk (the backfill, minutes long): the worker
        goes on beside that.
        """
        seen: set[str] = set()
        backfilled = await self._backfill_done()
        if not backfilled and self._walking.locked():
            return []  # the first walk goes on in a reconcile: this tick would only wait
        async with self.mirror.store.foreground() if backfilled else nullcontext():
            head = await self.head(seen)
            return [head, await self.hot(covered=seen)]

    # -- pass bodies --------------------------------------------------------------------

    async def _full_body(self, walk: _Walk, budgets: Sequence[RequestBudget]) -> None:
        complete = await self._walk(walk, depth=self.cfg.api.concurrency, budgets=budgets)
        if not complete:
            return
        missing = await self.mirror.live_ids_not_in(walk.seen)
        if missing:
            self.log.info("confirming_unseen", kind=walk.stats.kind, count=len(missing))
        for i in range(0, len(missing), self.cfg.sync.page_size):
            await self._confirm(walk, missing[i : i + self.cfg.sync.page_size], budgets)
        await self._mark_backfill_done(walk)
        # a complete walk listed every in-flight recording too: as good as a full hot pass
        await self.mirror.set_state(HOT_FULL_AT, iso(self.clock()))

    async def _hot_body(self, walk: _Walk, covered: set[str] | None) -> None:
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
                await self._confirm(walk, moved, ())
        watch += [i for i in await self.mirror.live_ids_in_unknown_status(KNOWN_STATUSES)
                  if covered is None or i not in covered]
        if watch:
            await self._confirm(walk, self._watch_turns(sorted(set(watch))), ())
        walk.stats.complete = True

    async def _hot_list(self, walk: _Walk, status: str) -> bool | None:
        """Walk one status's list: True at its end, False if stopped, None if unusable.

        A filter the API refuses (400) or ignores is remembered; the in-flight
        recordings of that status are then asked for by id instead.
        """
        try:
            listed = await self._walk(walk, status=status, depth=1)
            if self.learned.filter_ignored_at is not None:
                self.log.info("status_filter_works", status=status)
                await self._learn(self.learned.filter_works())
            return listed
        except BadRequest as e:
            self.log.warning("status_filter_refused", status=status, error=str(e))
            await self._learn(self.learned.refused(status))
        except _FilterIgnored:
            self.log.warning("status_filter_ignored", status=status,
                        note="a status-filtered page held other statuses; in-flight "
                             "recordings are asked for by id until the filter works")
            await self._learn(self.learned.filter_ignored(iso(self.clock())))
        return None

    def _filter_usable(self, status: str) -> bool:
        return self.learned.filter_usable(status, self.clock(), self.cfg.sync.reconcile_every_s)

    def _watch_turns(self, ids: list[str]) -> list[str]:
        """At most HOT_WATCH_CAP of `ids` per tick, taking turns so each is asked in time."""
        if len(ids) <= HOT_WATCH_CAP:
            return ids
        start = self._watch_turn % len(ids)
        self._watch_turn += HOT_WATCH_CAP
        return (ids[start:] + ids[:start])[:HOT_WATCH_CAP]

    # -- the walk -----------------------------------------------------------------------

    async def _walk(
        self,
        walk: _Walk,
        *,
        status: str | None = None,
        depth: int = 1,
        stop_when_unchanged: bool = False,
        budgets: Sequence[RequestBudget] = (),
    ) -> bool:
        """Walk pages from the walk's offset or cursor; True when it reached the end."""
        pager = self._pager(walk, status, depth, budgets, cap=await self._cap(status, depth))
        try:
            async with aclosing(pager.pages(walk.offset, walk.cursor)) as reads:
                async for read in reads:
                    if walk.resumed and await self._resumed(walk, read):
                        return await self._walk(walk, status=status, depth=depth,
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
            return await self._walk(walk, status=status, depth=depth,
                                    stop_when_unchanged=stop_when_unchanged, budgets=budgets)
        except PaginationError:
            if pager.repeat_since is not None:
                walk.offset = walk.position = pager.repeat_since
                await self._checkpoint(walk)
            raise
        return True  # a pager that ends does so on a last page: not reached

    async def _read(
        self, walk: _Walk, read: PageRead, budgets: Sequence[RequestBudget], status: str | None,
    ) -> bool:
        """Write one page and move the checkpoint past it; True when all was unchanged."""
        walk.resumed = False
        if read.paging is not None and read.paging != self.learned.paging:
            self.log.info("paging_learned", paging=read.paging, was=self.learned.paging)
            await self._learn(self.learned.paged(read.paging))
        all_unchanged = await self._page(walk, read.page.items, budgets, read.read_at)
        if read.paging == "cursor":
            walk.position += len(read.page.items)
            walk.cursor = read.next_cursor
        else:
            walk.offset = walk.position = read.next_offset
        await self._checkpoint(walk)
        self._progress(walk)
        if status is not None and _other_status(read.page.items, status):
            raise _FilterIgnored(status)
        return all_unchanged

    def _pager(
        self, walk: _Walk, status: str | None, depth: int, budgets: Sequence[RequestBudget],
        *, cap: int,
    ) -> Pager:
        async def fetch(offset: int, cursor: str | None) -> Page:
            return await self._list(offset, status, budgets, cursor=cursor)

        return Pager(fetch, limit=self.cfg.sync.page_size, depth=depth, cap=cap,
                     now=lambda: iso(self.clock()))

    async def _resumed(self, walk: _Walk, read: PageRead) -> bool:
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
                first == await self.mirror.newest_live_id()):
            await self._restart(walk, "the API answered the saved cursor with the first page")
            return True
        created = [c for c in (i.get("created_at") for i in items) if isinstance(c, str)]
        if created:
            walk.seen.update(await self.mirror.live_ids_created_after(max(created)))
        return False

    async def _restart(self, walk: _Walk, why: str) -> None:
        self.log.warning("walk_restarted", kind=walk.stats.kind, reason=why)
        walk.offset, walk.cursor, walk.position, walk.resumed = 0, None, 0, False
        walk.seen = SeenIds() if walk.stats.kind in WALK_KINDS else set()
        await self._checkpoint(walk)

    async def _cap(self, status: str | None, depth: int) -> int:
        """Fetch ahead freely on a first sync; later, not far past the known archive's end."""
        if depth <= 1 or status is not None:
            return 1 << 62
        known = await self.mirror.count()
        return (1 << 62) if known == 0 else known

    async def _list(
        self, offset: int, status: str | None, budgets: Sequence[RequestBudget],
        *, cursor: str | None = None, limit: int | None = None,
    ) -> Page:
        return await self.client.list_recordings(
            offset=offset, cursor=cursor, limit=limit or self.cfg.sync.page_size,
            status=status, budgets=budgets, device_id=self.device_id,
            end_user_id=self.end_user_id,
        )

    async def _learn(self, learned: dialect.Learned) -> None:
        """Keep what was learned of the API, in memory and in the database."""
        if learned != self.learned:
            self.learned = learned
            await self.mirror.set_state(dialect.STATE_KEY, learned.to_state())

    # -- one page -----------------------------------------------------------------------

    async def _page(
        self, walk: _Walk, items: list[Any], budgets: Sequence[RequestBudget], read_at: str
    ) -> bool:
        """Decide, fetch, diff and write one page; True when every item was unchanged."""
        stats = walk.stats
        stats.pages += 1
        valid = self._validate(walk, items)
        known = await self.mirror.fingerprints([r.id for _, r, _ in valid])
        store_now: list[tuple[dict[str, Any], Recording, str]] = []
        fetch: list[tuple[str, str]] = []  # (id, list fingerprint)
        listed: dict[str, dict[str, Any]] = {}  # list items whose detail is fetched
        for item, rec, fp in valid:
            stored = known.get(rec.id)
            if stored is not None and stored[0] == fp and not stored[1]:
                stats.unchanged += 1
            elif self._wants_detail(item, stored is not None):
                fetch.append((rec.id, fp))
                listed[rec.id] = item
            else:
                store_now.append((item, rec, fp))
        if not store_now and not fetch:
            self._progress(walk)
            return True  # an invalid item cannot be mirrored: it must not keep a walk going
        fetched, gone = await self._details(walk, fetch, budgets)
        await self._compare(listed, fetched)
        await self._write(walk, store_now + fetched, gone, known, read_at)
        return False

    async def _compare(
        self, listed: dict[str, dict[str, Any]],
        fetched: list[tuple[dict[str, Any], Recording, str]],
    ) -> None:
        """Learn from details fetched anyway whether they carry more than list items."""
        learned = self.learned
        for raw, rec, _ in fetched:
            item = listed.get(rec.id)
            if item is not None:
                learned = learned.compared(item, raw, VOLATILE_KEYS)
        if learned.detail_keys != self.learned.detail_keys:
            self.log.info("details_compared", detail_only_fields=sorted(learned.detail_keys))
        await self._learn(learned)

    def _validate(
        self, walk: _Walk, items: list[Any]
    ) -> list[tuple[dict[str, Any], Recording, str]]:
        out: dict[str, tuple[dict[str, Any], Recording, str]] = {}
        for item in items:
            try:
                rec = parse_recording(item)
            except InvalidItem as e:
                walk.stats.invalid += 1
                if e.item_id:
                    walk.seen.add(e.item_id)
                self._log_invalid(walk, e, item)
                continue
            walk.seen.add(rec.id)
            if not rec.known_status:
                self._log_unknown_status(rec)
            out[rec.id] = (item, rec, fingerprint(item))  # a duplicate id in a page: last wins
        walk.stats.seen += len(out)
        return list(out.values())

    def _log_invalid(self, walk: _Walk, err: InvalidItem, item: Any) -> None:
        """Warn once per distinct bad item; every tick would otherwise repeat the line."""
        key = f"{err.item_id}:{err.reason}:{fingerprint(item)}"
        level = log.debug if key in self._invalid_seen else log.warning
        self._invalid_seen.add(key)
        level("invalid_item", kind=walk.stats.kind, id=err.item_id, reason=err.reason)

    def _log_unknown_status(self, rec: Recording) -> None:
        """Once per value: a status botasync does not know is stored as sent, and watched."""
        if rec.status not in self._unknown_statuses:
            self._unknown_statuses.add(rec.status)
            self.log.warning("unknown_status", status=rec.status, id=rec.id,
                        note="stored as sent and watched like an in-flight status")

    def _wants_detail(self, item: dict[str, Any], stored: bool) -> bool:
        """Changed items get their detail (the authoritative read); never-seen items only
        when details have been seen to carry more than list items."""
        policy = self.cfg.sync.detail
        if policy == "never":
            return False
        if stored or policy == "always":
            return True
        return self.learned.wants_detail(item)

    async def _details(
        self, walk: _Walk, wanted: list[tuple[str, str]], budgets: Sequence[RequestBudget]
    ) -> tuple[list[tuple[dict[str, Any], Recording, str]], list[str]]:
        """Fetch details concurrently (the client bounds it); 404s come back as `gone`."""
        results = await asyncio.gather(
            *(self._detail(rid, budgets) for rid, _ in wanted), return_exceptions=True
        )
        fetched: list[tuple[dict[str, Any], Recording, str]] = []
        gone: list[str] = []
        for (rid, fp), res in zip(wanted, results, strict=True):
            if isinstance(res, NotFound):
                gone.append(rid)
            elif isinstance(res, InvalidItem):
                walk.stats.invalid += 1
                self._log_invalid(walk, res, rid)
            elif isinstance(res, BaseException):
                raise res
            else:
                fetched.append((res[0], res[1], fp or fingerprint(res[0])))
        return fetched, gone

    async def _detail(
        self, rid: str, budgets: Sequence[RequestBudget]
    ) -> tuple[dict[str, Any], Recording]:
        raw = await self.client.get_recording(rid, budgets=budgets)
        rec = parse_recording(raw)
        if rec.id != rid:
            raise InvalidItem(rid, f"detail answered with another id ({rec.id})")
        return raw, rec

    async def _confirm(
        self, walk: _Walk, ids: Sequence[str], budgets: Sequence[RequestBudget]
    ) -> None:
        """Ask by id for stored recordings a list did not show: 404 = deleted."""
        read_at = iso(self.clock())
        known = await self.mirror.fingerprints(ids)
        fetched, gone = await self._details(walk, [(i, "") for i in ids], budgets)
        changed = [f for f in fetched if known.get(f[1].id, (None,))[0] != f[2]]
        walk.stats.unchanged += len(fetched) - len(changed)
        for _, rec, _ in fetched:
            walk.seen.add(rec.id)
        await self._write(walk, changed, gone, known, read_at)

    async def _write(
        self,
        walk: _Walk,
        items: list[tuple[dict[str, Any], Recording, str]],
        gone: list[str],
        known: dict[str, tuple[str | None, bool]],
        read_at: str,
    ) -> None:
        """Diff against the stored rows and write the page with its events in one commit.

        A recording another pass wrote after this page was read (`read_at`) is left as
        stored: the page's copy may be older, and writing it would turn the row and its
        events back (completed -> processing). A change it skips is seen by the next pass.
        """
        now_dt = self.clock()
        make = EventFactory(lambda: self.ids.new(now_dt), iso(now_dt), self.cfg.project)
        # every item's row is read inside the write, the ones new to this page too: another
        # pass (a tick beside a reconcile) may have stored it since, and must not be repeated
        ids = [r.id for _, r, _ in items] + [g for g in gone if g in known]
        counts = {"created": 0, "updated": 0, "deleted": 0}

        def build(old: dict[str, dict[str, Any]], newer: set[str]) -> PageWrite:
            page = PageWrite(backfill=walk.backfill)
            for raw, rec, fp in items:
                if rec.id in newer:
                    continue
                before = old.get(rec.id)
                is_new = rec.id not in known and before is None
                page.upserts.append(Upsert(rec, raw, fp, is_new=is_new))
                page.events += diff(before, raw, make, backfill=walk.backfill)
                counts["created" if before is None else "updated"] += 1
            for rid in gone:
                if rid in old:
                    page.tombstones.append(rid)
                    page.events.append(deleted(old[rid], make))
                    counts["deleted"] += 1
            return page

        page = await self.mirror.apply(ids, build, iso(now_dt), read_at)
        walk.stats.created += counts["created"]
        walk.stats.updated += counts["updated"]
        walk.stats.deleted += counts["deleted"]
        walk.stats.events += len(page.events)
        if page.events:
            self.on_commit()
        self._progress(walk)

    # -- bookkeeping --------------------------------------------------------------------

    async def _begin(self, kind: str, *, resume: bool) -> _Walk:
        now = iso(self.clock())
        self.learned = dialect.Learned.from_state(await self.mirror.get_state(dialect.STATE_KEY))
        backfill = not await self._backfill_done()
        interrupted = await self.mirror.interrupted_walk(WALK_KINDS) if resume else None
        position, cursor = 0, None
        if interrupted and kind in WALK_KINDS:
            old_id, position, cursor = interrupted
            await self.mirror.supersede_run(old_id)
            self.log.info("walk_resumed", kind=kind, position=position,
                          by_cursor=cursor is not None)
        walk = _Walk(PassStats(kind), 0, backfill=backfill)
        if kind in WALK_KINDS:
            walk.seen = SeenIds()
            walk.position, walk.cursor, walk.resumed = position, cursor, position > 0
            walk.offset = position if cursor is None else 0
        walk.run_id = await self.mirror.start_run(
            kind, now, walk.position if kind in WALK_KINDS else None, walk.cursor)
        return walk

    async def _run(self, walk: _Walk, body: Any) -> PassStats:
        started, requests_before = time.monotonic(), self.client.requests
        stats = walk.stats
        try:
            await body
        except asyncio.CancelledError:
            stats.error = "cancelled"
            raise
        except BaseException as e:
            stats.error = str(e) or type(e).__name__
            raise
        finally:
            stats.requests = self.client.requests - requests_before
            stats.seconds = round(time.monotonic() - started, 3)
            await self._finish(walk)
        return stats

    async def _finish(self, walk: _Walk) -> None:
        s = walk.stats
        fields: dict[str, Any] = {
            **s.counts(), "complete": int(s.complete), "error": s.error,
            "ended_at": iso(self.clock()),
        }
        if s.complete or s.kind not in WALK_KINDS:
            fields["position"] = fields["cursor"] = None
        try:
            await asyncio.shield(self.mirror.update_run(walk.run_id, fields))
        except Exception as e:  # the pass's own error matters more than its log row
            self.log.warning("run_log_failed", error=str(e))
        if s.error is None:  # a failed pass is reported once, by whoever ran it
            self.log.info("pass_done", **{k: v for k, v in s.as_dict().items() if v is not None})

    async def _checkpoint(self, walk: _Walk) -> None:
        if walk.stats.kind in WALK_KINDS:
            fields = {**walk.stats.counts(), "position": walk.position, "cursor": walk.cursor}
            await self.mirror.update_run(walk.run_id, fields)

    async def _hot_full_due(self) -> bool:
        last = await self.mirror.get_state(HOT_FULL_AT)
        if last is None:
            return True
        age = (self.clock() - datetime.fromisoformat(last)).total_seconds()
        return age >= HOT_FULL_EVERY * self.cfg.sync.interval_s

    async def _backfill_done(self) -> bool:
        return await self.mirror.get_state(BACKFILL_DONE) is not None

    async def _mark_backfill_done(self, walk: _Walk) -> None:
        if walk.backfill:
            await self.mirror.set_state(BACKFILL_DONE, iso(self.clock()))

    def _progress(self, walk: _Walk) -> None:
        if self.on_progress:
            self.on_progress(walk.stats, walk.position, walk.total)

    async def _estimate_total(self) -> int | None:
        """How many recordings a walk will see: the mirror's count, a cheap probe, or None.

        On a first sync by offset the probe doubles an offset until a page comes back
        empty, then bisects to the nearest page: about 2 log2(N / page) one-item requests
        (~20 for 100,000), against the ~1,000 of the walk itself. An API that pages by
        cursor has no offset to probe: the total stays unknown (None) rather than guessed.
        Only with a progress bar.
        """
        known = await self.mirror.count()
        if known and await self._backfill_done():
            return known  # a resumed first sync has a part of the archive only
        if self.learned.paging == "cursor":
            return None
        size = self.cfg.sync.page_size
        first = await self._list(0, None, (), limit=1)
        if first.next_cursor is not None:
            return None
        if not first.items:
            return 0
        top = first.items[0]

        async def exists(offset: int) -> bool | None:
            """Whether an item is there; None when the API answers the first item again."""
            page = await self._list(offset, None, (), limit=1)
            if page.items and page.items[0] == top:
                return None  # offset ignored: no total can be found this way
            return bool(page.items)

        lo, hi = 0, size
        while (found := await exists(hi)) is True:
            lo, hi = hi, hi * 2
        if found is None:
            return None
        while hi - lo > size:
            mid = (lo + hi) // 2
            found = await exists(mid)
            if found is None:
                return None
            lo, hi = (mid, hi) if found else (lo, mid)
        return hi


def _other_status(items: list[Any], status: str) -> bool:
    """Whether a page listed by `status` holds a recording of another status."""
    return any(isinstance(i, dict) and "status" in i and i["status"] != status for i in items)
