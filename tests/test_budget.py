"""The request budget: window arithmetic with a fake clock, and the asyncio wrapper in real time."""

from __future__ import annotations

import asyncio
import math
import time
from bisect import bisect_left
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from botasync.api.budget import RequestBudget, Token, WindowLog, _order, acquire_all


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `predicate()` holds, checking on every loop turn."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.001)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- WindowLog: the arithmetic ------------------------------------------------------


def test_log_counts_in_flight_and_recent() -> None:
    """A slot is held while in flight and for one window after its finish, then frees."""
    w = WindowLog(3, 60.0)
    a = w.start(0.0)
    w.start(1.0)
    assert w.used(1.0) == 2
    w.finish(a, 10.0)
    assert w.used(69.9) == 2
    assert w.used(70.0) == 1  # a's window is over; the other is still in flight
    assert w.in_flight() == 1


def test_log_wait_time_points_at_the_next_expiry() -> None:
    """When full, the wait is until the earliest finished slot frees."""
    w = WindowLog(2, 60.0)
    a, b = w.start(0.0), w.start(0.0)
    w.finish(b, 5.0)
    w.finish(a, 3.0)
    assert w.wait_time(10.0) == pytest.approx(53.0)
    assert w.wait_time(63.0) == 0.0
    w.start(63.0)
    assert w.wait_time(63.0) == pytest.approx(2.0)


def test_log_all_in_flight_means_wait_for_a_finish() -> None:
    """With every slot held by a request still in flight, no time alone frees one."""
    w = WindowLog(2, 1.0)
    w.start(0.0)
    t = w.start(0.0)
    assert w.wait_time(1e9) == math.inf
    w.finish(t, 5.0)
    assert w.wait_time(5.5) == pytest.approx(0.5)


def test_log_start_refuses_when_full() -> None:
    """Starting past the limit is a bug in the caller and says so."""
    w = WindowLog(1, 60.0)
    w.start(0.0)
    with pytest.raises(ValueError, match="no free slot: 1 of 1"):
        w.start(0.0)


def test_log_finish_twice_and_cancel() -> None:
    """A second finish is a no-op; cancel frees a never-sent slot at once."""
    w = WindowLog(2, 60.0)
    a, b = w.start(0.0), w.start(0.0)
    w.finish(a, 1.0)
    w.finish(a, 30.0)
    assert w.used(2.0) == 2
    w.cancel(b)
    assert w.used(2.0) == 1
    assert w.wait_time(2.0) == 0.0


@pytest.mark.parametrize(("limit", "window"), [(0, 60.0), (1, 0.0), (-1, 1.0)])
def test_log_rejects_nonsense(limit: int, window: float) -> None:
    """A limit below 1 or a window of no length cannot be honoured."""
    with pytest.raises(ValueError, match="must be"):
        WindowLog(limit, window)


def _simulate(limit: int, window: float, latencies: list[tuple[float, float]]) -> list[float]:
    """Send each request as soon as the log allows; return server arrival times.

    Each latency pair is (send -> arrival at the server, arrival -> response complete).
    """
    w = WindowLog(limit, window)
    now, queue = 0.0, list(latencies)
    running: list[tuple[float, Token]] = []  # (complete_at, token)
    arrivals: list[float] = []
    while queue or running:
        while queue and w.wait_time(now) == 0:
            up, down = queue.pop(0)
            running.append((now + up + down, w.start(now)))
            arrivals.append(now + up)
        running.sort()
        nxt = [running[0][0]] if running else []
        wait = w.wait_time(now)
        if queue and math.isfinite(wait):
            nxt.append(now + wait)
        now = min(nxt)
        while running and running[0][0] <= now:
            w.finish(running.pop(0)[1], now)
    return sorted(arrivals)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=8),
    latencies=st.lists(
        st.tuples(st.floats(0, 3.0), st.floats(0, 3.0)), min_size=1, max_size=60
    ),
)
def test_no_server_window_exceeds_limit(limit: int, latencies: list[tuple[float, float]]) -> None:
    """Whatever the latencies, no window of the server's arrival log holds more than the limit."""
    window = 10.0
    arrivals = _simulate(limit, window, latencies)
    assert len(arrivals) == len(latencies)
    for i, a in enumerate(arrivals):
        in_window = bisect_left(arrivals, a + window) - i  # arrivals in [a, a + window)
        assert in_window <= limit


