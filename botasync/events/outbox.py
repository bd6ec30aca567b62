"""The outbox dispatcher: every handler gets its matching events, in `seq` order, at least once.

The sync appends events to the `events` table in the same transaction as the mirror
change; here one asyncio task per handler walks that table from the handler's cursor
(`handler_cursors.seq`: every event up to it is settled). A success or a dead letter
is written only after the handler returned, so a crash in between re-delivers the
same event (same id) on restart: never lost, possibly repeated. A failing handler
waits with backoff on its own task and blocks nobody else; no transaction is ever
open while a handler runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from botasync import metrics
from botasync.backoff import backoff_delay
from botasync.config import EventsConfig
from botasync.envelope import iso, matches, utc_now
from botasync.errors import BotasyncError, ConfigError, HandlerError
from botasync.events.handlers import (
    BatchFailed,
    BatchHandler,
    Handler,
    Outgoing,
    batching,
    describe,
    one_line,
)
from botasync.lifecycle import AsyncClosing, wait_set
from botasync.store.base import Database
from botasync.store.dialect import glob_condition

log = structlog.get_logger("botasync.outbox")

BATCH = 500  # events read per query
FLUSH_EVERY = 100  # successes recorded per transaction, at most
FLUSH_AFTER_S = 0.25  # ... or when the oldest unrecorded success is this old
SLOW_DELIVERY_S = 0.02  # a handler this slow gets each success recorded at once
ERROR_PAUSE_S = 1.0  # after an unexpected error (the database), before trying again
# an idle worker looks again this often even without a notify: events committed by
# another process (a `botasync sync` run beside the daemon) are not notified here
IDLE_POLL_S = 30.0
# a lane whose lease this worker may no longer hold looks again this often (see `held`)
UNHELD_RECHECK_S = 1.0


def _always_held() -> bool:
    return True

_NEXT_EVENTS = """
SELECT e.seq, e.id, e.type, e.backfill, e.payload, d.state, d.attempts, d.next_attempt_at,
    e.project
FROM events e LEFT JOIN deliveries d ON d.handler = ? AND d.event_seq = e.seq
WHERE e.seq > ? ORDER BY e.seq LIMIT ?
"""
# a success keeps the last error (it says the event needed retries); attempts count up
_RECORD_DELIVERED = """
INSERT INTO deliveries (handler, event_seq, state, attempts, last_attempt_at, delivered_at)
VALUES (?, ?, 'delivered', 1, ?, ?)
ON CONFLICT (handler, event_seq) DO UPDATE SET
    state = 'delivered', attempts = deliveries.attempts + 1,
    last_attempt_at = excluded.last_attempt_at, next_attempt_at = NULL,
    delivered_at = excluded.delivered_at
"""
# a failure never demotes a delivered event (a failed replay of it, for example)
_RECORD_FAILED = """
INSERT INTO deliveries (handler, event_seq, state, attempts, last_error, last_attempt_at,
                        next_attempt_at)
VALUES (?, ?, ?, 1, ?, ?, ?)
ON CONFLICT (handler, event_seq) DO UPDATE SET
    state = CASE WHEN deliveries.state = 'delivered' THEN 'delivered' ELSE excluded.state END,
    attempts = deliveries.attempts + 1, last_error = excluded.last_error,
    last_attempt_at = excluded.last_attempt_at, next_attempt_at = excluded.next_attempt_at
