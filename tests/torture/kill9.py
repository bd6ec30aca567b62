"""Scenario 1: `botasync run` killed with SIGKILL at random moments while the world moves.

Each run is killed at a moment of one kind (its first start's migrations, a walk's
page, a commit, a detail fetch, a delivery, or just somewhere in start-up) and started
again. After the last restart the world is frozen, the daemon stopped with SIGTERM and
one full pass run; then the database must equal the world, every outbox event must
have reached the handler, and every stored state must be explained by its events.

It runs against either dialect of the API. The deployed one pages by cursor, so a walk's
checkpoint is a cursor (`sync_runs.cursor`); there a further kind of moment waits for a
walk holding such a checkpoint, and every kill records whether one was open when it
landed, so the run can show that restarts really resumed walks by cursor.
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botasync.simulator import Dialect, Simulator, World, serve
from tests.mirror import mirror_diff
from tests.torture.harness import (
    API_KEYS,
    KEY,
    Run,
    base_sections,
    botasync,
    delivered_lines,
    integrity,
    rows,
    sh_handler,
    spawn,
    stop,
    until,
    write_config,
)

MOMENTS = ("startup", "walk", "commit", "detail", "delivery")
# the deployed dialect: the same moments plus "cursor" (a walk that has checkpointed a
# cursor), drawn as often as all the others together
CURSOR_MOMENTS = (*MOMENTS, *["cursor"] * len(MOMENTS))
WALK_KINDS = ("full", "reconcile")
LIFECYCLE = {"pending": 0, "streaming": 1, "uploaded": 2, "processing": 3, "completed": 4,
             "failed": 4, "integrity_failure": 4}
STATUS_TYPES = ("recording.created", "recording.status_changed")
MOMENT_TIMEOUT_S = 4.0
# moments that always come (a first start creates its database, a reconcile walk starts every
# second): waited for longer, so a slow start on a busy machine still meets them
SURE_MOMENT_TIMEOUT_S = {"migrations": 15.0, "cursor": 15.0}
ARM_AFTER_MAX_S = 1.2  # a kill waits up to this long before it looks for its moment


@dataclass
class Kill9Result:
    """What a kill -9 run measured; `problems()` is empty when nothing was lost or wrong."""

    dialect: Dialect = "documented"
    kills: int = 0
    moments: Counter[str] = field(default_factory=Counter)
    cursor_kills: int = 0  # kills that landed while a walk held a cursor checkpoint
    cursor_resumes: int = 0  # restarts that went on with a walk from its saved cursor
    cursor_pages: int = 0  # list requests that carried a cursor
    events: int = 0
    deliveries: int = 0
    duplicates: int = 0
    shared_ids: int = 0  # outbox events whose id another event has too
    lost: list[str] = field(default_factory=list)
    invented: list[str] = field(default_factory=list)
    rows_wrong: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    integrity: str = ""
    final_exit: int | None = None
    final_syncs: list[int] = field(default_factory=list)
    dead: int = 0
    recordings: int = 0
    requests: int = 0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = [f"lost {e}" for e in self.lost] + [f"invented {e}" for e in self.invented]
        out += [f"row {r}" for r in self.rows_wrong] + [f"unexplained {u}" for u in self.unexplained]
        if self.shared_ids:
            out.append(f"{self.shared_ids} outbox events share their id with another")
        if self.integrity != "ok":
            out.append(f"integrity: {self.integrity}")
        if self.final_exit != 0:
            out.append(f"SIGTERM exit code {self.final_exit}")
        if any(code != 0 for code in self.final_syncs):
            out.append(f"final sync exit codes {self.final_syncs}")
        if self.dead:
            out.append(f"{self.dead} dead deliveries")
        return out


class _Watch:
    """What the killer watches to pick its moment: the server's log, the files on disk."""

    def __init__(self, sim: Simulator, db: Path, out: Path, log: Path) -> None:
        self.sim, self.db, self.out, self.log = sim, db, out, log
        self.wal = db.with_name(db.name + "-wal")
        self.runs_before = _last_run_id(db)  # the sync_runs rows this process starts come after
        self.spawned = time.monotonic()
        self.arm()

    def arm(self) -> None:
        """From now on: what counts as new."""
        self.mark = len(self.sim.requests)
        self.wal_stamp = _stamp(self.wal)
        self.out_size = _size(self.out)

    def daemon_started(self) -> bool:
        """Whether the process got through its start-up (its log says so)."""
        return self.log.exists() and b'"daemon_started"' in self.log.read_bytes()

    def request(self, detail: bool) -> bool:
        for r in self.sim.requests[self.mark:]:
            is_detail = r.path.startswith("/v1/recordings/")
            if is_detail == detail and r.path.startswith("/v1/recordings"):
                return True
        return False

    def db_created(self) -> bool:
        return self.db.exists()

    def wal_written(self) -> bool:
        return _stamp(self.wal) != self.wal_stamp

    def delivered(self) -> bool:
        return _size(self.out) > self.out_size

    def cursor_walk(self) -> bool:
        """Whether a walk this process started is open and has a cursor to resume from."""
        return bool(rows(self.db, "SELECT 1 FROM sync_runs WHERE id > ? AND kind IN (?, ?) "
                                  "AND ended_at IS NULL AND cursor IS NOT NULL",
                         (self.runs_before, *WALK_KINDS)))