# -- RequestBudget: the server's view, with a fake clock ------------------------------


def test_pause_for_delays_the_next_start() -> None:
    """A 429's Retry-After holds every start back, even on an unlimited budget."""
    clock = FakeClock()
    for budget in (RequestBudget(10, clock=clock), RequestBudget(None, clock=clock)):
        budget.pause_for(5.0)
        assert budget.delay() == pytest.approx(5.0)
        clock.t += 5.0
        assert budget.delay() == 0.0


def test_observe_exhausted_waits_for_reset() -> None:
    """Remaining 0 at the server means nothing starts before its reset."""
    clock = FakeClock()
    budget = RequestBudget(90, clock=clock)
    budget.observe(0, reset_epoch=1_700_000_030, now_epoch=1_700_000_000)
    assert budget.delay() == pytest.approx(30.0)
    clock.t += 30.0
    assert budget.delay() == 0.0


def test_observe_low_spreads_the_rest() -> None:
    """With few requests left at the server, starts are spaced evenly before its reset."""
    clock = FakeClock()
    budget = RequestBudget(90, clock=clock)
    budget.observe(4, reset_epoch=1_700_000_040, now_epoch=1_700_000_000)
    assert budget.delay() == 0.0  # nothing started yet
    budget.release(budget._start())
    assert budget.delay() == pytest.approx(8.0)  # 40 s for 4 more: one every 40 / 5 s
    clock.t += 8.0
    assert budget.delay() == 0.0
    clock.t += 40.0  # past the reset: pacing is over
    budget.release(budget._start())
    assert budget.delay() == 0.0


@pytest.mark.parametrize(
    ("remaining", "reset", "now"),
    [
        (50, 1_700_000_040, 1_700_000_000),  # plenty left
        (None, 1_700_000_040, 1_700_000_000),  # no header
        (0, None, 1_700_000_000),  # no reset to wait for
        (0, 1_699_999_000, 1_700_000_000),  # a reset in the past
        (0, 1_800_000_000, 1_700_000_000),  # a reset absurdly far away
    ],
)
def test_observe_ignores_what_it_cannot_use(
    remaining: int | None, reset: float | None, now: float
) -> None:
    """Plenty left, missing headers or an implausible reset change nothing."""
    clock = FakeClock()
    budget = RequestBudget(90, clock=clock)
    budget.observe(remaining, reset, now)
    budget.release(budget._start())
    assert budget.delay() == 0.0


def test_observe_ignores_stale_higher_remaining() -> None:
    """A late answer showing more left in the same server window does not relax the pace."""
    clock = FakeClock()
    budget = RequestBudget(90, clock=clock)
    budget.observe(2, reset_epoch=1_700_000_040, now_epoch=1_700_000_000)
    budget.observe(8, reset_epoch=1_700_000_040, now_epoch=1_700_000_000)
    budget.release(budget._start())
    assert budget.delay() == pytest.approx(40 / 3)


def test_the_last_one_left_starts_inside_the_window() -> None:
    """The answer saying "1 left" came after its own request started: the one left starts
    halfway to the reset, not at it (which is the server's next window: a slot lost in
    every window, 9 of 10 a minute for the transcripts)."""
    clock = FakeClock()
    budget = RequestBudget(10, clock=clock)
    budget.release(budget._start())  # the request whose answer says 1 left, 30 s to go
    budget.observe(1, reset_epoch=1_700_000_030, now_epoch=1_700_000_000)
    assert budget.delay() == pytest.approx(15.0)
    clock.t += 15.0
    assert budget.delay() == 0.0
    budget.release(budget._start())
    budget.observe(0, reset_epoch=1_700_000_030, now_epoch=1_700_000_015)
    assert budget.delay() == pytest.approx(15.0)  # then nothing before the reset


# -- RequestBudget: asyncio, real time with small windows ---------------------------


async def test_slots_are_fifo() -> None:
    """Waiters get their slots in the order they asked."""
    budget = RequestBudget(1, window_s=0.02)
    order: list[int] = []

    async def one(i: int) -> None:
        async with budget.slot():
            order.append(i)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0)  # queue them in a known order
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == list(range(6))


