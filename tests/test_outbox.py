"""The outbox dispatcher against a real database, SQLite and PostgreSQL: order, retries, dead
letters, restarts."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from botasync.config import CommandHandlerConfig, EventsConfig
from botasync.envelope import Event, EventIds
from botasync.errors import ConfigError, HandlerError
from botasync.events.handlers import Handler, build_handler
from botasync.events.outbox import Dispatcher, backlog, dead, list_events, retry_delay
from botasync.jsoncodec import dumps
from botasync.store.base import Database as Store
from tests.pgserver import TestDb

SCRIPT = str(Path(__file__).parent / "helpers" / "cmd_handler.py")
FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}
_IDS = EventIds()


# --- helpers -------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll an async `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def add_events(
    store: Store, *specs: tuple[str, str], backfill: bool = False
) -> list[str]:
    """Append events `(type, recording_id)` to the outbox as the sync does; return their ids."""
    ids = []
    async with store.transaction() as conn:
        for event_type, rec in specs:
            now = datetime.now(UTC)
            ev = Event(id=_IDS.new(now), type=event_type, created_at="2025-01-01T00:00:00.000Z",
                       recording_id=rec, data={"id": rec, "name": f"name of {rec}"}, previous={})
            await conn.execute(
                "INSERT INTO events (id, type, recording_id, created_at, payload, backfill) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (ev.id, ev.type, rec, ev.created_at, dumps(ev.envelope()), int(backfill)),
            )
            ids.append(ev.id)
    return ids


def created(*recs: str) -> list[tuple[str, str]]:
    return [("recording.created", r) for r in recs]


@dataclass
class Recorder:
    """A real in-process handler: records what it takes; can fail or block on demand."""

    name: str
    patterns: list[str] = field(default_factory=lambda: ["*"])
    fail_ids: set[str] = field(default_factory=set)
    gate: asyncio.Event | None = None
    got: list[tuple[str, str, bytes]] = field(default_factory=list)
    closed: bool = False

    async def deliver(self, payload: bytes, event_id: str, event_type: str) -> None:
        if event_id in self.fail_ids:
            raise HandlerError(f"refused {event_id}")
        self.got.append((event_id, event_type, payload))
        if self.gate is not None:
            await self.gate.wait()

    async def aclose(self) -> None:
        self.closed = True

    @property
    def ids(self) -> list[str]:
        return [g[0] for g in self.got]


def command(tmp_path: Path, name: str, mode: str, timeout_s: float = 10.0) -> tuple[Handler, Path]:
    out = tmp_path / f"{name}.jsonl"
    cfg = CommandHandlerConfig(name=name, type="command", timeout_s=timeout_s,
                               command=[sys.executable, SCRIPT, str(out), mode])
    return build_handler(cfg), out


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


async def delivery(store: Store, handler: str, event_id: str) -> dict[str, Any] | None:
    row = await store.fetchone(
        "SELECT d.* FROM deliveries d JOIN events e ON e.seq = d.event_seq "
        "WHERE d.handler = ? AND e.id = ?", (handler, event_id))
    return dict(row) if row is not None else None


async def cursor(store: Store, handler: str) -> int:
    row = await store.fetchone("SELECT seq FROM handler_cursors WHERE handler = ?", (handler,))
    return int(row["seq"]) if row is not None else -1


@pytest.fixture
async def store(database: TestDb) -> AsyncIterator[Store]:
    """A migrated database: a file in tmp_path, or a PostgreSQL database of its own."""
    s = await database.open()
    yield s
    await s.aclose()


Factory = Callable[..., Dispatcher]


@pytest.fixture
async def dispatcher(store: Store) -> AsyncIterator[Factory]:
    """Make dispatchers on the store (small backoff); all are closed at teardown."""
    made: list[Dispatcher] = []

    def make(*handlers: Handler, on: Store | None = None, **events: Any) -> Dispatcher:
        cfg = EventsConfig(**{**FAST, **events})
        d = Dispatcher(on or store, list(handlers), cfg)
        made.append(d)
        return d

    yield make
    for d in made:
        await d.aclose(grace_s=0.1)


# --- delivery ------------------------------------------------------------------------


async def test_command_handler_gets_every_event_in_order(
    store: Store, dispatcher: Factory, tmp_path: Path
) -> None:
    """A real command receives each event once, in seq order, with its id and type in env."""
    handler, out = command(tmp_path, "cmd", "append")
    d = dispatcher(handler)
    await d.start()
    ids = await add_events(store, *created("rec_1", "rec_2"), ("recording.completed", "rec_1"))
    d.notify()
    assert await d.drain(10)
    got = lines(out)
    assert [g["event_id"] for g in got] == ids
    assert [g["event_type"] for g in got] == [
        "recording.created", "recording.created", "recording.completed"]
    assert [json.loads(g["stdin"])["id"] for g in got] == ids
    for event_id in ids:
        row = await delivery(store, "cmd", event_id)
        assert row is not None
        assert (row["state"], row["attempts"]) == ("delivered", 1)
        assert row["delivered_at"] is not None
    assert await cursor(store, "cmd") == 3


async def test_patterns_filter_and_events_arriving_later_keep_order(
    store: Store, dispatcher: Factory
) -> None:
    """A handler takes only its globs; batches committed while it runs arrive in seq order."""
    everything, completed = Recorder("all"), Recorder("done", patterns=["*.completed"])
    d = dispatcher(everything, completed)
    await d.start()
    first = await add_events(store, *created("a", "b"))
    d.notify()
    second = await add_events(store, ("recording.completed", "a"), *created("c"))
    d.notify()
    third = await add_events(store, ("recording.completed", "b"))
    assert await d.drain(10)  # drain notices events committed without a notify
    assert everything.ids == first + second + third
    assert completed.ids == [second[0], third[0]]
    assert await cursor(store, "done") == 5  # non-matching events are settled too


async def test_failing_handler_is_retried_then_dead_while_the_other_gets_everything(
    store: Store, dispatcher: Factory, tmp_path: Path
) -> None:
    """A failure is retried with backoff, dead after max_attempts, and the handler moves on."""
    failing, out = command(tmp_path, "picky", "fail-on:rec_bad")
    other = Recorder("other")
    d = dispatcher(failing, other, max_attempts=3)
    await d.start()
    with capture_logs() as logs:
        ids = await add_events(store, *created("rec_1", "rec_bad", "rec_2"))
        d.notify()
        assert await d.drain(10)  # drain waits out the retries until the dead letter
    assert await cursor(store, "picky") == 3
    assert other.ids == ids
    assert [g["event_id"] for g in lines(out)] == [ids[0], ids[2]]
    row = await delivery(store, "picky", ids[1])
    assert row is not None
    assert (row["state"], row["attempts"]) == ("dead", 3)
    assert row["last_error"] == "exit code 3: first line | boom: cannot take this event"
    failures = [e for e in logs if e["event"] == "delivery_failed"]
    deaths = [e for e in logs if e["event"] == "delivery_dead"]
    assert [e["attempt"] for e in failures] == [1, 2]
    assert [(e["handler"], e["event_id"], e["attempt"]) for e in deaths] == [
        ("picky", ids[1], 3)]
    [letter] = await dead(store)
    assert (letter.handler, letter.event_id, letter.attempts) == ("picky", ids[1], 3)


async def _settled(store: Store, handler: str, seq: int) -> bool:
    return await cursor(store, handler) >= seq


async def test_drain_times_out_while_a_retry_is_pending(
    store: Store, dispatcher: Factory
) -> None:
    """A handler waiting out a long backoff is not caught up: drain says False, the row is pending."""
    rec = Recorder("r")
    d = dispatcher(rec, backoff_base_s=60, backoff_max_s=60)
    await d.start()
    ids = await add_events(store, *created("a"))
    rec.fail_ids = set(ids)
    d.notify()
    assert not await d.drain(0.3)
    row = await delivery(store, "r", ids[0])
    assert row is not None
    assert (row["state"], row["attempts"]) == ("pending", 1)
    due = datetime.fromisoformat(row["next_attempt_at"]) - datetime.now(UTC)
    assert 25 < due.total_seconds() <= 60  # equal jitter: between half and all of the base


async def test_hanging_command_times_out_and_later_events_still_flow(
    store: Store, dispatcher: Factory, tmp_path: Path
) -> None:
    """A handler stuck past timeout_s fails that event (dead at max_attempts=1) and goes on."""
    handler, out = command(tmp_path, "slow", "hang-on:rec_hang", timeout_s=0.5)
    d = dispatcher(handler, max_attempts=1)
    await d.start()
    ids = await add_events(store, *created("rec_1", "rec_hang", "rec_2"))
    d.notify()
    assert await d.drain(10)
    assert [g["event_id"] for g in lines(out)] == [ids[0], ids[2]]
    row = await delivery(store, "slow", ids[1])
    assert row is not None
    assert (row["state"], row["last_error"]) == ("dead", "timed out after 0.5s (killed)")


async def test_a_blocked_handler_blocks_neither_the_others_nor_the_writer(
    store: Store, dispatcher: Factory
) -> None:
    """While one handler hangs in a delivery, the other gets every event and writes commit."""
    gate = asyncio.Event()
    stuck, free = Recorder("stuck", gate=gate), Recorder("free")
    d = dispatcher(stuck, free)
    await d.start()
    ids = await add_events(store, *created("a", "b", "c"))
    d.notify()
    assert not await d.drain(0.2)  # the stuck one is busy
    more = await add_events(store, *created("d"))  # the database is not held
    d.notify()

    async def free_done() -> bool:
        return free.ids == ids + more

    await wait_until(free_done)
    assert stuck.ids == ids[:1]
    gate.set()
    assert await d.drain(10)
    assert stuck.ids == ids + more


async def test_retry_waits_for_its_backoff_and_then_delivers(
    store: Store, dispatcher: Factory
) -> None:
    """A handler that fails twice then succeeds delivers in order, attempts recorded."""
    flaky = Recorder("flaky")
    d = dispatcher(flaky, max_attempts=5)
    await d.start()
    ids = await add_events(store, *created("a", "b"))
    flaky.fail_ids = {ids[0]}
    d.notify()

    async def tried_twice() -> bool:
        row = await delivery(store, "flaky", ids[0])
        return row is not None and row["attempts"] >= 2

    await wait_until(tried_twice)
    assert flaky.ids == []  # b waits behind a: strict order
    flaky.fail_ids = set()
    await wait_until(lambda: _settled(store, "flaky", 2))
    assert flaky.ids == ids
    row = await delivery(store, "flaky", ids[0])
    assert row is not None
    assert row["state"] == "delivered"
    assert row["attempts"] >= 3
    assert row["last_error"] == f"refused {ids[0]}"


# --- backfill and new handlers -------------------------------------------------------


@pytest.mark.parametrize("deliver_backfill", [False, True])
async def test_backfill_is_skipped_unless_configured(
    store: Store, dispatcher: Factory, deliver_backfill: bool
) -> None:
    """Events of the first sync are delivered only with deliver_backfill; live ones always."""
    rec = Recorder("r")
    d = dispatcher(rec, deliver_backfill=deliver_backfill)
    await d.start()
    old = await add_events(store, *created("a", "b"), backfill=True)
    new = await add_events(store, ("recording.completed", "a"))
    d.notify()
    assert await d.drain(10)
    assert rec.ids == (old + new if deliver_backfill else new)
    assert await cursor(store, "r") == 3
    rows = await store.fetchall("SELECT event_seq FROM deliveries WHERE handler = 'r'")
    assert len(rows) == len(rec.ids)  # a skipped backfill event has no delivery row


async def test_backfill_written_before_the_first_start_is_still_delivered(
    store: Store, dispatcher: Factory
) -> None:
    """An outbox holding only backfill counts as empty: deliver_backfill still applies."""
    old = await add_events(store, *created("a", "b"), backfill=True)
    rec = Recorder("r")
    d = dispatcher(rec, deliver_backfill=True)
    await d.start()
    assert await d.drain(10)
    assert rec.ids == old


async def test_a_new_handler_on_an_existing_outbox_starts_at_the_newest_event(
    store: Store, dispatcher: Factory
) -> None:
    """History is not pushed to a handler added later; only new events are."""
    await add_events(store, *created("a", "b"))
    rec = Recorder("late")
    d = dispatcher(rec)
    await d.start()
    assert await d.drain(10)
    assert rec.ids == []
    new = await add_events(store, *created("c"))
    d.notify()
    assert await d.drain(10)
    assert rec.ids == new


# --- restarts ------------------------------------------------------------------------


async def test_restart_continues_from_the_cursor_with_no_loss_and_the_same_ids(
    tmp_path: Path, database: TestDb,
) -> None:
    """Closing everything and reopening delivers the rest, each event exactly once here."""
    handler, out = command(tmp_path, "cmd", "append")
    store = await database.open()
    d = Dispatcher(store, [handler], EventsConfig(**FAST))
    await d.start()
    first = await add_events(store, *created("a", "b"))
    d.notify()
    assert await d.drain(10)
    await d.aclose()
    more = await add_events(store, *created("c"))  # written while no dispatcher runs
    await store.aclose()

    store = await database.open()
    handler, _ = command(tmp_path, "cmd", "append")
    d = Dispatcher(store, [handler], EventsConfig(**FAST))
    try:
        await d.start()
        last = await add_events(store, *created("d"))
        d.notify()
        assert await d.drain(10)
    finally:
        await d.aclose()
        await store.aclose()
    assert [g["event_id"] for g in lines(out)] == first + more + last


async def test_a_crash_after_the_handler_ran_redelivers_the_same_event(
    database: TestDb,
) -> None:
    """Cut off before its success is recorded, the event comes again: same id, same payload."""
    store = await database.open()
    hung = Recorder("h", gate=asyncio.Event())  # did its work, never returned
    d = Dispatcher(store, [hung], EventsConfig(**FAST))
    await d.start()
    ids = await add_events(store, *created("a", "b"))
    d.notify()
    assert not await d.drain(0.2)
    await d.aclose(grace_s=0.05)  # past the grace: cancelled mid-delivery
    assert hung.closed
    await store.aclose()

    store = await database.open()
    again = Recorder("h")
    d = Dispatcher(store, [again], EventsConfig(**FAST))
    try:
        await d.start()
        assert await d.drain(10)
    finally:
        await d.aclose()
        await store.aclose()
    assert hung.ids == ids[:1]
    assert again.ids == ids
    assert again.got[0][2] == hung.got[0][2]


async def test_close_lets_an_in_flight_delivery_finish_within_the_grace(
    store: Store, dispatcher: Factory
) -> None:
    """A delivery that ends within the grace is recorded, so it is not repeated on restart."""
    gate = asyncio.Event()
    rec = Recorder("r", gate=gate)
    d = dispatcher(rec)
    await d.start()
    ids = await add_events(store, *created("a", "b"))
    d.notify()
    assert not await d.drain(0.1)
    closing = asyncio.create_task(d.aclose(grace_s=10))
    gate.set()
    await closing
    await d.aclose()  # idempotent
    assert rec.ids == ids[:1]  # it stopped after the in-flight one
    assert await cursor(store, "r") == 1
    row = await delivery(store, "r", ids[0])
    assert row is not None
    assert row["state"] == "delivered"


# --- replay and queries --------------------------------------------------------------


async def test_replay_redelivers_history_in_order_with_filters(
    store: Store, dispatcher: Factory
) -> None:
    """Replay sends matching past events (backfill too), from a seq or of a type glob."""
    old = await add_events(store, *created("a", "b"), backfill=True)
    live = await add_events(store, ("recording.completed", "a"), ("media.created", "b"))
    rec = Recorder("r", patterns=["recording.*"])
    d = dispatcher(rec)
    result = await d.replay("r")
    assert (result.delivered, result.failed) == (3, 0)
    assert rec.ids == old + live[:1]
    rec.got.clear()
    assert (await d.replay("r", since_seq=2)).delivered == 2
    assert rec.ids == [old[1], live[0]]
    rec.got.clear()
    assert (await d.replay("r", type_pattern="*.completed")).delivered == 1
    assert rec.ids == [live[0]]
    row = await delivery(store, "r", live[0])
    assert row is not None
    assert (row["state"], row["attempts"]) == ("delivered", 3)
    with pytest.raises(ConfigError):
        await d.replay("nobody")


async def test_replay_records_failures_and_revives_dead_letters(
    store: Store, dispatcher: Factory
) -> None:
    """A failed replay counts and records the error; a later successful one marks delivered."""
    ids = await add_events(store, *created("a", "b"))
    rec = Recorder("r", fail_ids={ids[1]})
    d = dispatcher(rec)
    result = await d.replay("r")
    assert (result.delivered, result.failed, result.total) == (1, 1, 2)
    row = await delivery(store, "r", ids[1])
    assert row is not None
    assert (row["state"], row["last_error"]) == ("dead", f"refused {ids[1]}")
    rec.fail_ids = set()
    assert (await d.replay("r", since_seq=2)).delivered == 1
    row = await delivery(store, "r", ids[1])
    assert row is not None
    assert (row["state"], row["attempts"]) == ("delivered", 2)
    assert await dead(store) == []


async def test_replay_of_a_large_backlog_is_batched_and_fast(
    store: Store, dispatcher: Factory
) -> None:
    """Three thousand events replay in seq order, one delivery row each, in a few seconds."""
    ids = await add_events(store, *created(*(f"rec_{i}" for i in range(3000))))
    rec = Recorder("r")
    d = dispatcher(rec)
    started = time.monotonic()
    result = await d.replay("r")
    assert time.monotonic() - started < 5
    assert result.delivered == 3000
    assert rec.ids == ids
    row = await store.fetchone("SELECT COUNT(*) AS n FROM deliveries WHERE state = 'delivered'")
    assert row is not None
    assert row["n"] == 3000


async def test_worker_delivers_a_large_backlog_and_records_it(
    store: Store, dispatcher: Factory
) -> None:
    """A 2,000-event backlog flows through the worker, every delivery and the cursor recorded."""
    rec = Recorder("r")
    d = dispatcher(rec)
    await d.start()
    ids = await add_events(store, *created(*(f"rec_{i}" for i in range(2000))))
    d.notify()
    assert await d.drain(20)
    assert rec.ids == ids
    assert await cursor(store, "r") == 2000
    row = await store.fetchone("SELECT COUNT(*) AS n FROM deliveries WHERE state = 'delivered'")
    assert row is not None
    assert row["n"] == 2000


async def test_backlog_counts_what_each_handler_still_has_to_take(
    store: Store, dispatcher: Factory
) -> None:
    """Backlog is the unsettled events past each cursor, optionally narrowed to its globs."""
    gate = asyncio.Event()
    stuck, free = Recorder("stuck", gate=gate), Recorder("free")
    d = dispatcher(stuck, free)
    await d.start()
    await add_events(store, *created("a", "b"), ("recording.completed", "a"))
    d.notify()

    async def free_done() -> bool:
        return await cursor(store, "free") == 3

    await wait_until(free_done)
    assert await backlog(store) == {"free": 0, "stuck": 3}
    narrowed = await backlog(store, {"stuck": ["*.completed"], "free": ["*"], "gone": ["*"]})
    assert narrowed == {"stuck": 1, "free": 0, "gone": 0}
    gate.set()
    assert await d.drain(10)
    assert await backlog(store) == {"free": 0, "stuck": 0}


async def test_list_events_filters_by_type_and_undelivered(
    store: Store, dispatcher: Factory
) -> None:
    """Events list newest first, by type glob; `undelivered` shows failures and backlog."""
    rec = Recorder("r")
    d = dispatcher(rec, max_attempts=1)
    await d.start()
    ids = await add_events(store, *created("a", "b"), ("recording.completed", "a"))
    rec.fail_ids = {ids[1]}
    d.notify()
    assert await d.drain(10)
    listed = await list_events(store)
    assert [e.id for e in listed] == ids[::-1]
    assert listed[0].deliveries == {"r": "delivered"}
    assert [e.id for e in await list_events(store, type_pattern="*.completed")] == [ids[2]]
    undelivered = await list_events(store, undelivered=True)
    assert [(e.id, e.deliveries) for e in undelivered] == [(ids[1], {"r": "dead"})]
    assert [e.id for e in await list_events(store, limit=1)] == [ids[2]]


async def test_lifecycle_edges(store: Store, dispatcher: Factory) -> None:
    """Drain before start is true, duplicate names are refused, close is idempotent and total."""
    rec = Recorder("r")
    d = dispatcher(rec)
    assert await d.drain(0.1)
    with pytest.raises(ConfigError):
        Dispatcher(store, [Recorder("x"), Recorder("x")], EventsConfig())
    await d.start()
    await d.start()  # a second start is a no-op
    await d.aclose()
    await d.aclose()
    assert rec.closed


# --- the retry schedule --------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [(1, 1.0, 1.0), (1, 0.0, 0.5), (2, 1.0, 2.0), (3, 1.0, 4.0), (10, 1.0, 60.0), (10, 0.0, 30.0)],
)
def test_retry_delay_table(attempt: int, rand: float, expected: float) -> None:
    """Delays double per attempt from the base, jittered into [half, full], capped."""
    cfg = EventsConfig(backoff_base_s=1.0, backoff_max_s=60.0)
    assert retry_delay(attempt, cfg, lambda: rand) == pytest.approx(expected)


@given(attempt=st.integers(min_value=1, max_value=10_000), r=st.floats(0, 1),
       base=st.floats(0.001, 100), cap=st.floats(0.001, 10_000))
def test_retry_delay_stays_positive_and_under_its_cap(
    attempt: int, r: float, base: float, cap: float
) -> None:
    """Whatever the attempt, the delay is positive and never above the cap."""
    delay = retry_delay(attempt, EventsConfig(backoff_base_s=base, backoff_max_s=cap), lambda: r)
    assert 0 < delay <= cap


@pytest.mark.parametrize("via", ["start_lane", "start"])
async def test_a_lane_whose_lease_lapsed_delivers_nothing_until_it_holds_it_again(
    store: Store, dispatcher: Factory, via: str,
) -> None:
    """A worker that stalled past its lane's lease (its `held` says no) delivers no further
    event, mid-batch included, until it holds the lease again; then it goes on from where
    it stopped: each event once, in seq order. The same for a lane a `botasync sync`
    started with its leases (`start(lanes, held)`)."""
    lease = {"held": True, "asked_while_lapsed": 0}

    def held(lane: str = "lane") -> bool:
        assert lane == "lane"
        if not lease["held"]:
            lease["asked_while_lapsed"] += 1
        return bool(lease["held"])

    rec = Recorder("lane")
    original = rec.deliver

    async def deliver(payload: bytes, event_id: str, event_type: str) -> None:
        await original(payload, event_id, event_type)
        if len(rec.got) == 3:
            lease["held"] = False  # the lease lapses while the third is delivered

    rec.deliver = deliver  # type: ignore[method-assign]
    d = dispatcher(rec)
    if via == "start":
        await d.start(lanes=["lane"], held=held)
    else:
        await d.start(lanes=())
    ids = await add_events(store, *created(*(f"rec_{i}" for i in range(8))))
    if via == "start_lane":
        await d.start_lane("lane", held=held)
    d.notify()

    async def paused() -> bool:  # the lane looked at its lease twice since it lapsed
        return int(lease["asked_while_lapsed"]) >= 2

    await wait_until(paused)
    assert rec.ids == ids[:3]
    lease["held"] = True
    d.notify()
    assert await d.drain(10)
    assert rec.ids == ids
    assert await cursor(store, "lane") >= 8
