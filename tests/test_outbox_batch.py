"""The dispatcher's batch path (handlers offering `deliver_batch`) on a real SQLite file:
seq order, one recording per batch, a failure retried from the first event not delivered,
dead letters, filters, and a batch cut short by a stop delivered again on restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from botasync.config import EventsConfig
from botasync.errors import HandlerError
from botasync.events.handlers import BatchFailed, Outgoing, batching
from botasync.events.outbox import BATCH, Dispatcher
from botasync.store.base import Database as Store
from tests.pgserver import TestDb
from tests.test_outbox import FAST, Recorder, add_events, created, cursor, delivery


@dataclass
class BatchRecorder:
    """A real in-process batch handler: records each batch; fails on demand.

    `fail_at`: an event id the handler refuses (the ones before it in the batch are
    delivered) `times` times; `raise_all`: refuse whole batches with a plain error.
    """

    name: str
    patterns: list[str] = field(default_factory=lambda: ["*"])
    fail_at: str | None = None
    times: int = 1
    raise_all: int = 0
    gate: asyncio.Event | None = None
    batches: list[list[str]] = field(default_factory=list)
    got: list[str] = field(default_factory=list)
    singles: int = 0

    async def deliver(self, payload: bytes, event_id: str, event_type: str) -> None:
        self.singles += 1
        await self.deliver_batch([Outgoing(payload, event_id, event_type)])

    async def deliver_batch(self, events: Sequence[Outgoing]) -> None:
        ids = [e.event_id for e in events]
        self.batches.append(ids)
        if self.raise_all:
            self.raise_all -= 1
            raise HandlerError("broker away")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_at in ids and self.times:
            self.times -= 1
            at = ids.index(self.fail_at)
            self.got += ids[:at]
            raise BatchFailed(at, f"refused {self.fail_at}")
        self.got += ids

    async def aclose(self) -> None:
        pass


@pytest.fixture
async def store(database: TestDb) -> AsyncIterator[Store]:
    s = await database.open()
    yield s
    await s.aclose()


async def dispatch(store: Store, *handlers: Any, **events: Any) -> Dispatcher:
    d = Dispatcher(store, list(handlers), EventsConfig(**{**FAST, **events}))
    await d.start()
    return d


async def test_batches_in_seq_order_recorded_once_each(store: Store) -> None:
    """1,200 events go in batches of at most BATCH, in seq order; each delivery recorded,
    the cursor at the last event."""
    h = BatchRecorder("b")
    assert batching(h) is h and batching(Recorder("r")) is None
    d = await dispatch(store, h)
    try:
        ids = await add_events(store, *created(*(f"rec_{i}" for i in range(1200))))
        d.notify()
        assert await d.drain(20)
    finally:
        await d.aclose()
    assert h.got == ids and h.singles == 0
    assert all(len(b) <= BATCH for b in h.batches) and len(h.batches) <= 4
    assert await cursor(store, "b") == 1200
    row = await store.fetchone("SELECT count(*), min(attempts), max(attempts) FROM deliveries "
                               "WHERE handler = 'b' AND state = 'delivered'")
    assert row is not None and tuple(row) == (1200, 1, 1)


async def test_a_failure_is_retried_from_the_first_event_not_delivered(store: Store) -> None:
    """Events before the failed one are settled; the retry starts at it, in order, and
    the failure is recorded on it alone."""
    h = BatchRecorder("b", times=2)
    d = await dispatch(store, h)
    try:
        h.gate = asyncio.Event()  # held until the events are all written
        ids = await add_events(store, *created(*(f"rec_{i}" for i in range(10))))
        h.fail_at = ids[4]
        d.notify()
        h.gate.set()
        assert await d.drain(10)
    finally:
        await d.aclose()
    assert h.got == ids  # each once, in order
    assert h.batches[0] == ids and h.batches[1][0] == ids[4] and h.batches[2][0] == ids[4]
    failed = await delivery(store, "b", ids[4])
    assert failed is not None
    assert (failed["state"], failed["attempts"]) == ("delivered", 3)
    assert failed["last_error"] == f"refused {ids[4]}"
    for event_id in ids[:4] + ids[5:]:
        row = await delivery(store, "b", event_id)
        assert row is not None and (row["state"], row["attempts"]) == ("delivered", 1)


async def test_a_failed_batch_waits_for_its_backoff(store: Store) -> None:
    """After a failure the lane waits `retry_delay` before the retry, like a single event."""
    h = BatchRecorder("b", raise_all=1)
    d = await dispatch(store, h, backoff_base_s=0.3, backoff_max_s=0.3)
    try:
        ids = await add_events(store, *created("a", "b"))
        d.notify()
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await d.drain(10)
        assert loop.time() - started >= 0.15  # equal jitter: at least half the delay
    finally:
        await d.aclose()
    assert h.got == ids and len(h.batches) == 2
    row = await delivery(store, "b", ids[0])
    assert row is not None and row["attempts"] == 2 and row["last_error"] == "broker away"


async def test_an_event_refused_every_time_goes_dead_and_the_rest_flow(store: Store) -> None:
    h = BatchRecorder("b", times=99, gate=asyncio.Event())
    d = await dispatch(store, h, max_attempts=3)
    try:
        ids = await add_events(store, *created(*(f"rec_{i}" for i in range(6))))
        h.fail_at = ids[2]
        d.notify()
        assert h.gate is not None
        h.gate.set()
        assert await d.drain(10)
    finally:
        await d.aclose()
    assert h.got == ids[:2] + ids[3:]
    dead = await delivery(store, "b", ids[2])
    assert dead is not None and (dead["state"], dead["attempts"]) == ("dead", 3)
    assert await cursor(store, "b") == 6


async def test_filters_and_backfill_are_skipped_and_the_cursor_passes_them(store: Store) -> None:
    """Only the handler's types are sent; the cursor still moves past the others."""
    await add_events(store, *created("old"), backfill=True)
    h = BatchRecorder("b", patterns=["*.completed"])
    d = await dispatch(store, h, deliver_backfill=False)
    try:
        ids = await add_events(store, *created("a"), ("recording.completed", "a"),
                               *created("b"), ("recording.completed", "b"))
        d.notify()
        assert await d.drain(10)
    finally:
        await d.aclose()
    assert h.got == [ids[1], ids[3]]
    assert await cursor(store, "b") == 5