"""
# never backwards: another process (`botasync sync` beside the daemon) may be further on
_SET_CURSOR = "UPDATE handler_cursors SET seq = MAX(seq, ?) WHERE handler = ?"


def retry_delay(attempt: int, events: EventsConfig, rand: Callable[[], float]) -> float:
    """Seconds before retrying after failed attempt number `attempt` (1 = the first try)."""
    return backoff_delay(
        attempt - 1, base=events.backoff_base_s, cap=events.backoff_max_s, rand=rand
    )


def retry_span_s(events: EventsConfig, timeout_s: float) -> float:
    """The longest time from a delivery's first attempt to its last: `max_attempts` attempts
    of up to `timeout_s` each, and between them the longest waits `retry_delay` can draw."""
    waits, attempt = 0.0, 1
    while attempt < events.max_attempts:
        wait = retry_delay(attempt, events, lambda: 1.0)
        if wait >= events.backoff_max_s:  # capped from here on: the rest in one step
            waits += wait * (events.max_attempts - attempt)
            break
        waits += wait
        attempt += 1
    return waits + events.max_attempts * timeout_s


async def start_handlers(
    handlers: Sequence[Handler], events: EventsConfig, *, strict: bool = False
) -> None:
    """Run the start checks of the handlers that have them (`Handler.start`), each told how
    long one of its deliveries may be retried. `strict`: a broker that cannot be reached
    is an error (`config check`), not a warning (`run`, which retries it)."""
    for handler in handlers:
        start = getattr(handler, "start", None)
        if start is not None:
            span = retry_span_s(events, float(getattr(handler, "timeout_s", 0.0)))
            await start(retry_span_s=span, strict=strict)


def reason(exc: Exception) -> str:
    """What a failed delivery records: a handler's own one-line reason, else `Type: message`."""
    return one_line(str(exc)) if isinstance(exc, HandlerError) else describe(exc)


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did: events delivered, events that failed (recorded, not retried)."""

    handler: str
    delivered: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.delivered + self.failed


@dataclass(frozen=True)
class Failure:
    """A failed attempt to record: the event, the attempt number, why, and what comes next."""

    seq: int
    attempt: int
    error: str
    at: str
    next_at: str | None  # None: dead (or settled, for a replay)
    state: str  # pending | dead


@dataclass
class _Lane:
    """One handler's worker state: its cursor and what it delivered but has not recorded."""

    handler: Handler
    batch: BatchHandler | None = None  # the handler, when it takes events in batches
    ahead: asyncio.Task[list[Any]] | None = None  # the rows after a batch in flight
    ahead_after: int = 0
    takes: dict[str, bool] = field(default_factory=dict)  # event type -> its patterns match
    projects: frozenset[str] = frozenset()  # the projects it takes; empty: every one
    cursor: int = 0
    saved_cursor: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # `stop_lane`: this one only
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one delivery at a time
    # whether this worker surely holds the lane's lease now (checked before each delivery:
    # a worker that stalled past it must not deliver beside the lane's new holder)
    held: Callable[[], bool] = _always_held
    done: list[tuple[str, int, str, str]] = field(default_factory=list)
    first_done_at: float = 0.0

    @property
    def name(self) -> str:
        return self.handler.name


@dataclass(frozen=True)
class _Row:
    seq: int
    id: str
    type: str
    backfill: bool
    payload: str
    state: str | None
    attempts: int
    next_attempt_at: str | None
    project: str

    @classmethod
    def of(cls, r: Any) -> _Row:
        return cls(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6] or 0, r[7], r[8])


