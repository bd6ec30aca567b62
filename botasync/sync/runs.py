"""The bookkeeping of passes: each one a `sync_runs` row, walks checkpointed and resumed.

A pass begins a run row; a full or reconcile walk moves its checkpoint (`position`, and
the `cursor` by cursor) past every page it writes, so a walk cut short resumes where it
stopped, and its run is superseded by the resuming one. The end of a pass writes its
counts, how long it took and its error, and logs one `pass_done` line. The backfill's
end (the first complete walk) is kept in the `state` table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from botasync.config import DEFAULT_PROJECT
from botasync.envelope import iso
from botasync.store.sqlite import Mirror
from botasync.sync.seen import SeenIds

BACKFILL_DONE = "backfill_done"
WALK_KINDS = ("full", "reconcile")


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
    project: str = DEFAULT_PROJECT  # whose pass (`sync --json` lists every project's)

    def counts(self) -> dict[str, int]:
        keys = ("pages", "requests", "seen", "created", "updated", "unchanged", "invalid",
                "deleted", "events")
        return {k: int(getattr(self, k)) for k in keys}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Walk:
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


class Runs:
    """One project's run rows and checkpoints; `requests` counts the client's requests."""

    def __init__(
        self, mirror: Mirror, clock: Callable[[], datetime], log: Any,
        requests: Callable[[], int],
    ) -> None:
        self._mirror = mirror
        self._clock = clock
        self._log = log
        self._requests = requests

    async def begin(self, kind: str, *, resume: bool) -> Walk:
        """A new run of `kind`; a walk resumes the checkpoint of one cut short."""
        now = iso(self._clock())
        backfill = not await self.backfill_done()
        interrupted = await self._mirror.interrupted_walk(WALK_KINDS) if resume else None
        position, cursor = 0, None
        if interrupted and kind in WALK_KINDS:
            old_id, position, cursor = interrupted
            await self._mirror.supersede_run(old_id)
            self._log.info("walk_resumed", kind=kind, position=position,
                           by_cursor=cursor is not None)
        walk = Walk(PassStats(kind, project=self._mirror.project), 0, backfill=backfill)
        if kind in WALK_KINDS:
            walk.seen = SeenIds()
            walk.position, walk.cursor, walk.resumed = position, cursor, position > 0
            walk.offset = position if cursor is None else 0
        walk.run_id = await self._mirror.start_run(
            kind, now, walk.position if kind in WALK_KINDS else None, walk.cursor)
        return walk

    async def run(self, walk: Walk, body: Awaitable[object]) -> PassStats:
        """Run the pass's `body`, then write down what it did, whatever became of it."""
        started, requests_before = time.monotonic(), self._requests()
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
            stats.requests = self._requests() - requests_before
            stats.seconds = round(time.monotonic() - started, 3)
            await self._finish(walk)
        return stats

    async def _finish(self, walk: Walk) -> None:
        s = walk.stats
        fields: dict[str, Any] = {
            **s.counts(), "complete": int(s.complete), "error": s.error,
            "ended_at": iso(self._clock()),
        }
        if s.complete or s.kind not in WALK_KINDS:
            fields["position"] = fields["cursor"] = None
        try:
            await asyncio.shield(self._mirror.update_run(walk.run_id, fields))
        except Exception as e:  # the pass's own error matters more than its log row
            self._log.warning("run_log_failed", error=str(e))
        if s.error is None:  # a failed pass is reported once, by whoever ran it
            self._log.info("pass_done", **{k: v for k, v in s.as_dict().items() if v is not None})

    async def checkpoint(self, walk: Walk) -> None:
        """Where a walk is, so that a walk cut short resumes there."""
        if walk.stats.kind in WALK_KINDS:
            fields = {**walk.stats.counts(), "position": walk.position, "cursor": walk.cursor}
            await self._mirror.update_run(walk.run_id, fields)

    async def backfill_done(self) -> bool:
        return await self._mirror.get_state(BACKFILL_DONE) is not None

    async def mark_backfill_done(self, walk: Walk) -> None:
        if walk.backfill:
            await self._mirror.set_state(BACKFILL_DONE, iso(self._clock()))