async def test_a_batch_cut_short_by_a_stop_is_delivered_again_on_restart(
    store: Store,
) -> None:
    """A batch in flight when the dispatcher stops is not recorded: the next start sends
    it again (at least once; a broker drops the repeat by its id)."""
    h = BatchRecorder("b", gate=asyncio.Event())
    d = await dispatch(store, h)
    ids = await add_events(store, *created("a", "b", "c"))
    d.notify()
    while not h.batches:
        await asyncio.sleep(0.01)
    await d.aclose(grace_s=0.05)  # the batch is cancelled while it waits on its gate
    assert await cursor(store, "b") == 0
    again = BatchRecorder("b")
    d = await dispatch(store, again)
    try:
        d.notify()
        assert await d.drain(10)
    finally:
        await d.aclose()
    assert again.got == ids


async def test_a_failure_drops_the_rows_read_ahead(store: Store) -> None:
    """Past BATCH events the next rows are read while a batch is in flight; a batch that
    fails drops them, and the retry reads again from the event that failed."""
    h = BatchRecorder("b", gate=asyncio.Event())
    d = await dispatch(store, h)
    try:
        ids = await add_events(store, *created(*(f"rec_{i}" for i in range(BATCH + 300))))
        h.fail_at = ids[BATCH - 10]
        d.notify()
        assert h.gate is not None
        h.gate.set()
        assert await d.drain(20)
    finally:
        await d.aclose()
    assert h.got == ids
    assert [(b[0], len(b)) for b in h.batches] == [(ids[0], BATCH), (ids[BATCH - 10], 310)]