def _last_run_id(db: Path) -> int:
    got = rows(db, "SELECT max(id) FROM sync_runs")
    return int(got[0][0] or 0) if got else 0


def _stamp(path: Path) -> tuple[int, int]:
    """Size and modification time: a commit after a checkpoint rewrites the WAL in place."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (st.st_size, st.st_mtime_ns)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def _wait_moment(kind: str, watch: _Watch, rng: random.Random) -> bool:
    """Return at a moment of `kind` (True), or after the timeout without one (False)."""
    import asyncio

    if kind == "startup":
        await asyncio.sleep(rng.uniform(0.05, 1.2))
        return True
    if kind != "migrations":  # let it live a while: later walks, reconciles, deliveries,
        # but look only once its start-up is over, which a busy machine stretches to seconds
        arm_at = watch.spawned + rng.uniform(0.0, ARM_AFTER_MAX_S)
        await until(watch.daemon_started, SURE_MOMENT_TIMEOUT_S["migrations"], interval=0.01)
        await asyncio.sleep(max(0.0, arm_at - time.monotonic()))
        watch.arm()
    probe = {
        "migrations": watch.db_created,
        "walk": lambda: watch.request(detail=False),
        "detail": lambda: watch.request(detail=True),
        "commit": watch.wal_written,
        "delivery": watch.delivered,
        "cursor": watch.cursor_walk,
    }[kind]
    interval = 0.003 if kind == "cursor" else 0.001  # a query, not a stat: a little slower
    timeout = SURE_MOMENT_TIMEOUT_S.get(kind, MOMENT_TIMEOUT_S)
    hit = await until(probe, timeout, interval=interval) is not None
    jitter = {"walk": 0.04, "delivery": 0.03, "commit": 0.005, "cursor": 0.03}.get(kind, 0.0)
    if hit and jitter:
        await asyncio.sleep(rng.uniform(0, jitter))
    return hit


def daemon_config(tmp: Path, sim: Simulator, db: Path, out: Path) -> Path:
    """The daemon under torture: short ticks, frequent reconciles, every event delivered."""
    handler = sh_handler(tmp)
    sections = base_sections(
        sim.url, db,
        api={"concurrency": 2, "max_retries": 5},
        sync={"interval_s": 0.2, "reconcile_every_s": 1.0, "page_size": 20},
        events={"deliver_backfill": True, "max_attempts": 1000},
        handlers=[{"name": "append", "type": "command", "command": [str(handler), str(out)],
                   "timeout_s": 10}],
    )
    return write_config(tmp / "botasync.toml", sections)


def _moment(i: int, dialect: Dialect, rng: random.Random) -> str:
    """The kind of moment the i-th kill waits for; a deployed run's second waits for a cursor."""
    if i == 0:
        return "migrations"
    if dialect != "deployed":
        return rng.choice(MOMENTS)
    return "cursor" if i == 1 else rng.choice(CURSOR_MOMENTS)


