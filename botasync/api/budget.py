"""The client-side request budget: at most N requests in any window, as the server counts.

The server counts a request when it arrives, which the client never sees. The rule
that still guarantees "no window of `window_s` seconds at the server holds more than
N": a request holds a slot from the moment it is sent until `window_s` after its
response completed (or it failed), and a new request starts only while fewer than N
slots are held. Of any N+1 requests arriving within one window, the last one sent
would have found the other N still held.

`WindowLog` is that arithmetic, pure (the time is passed in). `RequestBudget` wraps
it for asyncio: FIFO waiters that sleep until a slot frees or is released, plus the
server's own view (`X-RateLimit-Remaining`, 429s), since other clients of the same
project share the server's limit.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import NewType

import structlog

log = structlog.get_logger("botasync.budget")

Token = NewType("Token", int)
Clock = Callable[[], float]

# Below this share of our own limit left at the server, spread what is left over the
# time to the server's reset instead of spending it in a burst.
LOW_WATER_SHARE = 0.1
# Ignore a reset the server puts further away than this; a clock that far off is broken.
MAX_RESET_AHEAD_S = 3600.0


class WindowLog:
    """Slots held by requests: in flight, or finished less than `window_s` ago."""

    def __init__(self, limit: int, window_s: float) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.limit = limit
        self.window_s = window_s
        self._ids = itertools.count(1)
        self._in_flight: set[int] = set()
        self._expiries: list[float] = []  # heap: when each finished slot frees

    def _prune(self, now: float) -> None:
        while self._expiries and self._expiries[0] <= now:
            heapq.heappop(self._expiries)

    def used(self, now: float) -> int:
        """Slots held at `now`."""
        self._prune(now)
        return len(self._in_flight) + len(self._expiries)

    def in_flight(self) -> int:
        """Requests started and not yet finished."""
        return len(self._in_flight)

    def wait_time(self, now: float) -> float:
        """Seconds until a new request may start: 0 if now, `inf` if only a finish can free one."""
        excess = self.used(now) - self.limit + 1
        if excess <= 0:
            return 0.0
        if excess > len(self._expiries):
            return math.inf  # all the slots that would have to free are still in flight
        return heapq.nsmallest(excess, self._expiries)[-1] - now

    def start(self, now: float) -> Token:
        """Take a slot for a request being sent; raise ValueError if none is free."""
        if self.wait_time(now) > 0:
            raise ValueError(f"no free slot: {self.used(now)} of {self.limit} held")
        token = Token(next(self._ids))
        self._in_flight.add(token)
        return token

    def finish(self, token: Token, now: float) -> None:
        """The response completed (or the request failed): hold the slot `window_s` more."""
        if token in self._in_flight:  # a second finish of the same token is a no-op
            self._in_flight.discard(token)
            heapq.heappush(self._expiries, now + self.window_s)

    def cancel(self, token: Token) -> None:
        """Give back a slot whose request was never sent."""
        self._in_flight.discard(token)


class _Waiter:
    """One task queued for a slot; `wake` is set when it should look again."""

    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake = asyncio.Event()


class RequestBudget:
    """At most `limit_per_minute` requests per `window_s`, shared fairly by async tasks.

    `RequestBudget(None)` has no limit of its own (benchmarks) but still honours
    what the server says (`observe`, `pause_for`).
    """

    def __init__(
        self,
        limit_per_minute: int | None,
        *,
        clock: Clock = time.monotonic,
        window_s: float = 60.0,
    ) -> None:
        self.limit = limit_per_minute
        self.window_s = window_s
        self._clock = clock
        self._log = WindowLog(limit_per_minute, window_s) if limit_per_minute else None
        self._unlimited_in_flight = 0
        self._queue: deque[_Waiter] = deque()
        self._blocked_until = -math.inf  # no start before this (429, remaining 0)
        self._pace_interval = 0.0  # min seconds between starts while the server runs low
        self._pace_until = -math.inf
        self._pace_remaining: int | None = None
        self._last_start = -math.inf

    def __repr__(self) -> str:
        return f"RequestBudget(limit={self.limit}, window_s={self.window_s}, used={self.used()})"

    def used(self) -> int:
        """Slots held now (for an unlimited budget: requests in flight)."""
        if self._log is None:
            return self._unlimited_in_flight
        return self._log.used(self._clock())

    def delay(self) -> float:
        """Seconds before the next request may start (0 = now, inf = after a release)."""
        now = self._clock()
        wait = self._log.wait_time(now) if self._log else 0.0
        wait = max(wait, self._blocked_until - now)
        if now < self._pace_until:
            wait = max(wait, self._last_start + self._pace_interval - now)
        return max(wait, 0.0)

    def queued_wait(self) -> float:
        """Seconds the next queued request still waits for a slot: 0 when none is queued
        (a progress bar says "waiting for the rate limit" instead of a frozen ETA)."""
        return self.delay() if self._queue else 0.0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot around one HTTP request."""
        token = await self.acquire()
        try:
            yield
        finally:
            self.release(token)

    async def acquire(self) -> Token:
        """Wait (FIFO) for a slot and take it; pair with `release` or `cancel`."""
        me = _Waiter()
        self._queue.append(me)
        try:
            while True:
                wait = self.delay() if self._queue[0] is me else math.inf
                if wait <= 0:
                    self._queue.popleft()
                    return self._start()
                me.wake.clear()
                await _sleep_or_wake(me.wake, wait)
        finally:
            # on success `me` is gone already; on cancellation leave the queue clean
            if me in self._queue:
                self._queue.remove(me)
            self._kick()

    def _start(self) -> Token:
        now = self._clock()
        self._last_start = now
        if self._log is None:
            self._unlimited_in_flight += 1
            return Token(0)
        return self._log.start(now)

    def release(self, token: Token) -> None:
        """The request is over (answered or failed); its slot frees `window_s` from now."""
        if self._log is None:
            self._unlimited_in_flight = max(self._unlimited_in_flight - 1, 0)
        else:
            self._log.finish(token, self._clock())
        self._kick()

    def cancel(self, token: Token) -> None:
        """Give a slot back at once: its request was never sent."""
        if self._log is None:
            self._unlimited_in_flight = max(self._unlimited_in_flight - 1, 0)
        else:
            self._log.cancel(token)
        self._kick()

    def _kick(self) -> None:
        """Wake the head of the queue so it recomputes its wait."""
        if self._queue:
            self._queue[0].wake.set()

    def pause_for(self, seconds: float) -> None:
        """Start nothing for `seconds` (the server said 429 / Retry-After)."""
        self._blocked_until = max(self._blocked_until, self._clock() + max(seconds, 0.0))
        self._kick()

    def observe(self, remaining: int | None, reset_epoch: float | None, now_epoch: float) -> None:
        """Follow the server's count: at 0 wait for its reset, when low spread what is left."""
        if remaining is None or reset_epoch is None:
            return
        ahead = reset_epoch - now_epoch
        if not 0 < ahead <= MAX_RESET_AHEAD_S:
            return
        reset_at = self._clock() + ahead
        if remaining <= 0:
            self._blocked_until = max(self._blocked_until, reset_at)
            log.info("budget.server_exhausted", wait_s=round(ahead, 3))
        elif remaining <= self._low_water():
            self._pace(remaining, reset_at, ahead)
        self._kick()

    def _pace(self, remaining: int, reset_at: float, ahead: float) -> None:
        """Allow one start every `ahead / (remaining + 1)` seconds until the server's reset.

        The answer that says `remaining` comes after its own request started (`_last_start`),
        so the next start is one interval after that: with `ahead / remaining` the last of
        the `remaining` would start at the reset itself, in the server's next window, and
        every window would lose a slot (9 of 10 a minute for the transcripts: 1.11x the
        time). One interval more keeps all of them inside the window.
        """
        same_window = abs(reset_at - self._pace_until) < 1.0
        last = self._pace_remaining
        if same_window and last is not None and remaining > last:
            return  # a late answer from earlier in the same window: stale
        self._pace_until, self._pace_remaining = reset_at, remaining
        self._pace_interval = ahead / (remaining + 1)

    def _low_water(self) -> int:
        return max(1, math.ceil((self.limit or 100) * LOW_WATER_SHARE))


async def _sleep_or_wake(wake: asyncio.Event, seconds: float) -> None:
    """Sleep until `wake` is set or `seconds` pass (inf: only `wake`)."""
    if math.isinf(seconds):
        await wake.wait()
        return
    try:
        async with asyncio.timeout(seconds):
            await wake.wait()
    except TimeoutError:
        pass


def _order(budgets: Sequence[RequestBudget]) -> list[RequestBudget]:
    """Tightest first, so a wide shared budget is not held while waiting on a narrow one.

    The order is total (ties broken by identity), so two tasks taking the same
    budgets never wait on each other in a cycle.
    """
    unique = {id(b): b for b in budgets}.values()
    return sorted(unique, key=lambda b: (b.limit if b.limit else math.inf, id(b)))


@asynccontextmanager
async def acquire_all(budgets: Sequence[RequestBudget]) -> AsyncIterator[None]:
    """Hold one slot in each budget around one request (global budget plus a share)."""
    taken: list[tuple[RequestBudget, Token]] = []
    try:
        for budget in _order(budgets):
            taken.append((budget, await budget.acquire()))
    except BaseException:
        for budget, token in taken:
            budget.cancel(token)
        raise
    try:
        yield
    finally:
        for budget, token in taken:
            budget.release(token)