class Dispatcher(AsyncClosing):
    """Delivers the outbox to the handlers; `start()`, `notify()`, `drain()`, `aclose()`.

    It owns the handlers it is given: `aclose()` closes them too. `projects`: handler name
    -> the projects whose events it takes (`[[handlers]] projects`; absent: every one).
    """

    def __init__(
        self,
        store: Database,
        handlers: Sequence[Handler],
        events: EventsConfig,
        *,
        clock: Callable[[], datetime] = utc_now,
        rand: Callable[[], float] = random.random,
        projects: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        names = [h.name for h in handlers]
        if len(set(names)) != len(names):
            raise ConfigError("handler names must be unique")
        self._store = store
        self._events = events
        self._clock = clock
        self._rand = rand
        only = projects or {}
        self._lanes = {h.name: _Lane(h, batching(h), projects=frozenset(only.get(h.name, ())))
                       for h in handlers}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # the lanes running, by handler
        self._started = False
        self._busy: set[str] = set()
        self._settled = asyncio.Event()
        self._settled.set()
        self._stop = asyncio.Event()
        self._registered = False
        self._closed = False


    @property
    def handler_names(self) -> list[str]:
        """The handlers this dispatcher delivers to."""
        return list(self._lanes)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, lanes: Iterable[str] | None = None,
                    held: Callable[[str], bool] | None = None) -> None:
        """Register the handlers' cursors and start one worker task per handler (`lanes`:
        only those; the others wait for `start_lane`, as a worker does for its leases).
        `held`: by lane name, as `start_lane`'s (a `botasync sync` holding leases)."""
        if self._closed:
            raise BotasyncError("the dispatcher is closed")
        if self._started:
            return
        await start_handlers([lane.handler for lane in self._lanes.values()], self._events)
        await self._register()
        self._started = True
        for name in self._lanes if lanes is None else lanes:
            lane = self._lanes[name]
            if held is not None:
                lane.held = functools.partial(held, name)
            self._spawn(lane)

    def _spawn(self, lane: _Lane) -> None:
        lane.stop.clear()
        self._set_busy(lane, True)
        self._tasks[lane.name] = asyncio.create_task(
            self._run(lane), name=f"botasync-outbox-{lane.name}")

    async def start_lane(self, name: str, held: Callable[[], bool] | None = None) -> None:
        """Start delivering to one handler, from its cursor as stored now: another process
        may have moved it since this one last delivered to it. `held`: False while this
        worker may not hold the lane's lease (its renewal is late); no event is delivered
        then, the lane looks again every `UNHELD_RECHECK_S`."""
        lane = self._lanes[name]
        if not self._started or self._closed or name in self._tasks:
            return
        lane.held = held or _always_held
        lane.cursor = lane.saved_cursor = await self._cursor(name)
        lane.done.clear()
        self._spawn(lane)

    async def stop_lane(self, name: str, grace_s: float = 5.0) -> None:
        """Stop delivering to one handler: a delivery in flight gets `grace_s` to finish,
        what was delivered is recorded; the handler stays open for a later `start_lane`."""
        task = self._tasks.pop(name, None)
        if task is None:
            return
        lane = self._lanes[name]
        lane.stop.set()
        lane.wake.set()
        _, late = await asyncio.wait([task], timeout=grace_s)
        for t in late:
            t.cancel()
        await asyncio.gather(task, return_exceptions=True)

    @property
    def running_lanes(self) -> list[str]:
        """The handlers this dispatcher delivers to right now."""
        return list(self._tasks)

    def _halted(self, lane: _Lane) -> bool:
        return self._stop.is_set() or lane.stop.is_set()

    def notify(self) -> None:
        """New events are committed: wake the idle workers (cheap; call it freely)."""
        if not self._tasks or self._stop.is_set():
            return
        for name in self._tasks:
            lane = self._lanes[name]
            lane.wake.set()
            self._set_busy(lane, True)

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - the daemon's API
        """Wait until every handler has caught up (no event left, no retry pending).

        False on timeout: a handler still failing keeps its events for later.
        """
        if not self._tasks or self._stop.is_set():
            return not self._busy
        self.notify()  # an event committed without a notify is still seen
        return await wait_set(self._settled, timeout)

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Stop: deliveries in flight get `grace_s` to finish, then are cancelled; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for lane in self._lanes.values():
            lane.wake.set()
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self._lanes.values():
            try:
                await lane.handler.aclose()
            except Exception as e:  # a handler's cleanup must not stop the others'
                log.warning("handler_close_failed", handler=lane.name, error=describe(e))

    async def _register(self) -> None:
        """Give new handlers a cursor: the newest event, or 0 if the outbox holds no live ones.

        A handler added later gets new events, not history (`replay` gives that). An
        outbox that holds nothing but the first sync's backfill counts as empty, so
        `deliver_backfill` works even when that sync ran before the handler existed.
        """
        if self._registered:
            return
        async with self._store.transaction() as conn:
            async with conn.execute(
                "SELECT MAX(seq), MAX(CASE WHEN backfill = 0 THEN seq END) FROM events"
            ) as cur:
                row = await cur.fetchone()
            start = int(row[0]) if row is not None and row[1] is not None else 0
            await conn.executemany(
                "INSERT OR IGNORE INTO handler_cursors (handler, seq) VALUES (?, ?)",
                [(name, start) for name in self._lanes],
            )
        rows = await self._store.fetchall("SELECT handler, seq FROM handler_cursors")
        cursors = {r["handler"]: int(r["seq"]) for r in rows}
        for lane in self._lanes.values():
            lane.cursor = lane.saved_cursor = cursors[lane.name]
        self._registered = True

    def _set_busy(self, lane: _Lane, busy: bool) -> None:
        if busy:
            self._busy.add(lane.name)
            self._settled.clear()
        else:
            self._busy.discard(lane.name)
            if not self._busy:
                self._settled.set()

    # --- the worker ------------------------------------------------------------------

    async def _run(self, lane: _Lane) -> None:
        """One handler's loop: deliver what is due, then sleep until woken or a retry is due."""
        try:
            while not self._halted(lane):
                lane.wake.clear()  # before reading: a notify from now on is not lost
                try:
                    wait = await self._step(lane)
                except Exception as e:  # the database; keep the worker alive and retry
                    log.error("outbox_error", handler=lane.name, error=describe(e))
                    await self._sleep(lane, ERROR_PAUSE_S)
                    continue
                if wait == 0 or lane.wake.is_set():
                    continue
                if wait is None:  # caught up; a lane waiting for a retry still has work
                    self._set_busy(lane, False)
                await self._sleep(lane, IDLE_POLL_S if wait is None else min(wait, IDLE_POLL_S))
                self._set_busy(lane, True)
        finally:
            if lane.ahead is not None:
                lane.ahead.cancel()
                with contextlib.suppress(BaseException):
                    await lane.ahead
                lane.ahead = None
            # record what was delivered before a stop or a cancel, so it is not repeated
            try:
                await self._flush(lane)
            except Exception as e:
                log.warning("outbox_flush_failed", handler=lane.name, error=describe(e))
            self._set_busy(lane, False)

    async def _sleep(self, lane: _Lane, seconds: float) -> None:
        """Wait for a wake-up (notify, stop) or `seconds`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lane.wake.wait(), seconds)

    async def _step(self, lane: _Lane) -> float | None:
        """Work through one batch; 0 = more now, seconds = a retry is due then, None = idle."""
        if not lane.held():
            return UNHELD_RECHECK_S
        rows = await self._next_rows(lane)
        if lane.batch is not None:
            return await self._step_batch(lane, lane.batch, rows)
        for r in rows:
            if self._halted(lane):
                break
            if not lane.held():  # stalled mid-batch past the lease: deliver no more
                await self._flush(lane)
                return UNHELD_RECHECK_S
            row = _Row.of(r)
            wait = await self._settle(lane, row)
            if wait is not None:
                await self._flush(lane)
                return wait
        await self._flush(lane)
        return 0.0 if len(rows) == BATCH and not self._halted(lane) else None

    async def _next_rows(self, lane: _Lane) -> list[Any]:
        """The rows after the cursor: read while the batch before them was in flight, when
        it went through whole, else now."""
        ahead, lane.ahead = lane.ahead, None
        if ahead is not None:
            if lane.ahead_after == lane.cursor:
                return await ahead
            ahead.cancel()
            with contextlib.suppress(BaseException):
                await ahead
        return list(await self._store.fetchall(_NEXT_EVENTS, (lane.name, lane.cursor, BATCH)))

    async def _step_batch(
        self, lane: _Lane, handler: BatchHandler, rows: Sequence[Any]
    ) -> float | None:
        """The batch path: the wanted events among `rows` in one `deliver_batch`, recorded in
        one transaction with the cursor; a failure is retried from the first event not
        delivered, in seq order."""
        batch: list[_Row] = []
        last = lane.cursor  # where the cursor goes when the whole batch is delivered
        whole = True
        for r in rows:
            row = _Row.of(r)
            if self._halted(lane):
                whole = False
                break
            wanted = self._wanted(lane, row)
            if wanted and row.next_attempt_at is not None:
                if batch:  # a retry leads a batch of its own
                    whole = False
                    break
                due = datetime.fromisoformat(row.next_attempt_at)
                wait = (due - self._clock()).total_seconds()
                if wait > 0:
                    await self._flush(lane)
                    return wait
            if wanted:
                batch.append(row)
            last = row.seq
        if batch and not lane.held():
            await self._flush(lane)
            return UNHELD_RECHECK_S
        if whole and len(rows) == BATCH and batch:  # read on while the handler works
            lane.ahead_after = last
            lane.ahead = asyncio.create_task(
                self._store.fetchall(_NEXT_EVENTS, (lane.name, last, BATCH)))
        retry = await self._attempt_batch(lane, handler, batch, last) if batch else None
        if retry is not None:
            return retry
        lane.cursor = max(lane.cursor, last)
        await self._flush(lane)
        more = len(rows) == BATCH or not whole
        return 0.0 if more and not self._halted(lane) else None

    async def _attempt_batch(
        self, lane: _Lane, handler: BatchHandler, batch: list[_Row], last: int
    ) -> float | None:
        """Deliver `batch` at once; record what got through, and the failure of the event
        after it (seconds to wait for its retry; 0 when it went dead: go on now)."""
        try:
            async with lane.lock:
                await handler.deliver_batch(
                    [Outgoing(r.payload.encode("utf-8"), r.id, r.type) for r in batch])
            delivered, error = len(batch), ""
        except BatchFailed as e:
            delivered, error = max(0, min(e.delivered, len(batch) - 1)), reason(e)
        except Exception as e:  # HandlerError, or a bug: none of the batch got through
            delivered, error = 0, reason(e)
        at = iso(self._clock())
        lane.done.extend((lane.name, r.seq, at, at) for r in batch[:delivered])
        if not error:
            log.debug("delivered_batch", handler=lane.name, events=len(batch), last_seq=last)
            return None
        failed = batch[delivered]
        lane.cursor = max(lane.cursor, failed.seq - 1)  # everything before it is settled
        wait = await self._failed(lane, failed, failed.attempts + 1, error)
        return 0.0 if wait is None else wait

    def _wanted(self, lane: _Lane, row: _Row) -> bool:
        if row.state in ("delivered", "dead"):  # settled by a replay ahead of the cursor
            return False
        if row.backfill and not self._events.deliver_backfill:
            return False
        if lane.projects and row.project not in lane.projects:
            return False
        takes = lane.takes.get(row.type)
        if takes is None:  # a handler's patterns never change: each type is matched once
            takes = lane.takes[row.type] = matches(row.type, lane.handler.patterns)
        return takes

    async def _settle(self, lane: _Lane, row: _Row) -> float | None:
        """Skip, deliver or fail one event; seconds to wait if it must be retried later."""
        if not self._wanted(lane, row):
            lane.cursor = row.seq
            return None
        if row.next_attempt_at is not None:
            due = datetime.fromisoformat(row.next_attempt_at)
            wait = (due - self._clock()).total_seconds()
            if wait > 0:
                return wait
        return await self._attempt(lane, row, row.attempts + 1)

    async def _attempt(self, lane: _Lane, row: _Row, attempt: int) -> float | None:
        """Call the handler once, then record the outcome (never inside a transaction)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with lane.lock:
                await lane.handler.deliver(row.payload.encode("utf-8"), row.id, row.type)
        except Exception as e:  # HandlerError, or a bug in a handler: both are failures
            return await self._failed(lane, row, attempt, reason(e))
        now = loop.time()
        at = iso(self._clock())
        if not lane.done:
            lane.first_done_at = now
        lane.done.append((lane.name, row.seq, at, at))
        lane.cursor = row.seq
        log.debug("delivered", handler=lane.name, event_id=row.id, event_type=row.type,
                  attempt=attempt)
        if (len(lane.done) >= FLUSH_EVERY or now - lane.first_done_at >= FLUSH_AFTER_S
                or now - started >= SLOW_DELIVERY_S):
            await self._flush(lane)
        return None

    async def _failed(self, lane: _Lane, row: _Row, attempt: int, error: str) -> float | None:
        """Record a failure: schedule the retry, or dead-letter it and move on."""
        now = self._clock()
        dead = attempt >= self._events.max_attempts
        fields: dict[str, Any] = {"handler": lane.name, "event_id": row.id,
                                  "event_type": row.type, "attempt": attempt, "error": error}
        if dead:
            log.error("delivery_dead", **fields)
            fail = Failure(row.seq, attempt, error, iso(now), None, "dead")
            await self._flush(lane, fail, cursor=row.seq)
            return None
        delay = retry_delay(attempt, self._events, self._rand)
        log.warning("delivery_failed", retry_in_s=round(delay, 3), **fields)
        fail = Failure(row.seq, attempt, error, iso(now), iso(now + timedelta(seconds=delay)),
                       "pending")
        await self._flush(lane, fail)
        return delay

    async def _flush(
        self, lane: _Lane, failure: Failure | None = None, cursor: int | None = None
    ) -> None:
        """Write the recorded successes, a failure and the cursor in one transaction."""
        new_cursor = lane.cursor if cursor is None else cursor
        if not lane.done and failure is None and new_cursor == lane.saved_cursor:
            return
        done = list(lane.done)
        async with self._store.transaction() as conn:
            if done:
                await conn.executemany(_RECORD_DELIVERED, done)
            if failure is not None:
                await conn.execute(_RECORD_FAILED, (
                    lane.name, failure.seq, failure.state, failure.error, failure.at,
                    failure.next_at,
                ))
            await conn.execute(_SET_CURSOR, (new_cursor, lane.name))
        metrics.deliveries_recorded(lane.name, len(done), failure.state if failure else None)
        del lane.done[: len(done)]
        lane.cursor = lane.saved_cursor = max(new_cursor, lane.cursor)

    # --- replay ----------------------------------------------------------------------

    async def replay(
        self, handler: str, *, since_seq: int | None = None, type_pattern: str | None = None,
        project: str | None = None,
    ) -> ReplayResult:
        """Deliver past events again to one handler, now, in seq order, one attempt each.

        Takes the events the handler's patterns match (backfill included), from
        `since_seq` (inclusive), of `type_pattern` (a glob) and of `project` when given
        (and only of the handler's own projects). A failure is
        recorded: dead if the handler's worker had already settled that event, else
        pending (the worker will retry it).
        """
        lane = self._lanes.get(handler)
        if lane is None:
            raise ConfigError(f'no handler named "{handler}"')
        if self._closed:
            raise BotasyncError("the dispatcher is closed")
        await self._register()
        after = (since_seq - 1) if since_seq is not None else 0
        delivered = failed = 0
        while True:
            rows = await self._replay_batch(after, type_pattern, project)
            if not rows:
                break
            ok, bad = await self._replay_rows(lane, rows)
            delivered, failed = delivered + ok, failed + bad
            after = rows[-1][0]
        return ReplayResult(handler, delivered, failed)

    async def _replay_batch(
        self, after: int, type_pattern: str | None, project: str | None,
    ) -> list[Any]:
        sql = "SELECT seq, id, type, payload, project FROM events WHERE seq > ?"
        params: list[Any] = [after]
        if project is not None:
            sql += " AND project = ?"
            params.append(project)
        if type_pattern:
            cond, value = glob_condition(self._store.dialect, "type", type_pattern)
            sql += f" AND {cond}"
            params.append(value)
        sql += " ORDER BY seq LIMIT ?"
        params.append(BATCH)
        return list(await self._store.fetchall(sql, params))

    async def _replay_rows(self, lane: _Lane, rows: list[Any]) -> tuple[int, int]:
        """Deliver one batch, then record it in one transaction."""
        done: list[tuple[str, int, str, str]] = []
        failures: list[tuple[Any, ...]] = []
        settled = await self._cursor(lane.name)
        for seq, event_id, event_type, payload, project in rows:
            if not matches(event_type, lane.handler.patterns):
                continue
            if lane.projects and project not in lane.projects:
                continue
            try:
                async with lane.lock:
                    await lane.handler.deliver(payload.encode("utf-8"), event_id, event_type)
            except Exception as e:
                error, at = reason(e), iso(self._clock())
                log.warning("replay_failed", handler=lane.name, event_id=event_id,
                            event_type=event_type, error=error)
                state = "dead" if seq <= settled else "pending"
                failures.append((lane.name, seq, state, error, at, None))
                continue
            at = iso(self._clock())
            done.append((lane.name, seq, at, at))
            log.debug("replayed", handler=lane.name, event_id=event_id, event_type=event_type)
        if done or failures:
            async with self._store.transaction() as conn:
                await conn.executemany(_RECORD_DELIVERED, done)
                await conn.executemany(_RECORD_FAILED, failures)
        return len(done), len(failures)

    async def _cursor(self, handler: str) -> int:
        row = await self._store.fetchone(
            "SELECT seq FROM handler_cursors WHERE handler = ?", (handler,)
        )
        return int(row["seq"]) if row is not None else 0