async def run_kill9(
    tmp: Path, *, kills: int, seed: int = 1, recordings: int = 150, move_every_s: float = 0.05,
    dialect: Dialect = "documented",
) -> Kill9Result:
    """Kill `botasync run` `kills` times at random moments, then check everything."""
    started = time.monotonic()
    result = Kill9Result(dialect=dialect)
    rng = random.Random(seed)
    world = World(seed=seed, recordings=recordings, dialect=dialect)
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    async with serve(world, api_keys=API_KEYS, rate_limit=None, latency_s=0.002) as sim:
        db, out = tmp / "botasync.db", tmp / "delivered.txt"
        cfg = daemon_config(tmp, sim, db, out)
        sim.start_moving(move_every_s, 1)
        for i in range(kills):
            kind = _moment(i, dialect, rng)
            log = logs / f"run-{i:03d}.log"
            watch = _Watch(sim, db, out, log)
            result.outputs.append(log)
            proc = await spawn("run", "--config", str(cfg), log_to=log)
            try:
                hit = await _wait_moment(kind, watch, rng)
            finally:
                proc.kill()
                await proc.wait()
            result.kills += 1
            result.moments[kind if hit else f"{kind} (none came: killed at timeout)"] += 1
            result.cursor_kills += watch.cursor_walk()  # read after the kill: what it left
        await _last_run(tmp, sim, cfg, db, result)
        result.requests = len(sim.requests)
        result.cursor_pages = sum(1 for r in sim.requests if r.path == "/v1/recordings"
                                  and "cursor=" in r.query)
        result.cursor_resumes = sum(_resumed_by_cursor(p) for p in result.outputs)
        result.recordings = len(sim.world)
        _check(db, out, sim, result)
    result.seconds = round(time.monotonic() - started, 1)
    return result


async def _last_run(tmp: Path, sim: Simulator, cfg: Path, db: Path, result: Kill9Result) -> None:
    """Restart once more, freeze the world, stop cleanly, then run the full passes."""
    log = tmp / "logs" / "run-final.log"
    result.outputs.append(log)
    proc = await spawn("run", "--config", str(cfg), log_to=log)
    try:
        await until(lambda: _ticks(db) > 0, 30)
        await sim.stop_moving()
        frozen = _ticks(db)
        await until(lambda: _ticks(db) >= frozen + 2, 30)
    finally:
        result.final_exit = await stop(proc, signal.SIGTERM)
    # the first sync finishes a walk the SIGTERM interrupted (it resumes at its checkpoint);
    # the second is one full pass, from the top, over the frozen world
    for n in range(2):
        run = await botasync("sync", "--config", str(cfg), "--deliver-timeout", "60", timeout=120)
        _keep(tmp / "logs" / f"sync-final-{n}.log", run, result)
        result.final_syncs.append(run.code)


def _keep(path: Path, run: Run, result: Kill9Result) -> None:
    path.write_text(run.out + run.err)
    result.outputs.append(path)


def _resumed_by_cursor(log: Path) -> int:
    """How many walks a process's log says it resumed from a saved cursor."""
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if '"walk_resumed"' in line and '"by_cursor": true' in line)


def _ticks(db: Path) -> int:
    got = rows(db, "SELECT count(*) FROM sync_runs WHERE kind = 'hot' AND ended_at IS NOT NULL")
    return int(got[0][0]) if got else 0


