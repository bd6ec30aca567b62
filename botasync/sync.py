"""Syncer: the passes that read the API and write the mirror, at the API's minimum cost.

- full / reconcile: walk every page; a stored recording not seen in a complete walk is
  asked for by id, and a 404 makes it a tombstone. Resumable from its checkpoint.
- head: walk from offset 0, stop at the first page that is all known and unchanged.
- hot: list each non-terminal status; a stored one missing from its list has moved on.

Per item: unchanged fingerprint -> nothing; changed -> detail; never stored -> the list
item itself when it carries every documented field (`[sync] detail` changes this).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import structlog

from botasync.budget import RequestBudget
from botasync.client import BotaClient, Page
from botasync.config import Config
from botasync.diff import EventFactory, deleted, diff
from botasync.errors import ApiError, NotFound
from botasync.events import EventIds, iso, utc_now
from botasync.fingerprint import fingerprint
from botasync.models import NON_TERMINAL, InvalidItem, Recording, is_complete, parse_recording
from botasync.seen import SeenIds
from botasync.store import Mirror, PageWrite, Store, Upsert

log = structlog.get_logger("botasync.sync")

BACKFILL_DONE = "backfill_done"
HOT_FULL_AT = "hot_full_at"
HOT_FULL_EVERY = 10  # ticks' worth of time between hot passes that list every status
WALK_KINDS = ("full", "reconcile")
REPEAT_LIMIT = 5  # identical full pages in a row that stop a walk (see RepeatGuard)


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

    def error(self, offset: int) -> ApiError:
        return ApiError(
            f"GET /recordings returned the same {len(self._last)} items for {self._count} "
            f"pages in a row (offsets {self.since} to {offset}); the API seems to ignore "
            "`offset`, so this walk stops here"
        )


@dataclass
class _Walk:
    """The state of one walk: what it has seen, where it is."""

    stats: PassStats
    run_id: int
    offset: int
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
        store: Store,
        *,
        on_commit: Callable[[], None] | None = None,
        on_progress: Progress | None = None,
        reconcile_budget: RequestBudget | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.mirror = Mirror(store)
        self.on_commit = on_commit or (lambda: None)
        self.on_progress = on_progress
        self.reconcile_budget = reconcile_budget
        self.clock = clock
        self.ids = EventIds()
        self._invalid_seen: set[str] = set()
        self.device_id = cfg.sync.device_id or None
        self.end_user_id = cfg.sync.end_user_id or None

    # -- passes -------------------------------------------------------------------------

    async def full(self, *, kind: str = "full", resume: bool = True) -> PassStats:
        """Walk every page, then confirm what was not seen; resumes an interrupted walk."""
        budgets = [self.reconcile_budget] if kind == "reconcile" and self.reconcile_budget else []
        walk = await self._begin(kind, resume=resume)
        if self.on_progress:
            walk.total = await self._estimate_total()
        return await self._run(walk, self._full_body(walk, budgets))

    async def head(self, seen: set[str] | None = None) -> PassStats:
        """New recordings: walk from the top until a page is all known and unchanged.

        `seen`, if given, receives the ids the pass saw (the tick's hot pass uses it).
        """
        if not await self._backfill_done():
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
        """One daemon tick: the head pass (new recordings) then the hot pass."""
        seen: set[str] = set()
        head = await self.head(seen)
        return [head, await self.hot(covered=seen)]

    # -- pass bodies --------------------------------------------------------------------

    async def _full_body(self, walk: _Walk, budgets: Sequence[RequestBudget]) -> None:
        complete = await self._walk(walk, depth=self.cfg.api.concurrency, budgets=budgets)
        if not complete:
            return
        missing = await self.mirror.live_ids_not_in(walk.seen)
        if missing:
            log.info("confirming_unseen", kind=walk.stats.kind, count=len(missing))
        for i in range(0, len(missing), self.cfg.sync.page_size):
            await self._confirm(walk, missing[i : i + self.cfg.sync.page_size], budgets)
        await self._mark_backfill_done(walk)
        # a complete walk listed every in-flight recording too: as good as a full hot pass
        await self.mirror.set_state(HOT_FULL_AT, iso(self.clock()))

    async def _hot_body(self, walk: _Walk, covered: set[str] | None) -> None:
        if covered is None:
            await self.mirror.set_state(HOT_FULL_AT, iso(self.clock()))
        for status in NON_TERMINAL:
            stored = await self.mirror.live_ids(status=status)
            if covered is not None and covered.issuperset(stored):
                continue
            walk.offset, walk.seen = 0, set()  # what this status's list shows
            if not await self._walk(walk, status=status, depth=1):
                return
            moved = [i for i in stored if i not in walk.seen]
            if moved:
                await self._confirm(walk, moved, ())
        walk.stats.complete = True

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
        """Walk pages from `walk.offset`, `depth` fetched ahead; True when it reached the end."""
        limit = self.cfg.sync.page_size
        cap = await self._speculation_cap(walk, status, depth)
        inflight: deque[tuple[int, asyncio.Task[Page], str]] = deque()
        next_offset = walk.offset
        ahead = 1  # one page first: a rejected key or an empty archive costs one request
        repeats = RepeatGuard()
        try:
            while True:
                while len(inflight) < ahead and (not inflight or next_offset < cap):
                    task = asyncio.create_task(self._list(next_offset, status, budgets))
                    inflight.append((next_offset, task, iso(self.clock())))
                    next_offset += limit
                offset, task, read_at = inflight.popleft()
                page = await task
                ahead = depth
                if repeats.repeated(offset, page):
                    walk.offset = repeats.since  # what came after it was no real page
                    await self._checkpoint(walk)
                    raise repeats.error(offset)
                all_unchanged = await self._page(walk, page.items, budgets, read_at)
                walk.offset = offset + limit
                await self._checkpoint(walk)
                if not page.has_more:
                    walk.stats.complete = status is None
                    return True
                if stop_when_unchanged and all_unchanged:
                    walk.stats.complete = True
                    return False
        finally:
            for _, t, _ in inflight:
                t.cancel()
            await asyncio.gather(*(t for _, t, _ in inflight), return_exceptions=True)

    async def _speculation_cap(self, walk: _Walk, status: str | None, depth: int) -> int:
        """Fetch ahead freely on a first sync; later, not far past the known archive's end."""
        if depth <= 1 or status is not None:
            return 1 << 62
        known = await self.mirror.count()
        return (1 << 62) if known == 0 else known

    async def _list(
        self, offset: int, status: str | None, budgets: Sequence[RequestBudget]
    ) -> Page:
        return await self.client.list_recordings(
            offset=offset, limit=self.cfg.sync.page_size, status=status, budgets=budgets,
            device_id=self.device_id, end_user_id=self.end_user_id,
        )

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
        for item, rec, fp in valid:
            stored = known.get(rec.id)
            if stored is not None and stored[0] == fp and not stored[1]:
                stats.unchanged += 1
            elif self._wants_detail(item, stored is not None):
                fetch.append((rec.id, fp))
            else:
                store_now.append((item, rec, fp))
        if not store_now and not fetch:
            self._progress(walk)
            return True  # an invalid item cannot be mirrored: it must not keep a walk going
        fetched, gone = await self._details(walk, fetch, budgets)
        await self._write(walk, store_now + fetched, gone, known, read_at)
        return False

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
            out[rec.id] = (item, rec, fingerprint(item))  # a duplicate id in a page: last wins
        walk.stats.seen += len(out)
        return list(out.values())

    def _log_invalid(self, walk: _Walk, err: InvalidItem, item: Any) -> None:
        """Warn once per distinct bad item; every tick would otherwise repeat the line."""
        key = f"{err.item_id}:{err.reason}:{fingerprint(item)}"
        level = log.debug if key in self._invalid_seen else log.warning
        self._invalid_seen.add(key)
        level("invalid_item", kind=walk.stats.kind, id=err.item_id, reason=err.reason)

    def _wants_detail(self, item: dict[str, Any], stored: bool) -> bool:
        policy = self.cfg.sync.detail
        if policy == "never":
            return False
        if stored or policy == "always":
            return True
        return not is_complete(item)

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
        make = EventFactory(lambda: self.ids.new(now_dt), iso(now_dt))
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
        backfill = not await self._backfill_done()
        interrupted = await self.mirror.interrupted_walk(WALK_KINDS) if resume else None
        offset = 0
        if interrupted and kind in WALK_KINDS:
            old_id, offset = interrupted
            await self.mirror.supersede_run(old_id)
            log.info("walk_resumed", kind=kind, offset=offset)
        run_id = await self.mirror.start_run(kind, now, offset if kind in WALK_KINDS else None)
        walk = _Walk(PassStats(kind), run_id, offset, backfill=backfill)
        if kind in WALK_KINDS:
            walk.seen = SeenIds()
        if offset:
            walk.seen.update(await self._covered_before(offset))
        return walk

    async def _covered_before(self, offset: int) -> set[str]:
        """What an interrupted walk had covered: the stored recordings newer than its stop.

        Only an estimate (offsets shift), which is safe: a recording is tombstoned only
        after its detail answers 404.
        """
        page = await self._list(offset, None, ())
        created = [i.get("created_at") for i in page.items if isinstance(i, dict)]
        newest = max((c for c in created if isinstance(c, str)), default=None)
        if newest is None:
            return set()
        return set(await self.mirror.live_ids_created_after(newest))

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
            fields["position"] = None
        try:
            await asyncio.shield(self.mirror.update_run(walk.run_id, fields))
        except Exception as e:  # the pass's own error matters more than its log row
            log.warning("run_log_failed", error=str(e))
        if s.error is None:  # a failed pass is reported once, by whoever ran it
            log.info("pass_done", **{k: v for k, v in s.as_dict().items() if v is not None})

    async def _checkpoint(self, walk: _Walk) -> None:
        if walk.stats.kind in WALK_KINDS:
            fields = {**walk.stats.counts(), "position": walk.offset}
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
            self.on_progress(walk.stats, walk.offset, walk.total)

    async def _estimate_total(self) -> int | None:
        """How many recordings a walk will see: the mirror's count, or a cheap probe.

        On a first sync the probe doubles an offset until a page comes back empty, then
        bisects to the nearest page: about 2 log2(N / page) one-item requests (~20 for
        100,000), against the ~1,000 of the walk itself. Only with a progress bar.
        """
        known = await self.mirror.count()
        if known:
            return known
        size = self.cfg.sync.page_size

        async def exists(offset: int) -> bool:
            page = await self.client.list_recordings(
                offset=offset, limit=1, device_id=self.device_id, end_user_id=self.end_user_id)
            return bool(page.items)

        if not await exists(0):
            return 0
        lo, hi = 0, size
        while await exists(hi):
            lo, hi = hi, hi * 2
        while hi - lo > size:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if await exists(mid) else (lo, mid)
        return hi