# --- queries for the command line ----------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """A delivery given up after `max_attempts` (or a failed replay of a settled event)."""

    handler: str
    seq: int
    event_id: str
    type: str
    attempts: int
    last_error: str | None
    last_attempt_at: str | None


@dataclass(frozen=True)
class EventRow:
    """One outbox event as listed, with its delivery state per handler that has one."""

    seq: int
    id: str
    type: str
    recording_id: str | None
    created_at: str
    backfill: bool
    deliveries: dict[str, str]
    project: str = "default"


async def backlog(
    store: Database,
    patterns: Mapping[str, Sequence[str]] | None = None,
    *,
    deliver_backfill: bool = False,
) -> dict[str, int]:
    """Per handler, the events past its cursor it still has to deliver.

    Without `patterns` (handler name -> globs, as configured) every unsettled event
    counts; with them, only the ones the handler takes (backfill per `deliver_backfill`).
    """
    rows = await store.fetchall("SELECT handler, seq FROM handler_cursors ORDER BY handler")
    cursors = {r["handler"]: int(r["seq"]) for r in rows}
    if patterns is None:
        counts = await store.fetchall(
            "SELECT c.handler, COUNT(e.seq) FROM handler_cursors c "
            "LEFT JOIN events e ON e.seq > c.seq GROUP BY c.handler"
        )
        return {r[0]: int(r[1]) for r in counts}
    out: dict[str, int] = {}
    for name, globs in patterns.items():
        by_type = await store.fetchall(
            "SELECT type, backfill, COUNT(*) FROM events WHERE seq > ? GROUP BY type, backfill",
            (cursors.get(name, 0),),
        )
        out[name] = sum(
            int(r[2]) for r in by_type
            if matches(r[0], globs) and (deliver_backfill or not r[1])
        ) if name in cursors else 0
    return out


