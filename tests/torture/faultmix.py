"""Scenario 2: full syncs through a mix of faults while recordings are inserted and deleted.

The mix: 10% 5xx, 5% 429 with `Retry-After`, 2% dropped connections, 1% malformed JSON,
1% HTML 502 pages, 1% answers slower than the client's timeout. Passes run while the
world moves, then over the frozen world until one leaves an exact mirror. The server's
request log must never hold more than the budget in any window, retries included.

The window is a parameter: tests scale it down (`RequestBudget(n, window_s=...)` in the
client, the same limit at the server), `bench/torture.py` runs the real 60 s one.

Either dialect: the deployed one gives every fault its own shape (a 429 with no
`Retry-After` and no rate-limit headers, errors as plain strings) and walks by cursor,
while recordings come and go around the cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botasync import config
from botasync.api.budget import RequestBudget
from botasync.errors import ApiError
from botasync.service.app import App
from botasync.simulator import Dialect, Faults, Simulator, World, serve
from tests.mirror import mirror_diff
from tests.torture.harness import API_KEYS, KEY, integrity

FAULT_MIX = {"server_error": 0.10, "rate_limited": 0.05, "drop": 0.02, "malformed": 0.01,
             "html_502": 0.01, "slow": 0.01}
SPRINKLE_EVERY = 5  # requests between two queued faults (beside the random mix)
MAX_MOVING_ROUNDS = 500  # a bound, far above need, so a stuck mover fails the run


@dataclass
class FaultMixResult:
    """What one fault-mix run measured."""

    budget: int
    window_s: float
    dialect: Dialect = "documented"
    requests: int = 0
    cursor_pages: int = 0  # list requests that carried a cursor
    peak: int = 0
    genuine_429: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    passes: list[dict[str, Any]] = field(default_factory=list)
    failed_passes: int = 0
    frozen_passes: int = 0
    converged: bool = False
    rows_wrong: list[str] = field(default_factory=list)
    integrity: str = ""
    inserted: int = 0
    deleted: int = 0
    recordings: int = 0
    seconds: float = 0.0

    def problems(self) -> list[str]:
        out = [f"row {r}" for r in self.rows_wrong]
        if not self.converged:
            out.append(f"no exact mirror after {self.frozen_passes} passes over the frozen world")
        if self.peak > self.budget:
            out.append(f"peak {self.peak} requests in a {self.window_s:g} s window > {self.budget}")
        if self.integrity != "ok":
            out.append(f"integrity: {self.integrity}")
        return out


class _Mover:
    """Inserts and deletes recordings (and makes other changes) while passes walk."""

    def __init__(self, sim: Simulator, every_s: float, seed: int, changes: int) -> None:
        self.sim, self.every_s, self.changes = sim, every_s, changes
        self.rng = random.Random(seed)
        self.inserted = self.deleted = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    @property
    def done(self) -> bool:
        """Whether every change has been made."""
        return self._task is not None and self._task.done()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        world = self.sim.world
        for _ in range(self.changes):
            await asyncio.sleep(self.every_s)
            draw = self.rng.random()
            if draw < 0.4:
                world.create()
                self.inserted += 1
            elif draw < 0.7 and len(world) > 10:
                world.delete(self.rng.choice(world.ids()))
                self.deleted += 1
            else:
                world.step(1)


async def _sprinkle(sim: Simulator) -> None:
    """Queue one fault of each kind, spaced out, so even a short run meets every kind."""
    mark = 0
    for kind in FAULT_MIX:
        while sim.faults.pending or len(sim.requests) < mark + SPRINKLE_EVERY:
            await asyncio.sleep(0.005)
        sim.faults.queue(kind, 1)
        mark = len(sim.requests)
    while sim.faults.pending:  # done means served, not just queued
        await asyncio.sleep(0.005)


def _config(sim: Simulator, db: Path, budget: int, timeout_s: float, page_size: int) -> Any:
    return config.load(env={}, overrides={
        "api": {"base_url": sim.url, "api_key": KEY, "requests_per_minute": budget,
                "timeout_s": timeout_s, "max_retries": 5, "retry_base_s": 0.05,
                "retry_max_s": 1.0, "concurrency": 4},
        "database": {"path": str(db)},
        "sync": {"page_size": page_size},
    })


async def _pass(app: App, result: FaultMixResult, kind: str) -> bool:
    """One pass; a pass that runs out of retries is recorded, not fatal (the next resumes)."""
    try:
        stats = [await app.syncer.full()] if kind == "full" else await app.syncer.quick()
    except ApiError as e:
        result.failed_passes += 1
        result.passes.append({"kind": kind, "error": str(e)})
        return False
    for s in stats:
        result.passes.append({"kind": s.kind, "requests": s.requests, "complete": s.complete})
    return all(s.error is None for s in stats)


async def run_fault_mix(
    tmp: Path, *, recordings: int = 60, page_size: int = 10, budget: int = 16,
    window_s: float = 0.4, timeout_s: float = 0.25, seed: int = 3, moving_rounds: int = 1,
    max_frozen_passes: int = 5, move_every_s: float = 0.02, changes: int = 40,
    dialect: Dialect = "documented",
) -> FaultMixResult:
    """Sync through the fault mix, moving then frozen; measure the request log's peak window."""
    started = time.monotonic()
    result = FaultMixResult(budget=budget, window_s=window_s, dialect=dialect)
    db = tmp / "botasync.db"
    async with serve(World(seed=seed, recordings=recordings, dialect=dialect), api_keys=API_KEYS,
                     rate_limit=budget, faults=Faults(seed)) as sim:
        sim.limiter.window_s = window_s  # the server enforces the same (scaled) limit
        sim.faults.slow_s = timeout_s * 1.6
        sim.faults.set_rates(FAULT_MIX)
        mover = _Mover(sim, move_every_s, seed, changes)
        async with await App.open(_config(sim, db, budget, timeout_s, page_size)) as app:
            app.client.budget = RequestBudget(budget, window_s=window_s)
            sprinkler = asyncio.create_task(_sprinkle(sim))
            mover.start()
            try:
                # Walk while the world moves, and on until every change is made and
                # every fault kind queued: a fast machine must not finish the
                # moving phase before it met them all.
                rounds = 0
                while rounds < moving_rounds or not (mover.done and sprinkler.done()):
                    if rounds >= MAX_MOVING_ROUNDS:
                        raise AssertionError(f"the world still moving after {rounds} rounds")
                    rounds += 1
                    await _pass(app, result, "full")
                    await _pass(app, result, "quick")
                await mover.stop()
                for _ in range(max_frozen_passes):
                    result.frozen_passes += 1
                    if await _pass(app, result, "full") and not mirror_diff(db, sim.world.all()):
                        result.converged = True
                        break
            finally:
                await mover.stop()
                sprinkler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sprinkler
        _measure(sim, db, mover, result)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _measure(sim: Simulator, db: Path, mover: _Mover, result: FaultMixResult) -> None:
    result.rows_wrong = mirror_diff(db, sim.world.all())
    result.integrity = integrity(db)
    result.requests = len(sim.requests)
    result.cursor_pages = sum(1 for r in sim.requests if r.path == "/v1/recordings"
                              and "cursor=" in r.query)
    result.peak = sim.max_requests_in_window(result.window_s, "/v1/")
    result.injected = dict(sim.faults.injected)
    result.genuine_429 = sim.status_counts[429] - result.injected.get("rate_limited", 0)
    result.inserted, result.deleted = mover.inserted, mover.deleted
    result.recordings = len(sim.world)
