"""Recordings into the mirror, a page at a time, at the API's minimum cost.

Per list item: unchanged fingerprint -> nothing; changed -> its detail (the
authoritative read); never stored -> the list item itself, unless a detail has shown
that details carry fields list items lack (`[sync] detail` changes this). Stored
recordings a list did not show are asked for by id (`confirm`): a 404 is a deletion.
Each page is diffed against the stored rows and written with its events in one commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from botasync.api.budget import RequestBudget
from botasync.api.models import InvalidItem, Recording, parse_recording
from botasync.envelope import EventFactory, EventIds, iso
from botasync.errors import NotFound
from botasync.store.sqlite import PageWrite, Upsert
from botasync.sync.context import PassContext
from botasync.sync.diff import deleted, diff
from botasync.sync.fingerprint import VOLATILE_KEYS, fingerprint
from botasync.sync.runs import Walk

# the syncer's logger, unbound: an invalid item's line has carried no project so far
log = structlog.get_logger("botasync.sync")

Item = tuple[dict[str, Any], Recording, str]  # (as received, parsed, its fingerprint)


class ItemSync:
    """Writes what a walk reads into one project's mirror, and counts it in the walk's
    stats; `on_commit` after a write with events, `progress` after every page."""

    def __init__(self, ctx: PassContext, *, on_commit: Callable[[], None]) -> None:
        self._ctx = ctx
        self._on_commit = on_commit
        self._ids = EventIds()
        self._invalid_seen: set[str] = set()
        self._unknown_statuses: set[str] = set()

    async def page(
        self, walk: Walk, items: list[Any], budgets: Sequence[RequestBudget], read_at: str
    ) -> bool:
        """Decide, fetch, diff and write one page; True when every item was unchanged."""
        stats = walk.stats
        stats.pages += 1
        valid = self._validate(walk, items)
        known = await self._ctx.mirror.fingerprints([r.id for _, r, _ in valid])
        store_now: list[Item] = []
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
            self._ctx.progress(walk)
            return True  # an invalid item cannot be mirrored: it must not keep a walk going
        fetched, gone = await self._details(walk, fetch, budgets)
        await self._compare(listed, fetched)
        await self._write(walk, store_now + fetched, gone, known, read_at)
        return False

    async def confirm(
        self, walk: Walk, ids: Sequence[str], budgets: Sequence[RequestBudget]
    ) -> None:
        """Ask by id for stored recordings a list did not show: 404 = deleted."""
        read_at = iso(self._ctx.clock())
        known = await self._ctx.mirror.fingerprints(ids)
        fetched, gone = await self._details(walk, [(i, "") for i in ids], budgets)
        changed = [f for f in fetched if known.get(f[1].id, (None,))[0] != f[2]]
        walk.stats.unchanged += len(fetched) - len(changed)
        for _, rec, _ in fetched:
            walk.seen.add(rec.id)
        await self._write(walk, changed, gone, known, read_at)

    async def _compare(self, listed: dict[str, dict[str, Any]], fetched: list[Item]) -> None:
        """Learn from details fetched anyway whether they carry more than list items."""
        learned = self._ctx.learning.now
        for raw, rec, _ in fetched:
            item = listed.get(rec.id)
            if item is not None:
                learned = learned.compared(item, raw, VOLATILE_KEYS)
        if learned.detail_keys != self._ctx.learning.now.detail_keys:
            self._ctx.log.info("details_compared", detail_only_fields=sorted(learned.detail_keys))
        await self._ctx.learning.keep(learned)

    def _validate(self, walk: Walk, items: list[Any]) -> list[Item]:
        out: dict[str, Item] = {}
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

    def _log_invalid(self, walk: Walk, err: InvalidItem, item: Any) -> None:
        """Warn once per distinct bad item; every tick would otherwise repeat the line."""
        key = f"{err.item_id}:{err.reason}:{fingerprint(item)}"
        level = log.debug if key in self._invalid_seen else log.warning
        self._invalid_seen.add(key)
        level("invalid_item", kind=walk.stats.kind, id=err.item_id, reason=err.reason)

    def _log_unknown_status(self, rec: Recording) -> None:
        """Once per value: a status botasync does not know is stored as sent, and watched."""
        if rec.status not in self._unknown_statuses:
            self._unknown_statuses.add(rec.status)
            self._ctx.log.warning("unknown_status", status=rec.status, id=rec.id,
                                  note="stored as sent and watched like an in-flight status")

    def _wants_detail(self, item: dict[str, Any], stored: bool) -> bool:
        """Changed items get their detail (the authoritative read); never-seen items only
        when details have been seen to carry more than list items."""
        policy = self._ctx.cfg.sync.detail
        if policy == "never":
            return False
        if stored or policy == "always":
            return True
        return self._ctx.learning.now.wants_detail(item)

    async def _details(
        self, walk: Walk, wanted: list[tuple[str, str]], budgets: Sequence[RequestBudget]
    ) -> tuple[list[Item], list[str]]:
        """Fetch details concurrently (the client bounds it); 404s come back as `gone`."""
        results = await asyncio.gather(
            *(self._detail(rid, budgets) for rid, _ in wanted), return_exceptions=True
        )
        fetched: list[Item] = []
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
        raw = await self._ctx.client.get_recording(rid, budgets=budgets)
        rec = parse_recording(raw)
        if rec.id != rid:
            raise InvalidItem(rid, f"detail answered with another id ({rec.id})")
        return raw, rec

    async def _write(
        self,
        walk: Walk,
        items: list[Item],
        gone: list[str],
        known: dict[str, tuple[str | None, bool]],
        read_at: str,
    ) -> None:
        """Diff against the stored rows and write the page with its events in one commit.

        A recording another pass wrote after this page was read (`read_at`) is left as
        stored: the page's copy may be older, and writing it would turn the row and its
        events back (completed -> processing). A change it skips is seen by the next pass.
        """
        now_dt = self._ctx.clock()
        make = EventFactory(lambda: self._ids.new(now_dt), iso(now_dt), self._ctx.cfg.project)
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

        page = await self._ctx.mirror.apply(ids, build, iso(now_dt), read_at)
        walk.stats.created += counts["created"]
        walk.stats.updated += counts["updated"]
        walk.stats.deleted += counts["deleted"]
        walk.stats.events += len(page.events)
        if page.events:
            self._on_commit()
        self._ctx.progress(walk)