async def dead(
    store: Database, *, handler: str | None = None, limit: int | None = None
) -> list[DeadLetter]:
    """The dead letters, oldest event first (optionally of one handler, at most `limit`)."""
    sql = (
        "SELECT d.handler, d.event_seq, e.id, e.type, d.attempts, d.last_error, "
        "d.last_attempt_at FROM deliveries d JOIN events e ON e.seq = d.event_seq "
        "WHERE d.state = 'dead'"
    )
    params: list[Any] = []
    if handler is not None:
        sql += " AND d.handler = ?"
        params.append(handler)
    sql += " ORDER BY d.event_seq, d.handler"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [DeadLetter(*tuple(r)) for r in await store.fetchall(sql, params)]


async def list_events(
    store: Database, *, type_pattern: str | None = None, undelivered: bool = False,
    limit: int = 100, project: str | None = None,
) -> list[EventRow]:
    """The newest events first, optionally of a type glob or only the undelivered ones.

    Undelivered: past some handler's cursor (not settled yet), or pending or dead for
    some handler.
    """
    sql = ("SELECT seq, id, type, recording_id, created_at, backfill, project "
           "FROM events e WHERE 1 = 1")
    params: list[Any] = []
    if project is not None:
        sql += " AND project = ?"
        params.append(project)
    if type_pattern:
        cond, value = glob_condition(store.dialect, "type", type_pattern)
        sql += f" AND {cond}"
        params.append(value)
    if undelivered:
        sql += (
            " AND (seq > (SELECT MIN(seq) FROM handler_cursors)"
            " OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq"
            " AND d.state IN ('pending', 'dead')))"
        )
    sql += " ORDER BY seq DESC LIMIT ?"
    params.append(limit)
    rows = await store.fetchall(sql, params)
    states: dict[int, dict[str, str]] = {int(r[0]): {} for r in rows}
    if states:
        for d in await store.fetchall(
            "SELECT event_seq, handler, state FROM deliveries WHERE event_seq BETWEEN ? AND ?",
            (min(states), max(states)),
        ):
            if int(d[0]) in states:
                states[int(d[0])][d[1]] = d[2]
    return [
        EventRow(int(r[0]), r[1], r[2], r[3], r[4], bool(r[5]), states[int(r[0])], r[6])
        for r in rows
    ]