async def test_release_wakes_a_waiter_after_the_window() -> None:
    """A waiter blocked by in-flight requests starts one window after a release, not before."""
    window = 0.15
    budget = RequestBudget(1, window_s=window)
    token = await budget.acquire()
    waiter = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    released = time.monotonic()
    budget.release(token)
    await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - released >= window - 0.01
    assert budget.used() == 1


async def test_cancelled_waiter_leaves_queue() -> None:
    """A waiter cancelled at the head of the queue does not block the ones behind it."""
    budget = RequestBudget(1, window_s=0.05)
    token = await budget.acquire()
    first = asyncio.create_task(budget.acquire())
    second = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)  # both are queued now
    first.cancel()
    budget.release(token)
    got = await asyncio.wait_for(second, 5)
    assert first.cancelled()
    assert isinstance(got, int)
    assert budget.used() == 1  # the released slot's window is over; only the new one


async def test_budget_under_load_holds_the_rule() -> None:
    """With 40 concurrent requests, each started while fewer than `limit` slots were held."""
    limit, window = 5, 0.1
    budget = RequestBudget(limit, window_s=window)
    spans: list[tuple[float, float]] = []

    async def one(i: int) -> None:
        async with budget.slot():
            start = time.monotonic()
            await asyncio.sleep(0.001 * (i % 7))
        spans.append((start, time.monotonic()))

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(40))), 10)
    assert len(spans) == 40
    for s, _ in spans:
        held = sum(1 for s2, f2 in spans if s2 < s and f2 + window > s)
        assert held < limit


async def test_unlimited_budget_never_waits() -> None:
    """`RequestBudget(None)` lets any number start at once and counts those in flight."""
    budget = RequestBudget(None)
    tokens = [await asyncio.wait_for(budget.acquire(), 1) for _ in range(500)]
    assert budget.used() == 500
    for t in tokens:
        budget.release(t)
    assert budget.used() == 0


async def test_acquire_all_holds_each_budget() -> None:
    """A slot taken from several budgets counts in each, and frees in each."""
    wide = RequestBudget(10, window_s=0.05)
    share = RequestBudget(2, window_s=0.05)
    async with acquire_all([wide, share, wide]):  # a repeated budget counts once
        assert (wide.used(), share.used()) == (1, 1)
    assert (wide.used(), share.used()) == (1, 1)  # held one window more


async def test_acquire_all_waits_on_the_narrow_budget_first() -> None:
    """While the narrow budget is full, a multi-budget request holds nothing of the wide one."""
    wide = RequestBudget(10, window_s=5.0)
    narrow = RequestBudget(1, window_s=5.0)
    held = await narrow.acquire()
    task = asyncio.create_task(_enter_and_leave([wide, narrow]))
    await asyncio.sleep(0)
    assert not task.done()
    assert wide.used() == 0
    narrow.cancel(held)
    await asyncio.wait_for(task, 5)
    assert (wide.used(), narrow.used()) == (1, 1)


async def test_acquire_all_gives_back_on_cancel() -> None:
    """Cancelled while waiting for its second budget, it leaves nothing held in the first."""
    first, second = _order([RequestBudget(1, window_s=5.0), RequestBudget(1, window_s=5.0)])
    held: Token = await second.acquire()
    task = asyncio.create_task(_enter_and_leave([second, first]))
    await _until(lambda: first.used() == 1)  # took the first, waits on the second
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert first.used() == 0
    second.cancel(held)
    assert second.used() == 0


async def _enter_and_leave(budgets: list[RequestBudget]) -> None:
    async with acquire_all(budgets):
        pass


async def test_share_limits_a_walk_within_the_global_budget() -> None:
    """Requests through a share budget are capped by it while others use the rest."""
    window = 0.3
    glob = RequestBudget(6, window_s=window)
    share = RequestBudget(2, window_s=window)
    starts: list[str] = []

    async def one(kind: str) -> None:
        async with acquire_all([glob, share] if kind == "walk" else [glob]):
            starts.append(kind)

    tasks = [asyncio.create_task(one(k)) for k in ["walk"] * 5 + ["hot"] * 4]
    await _until(lambda: len(starts) == 6)  # the first window's worth
    assert starts.count("walk") == 2
    assert starts.count("hot") == 4
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(starts) == 9