def _check(db: Path, out: Path, sim: Simulator, result: Kill9Result) -> None:
    """Mirror, integrity, outbox against deliveries, and every stored state explained."""
    result.rows_wrong = mirror_diff(db, sim.world.all())
    result.integrity = integrity(db)
    events = {r[0]: (r[1], r[2], r[3]) for r in rows(
        db, "SELECT id, type, recording_id, seq FROM events")}
    got = delivered_lines(out)
    total = rows(db, "SELECT count(*) FROM events")
    result.shared_ids = (int(total[0][0]) if total else 0) - len(events)
    result.events, result.deliveries = len(events), len(got)
    got_ids = {g[0] for g in got}
    result.duplicates = len(got) - len(got_ids)
    result.lost = sorted(set(events) - got_ids)
    result.invented = [f"{i} {t} (not in the outbox as that type)" for i, t in got
                       if events.get(i, ("",))[0] != t]
    result.dead = len(rows(db, "SELECT 1 FROM deliveries WHERE state = 'dead'"))
    result.unexplained = _unexplained(db, got_ids) + _impossible(db, got_ids)


def _payloads(db: Path, delivered: set[str]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Per recording, its delivered events in outbox order: (type, envelope)."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for event_id, type_, rec_id, payload in rows(
            db, "SELECT id, type, recording_id, payload FROM events ORDER BY seq"):
        if event_id in delivered:
            out.setdefault(rec_id, []).append((type_, json.loads(payload)))
    return out


def _unexplained(db: Path, delivered: set[str]) -> list[str]:
    """Stored recordings whose state no delivered event carries (a change without its event)."""
    by_rec = _payloads(db, delivered)
    problems = []
    for rec_id, status, raw, deleted_at in rows(
            db, "SELECT id, status, raw, deleted_at FROM recordings"):
        evs = by_rec.get(rec_id, [])
        if deleted_at is not None:
            if not evs or evs[-1][0] != "recording.deleted":
                problems.append(f"{rec_id}: tombstoned without a last recording.deleted")
            continue
        status_evs = [e for t, e in evs if t in STATUS_TYPES or t.removeprefix("recording.")
                      in LIFECYCLE]
        if not status_evs or status_evs[-1]["data"].get("status") != status:
            problems.append(f"{rec_id}: stored status {status} not in its last status event")
        if not evs or _comparable(evs[-1][1]["data"]) != _comparable(json.loads(raw)):
            problems.append(f"{rec_id}: stored row differs from its last event's data")
    return problems


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    """A recording without what changes with no event: `updated_at`, the `audio_url` query.

    The deployed dialect signs the URL anew on every answer, and moves `updated_at` with
    every change, even one undone before the next poll (a name edited and edited back):
    a row rewritten for those alone gets no event, since nothing worth one changed.
    """
    out = {k: v for k, v in data.items() if k != "updated_at"}
    url = out.get("audio_url")
    if isinstance(url, str):
        out["audio_url"] = urlsplit(url)._replace(query="").geturl()
    return out


def _impossible(db: Path, delivered: set[str]) -> list[str]:
    """Events the world cannot have caused: it only moves statuses forward, never re-creates."""
    problems = []
    for rec_id, evs in _payloads(db, delivered).items():
        kinds = Counter(t for t, _ in evs)
        for once in ("recording.created", "recording.transcribed", "recording.deleted"):
            if kinds[once] > 1:
                problems.append(f"{rec_id}: {kinds[once]} x {once}")
        ranks = [LIFECYCLE.get(e["data"].get("status"), -1) for t, e in evs
                 if t in STATUS_TYPES]
        if any(b < a for a, b in itertools.pairwise(ranks)):
            problems.append(f"{rec_id}: status went backwards in its events")
    return problems


def leaked(paths: list[Path], key: str = KEY) -> list[str]:
    """The files among `paths` that contain the API key."""
    return [str(p) for p in paths if p.exists() and key.encode() in p.read_bytes()]
