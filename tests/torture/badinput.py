"""Scenario 3: bad input of every kind, each answered by one clear line and its exit code.

Each `Case` prepares a fresh directory (a simulator world, usually a database already
synced from it), breaks one thing, runs `python -m botasync ...` as a real process and
then checks that the process said what went wrong in one line (no traceback), exited
with the documented code, and that nothing stored was lost or corrupted. The table
also says what is kept, what is retried and what is dead-lettered.

A case runs against the documented dialect unless it names the deployed one: odd items
in the deployed shape that must still be mirrored (an unknown status, numbers as
strings, nulls, missing fields, wrong types) and ids that must never be (they become
file names and URL paths).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from botasync import config
from botasync.service.app import App
from botasync.simulator import Dialect, Simulator, World, serve
from botasync.store import migrations
from tests.mirror import mirror_diff
from tests.torture.harness import (
    API_KEYS,
    KEY,
    NOSCOPE_KEY,
    Run,
    base_sections,
    botasync,
    clean_env,
    integrity,
    rows,
    spawn,
    stop,
    until,
    write_config,
)

CMD_HANDLER = Path(__file__).resolve().parents[1] / "helpers" / "cmd_handler.py"
MAX_ATTEMPTS = 2  # a failing handler: one retry, then the dead letter
RUN_TIMEOUT_S = 30.0
WRONG_KEY = "sk_test_T0rture-wrong-key-0c11"


# --- servers the cases point at: a webhook receiver and an "API" that answers oddly ----------


@dataclass
class Servers:
    """Loopback servers shared by the cases; every request is counted by its path."""

    url: str = ""
    hits: dict[str, int] = field(default_factory=dict)
    closed_port: int = 0

    def count(self, path: str) -> int:
        return self.hits.get(path, 0)


def _servers_app(servers: Servers) -> web.Application:
    async def any_request(request: web.Request) -> web.Response:
        await request.read()
        servers.hits[request.path] = servers.hits.get(request.path, 0) + 1
        mode = request.path.rstrip("/").split("/")[2]
        if mode == "surrogate":
            return web.Response(body=SURROGATE_PAGE, content_type="application/json")
        return _odd_answer(mode)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_request)
    return app


def _odd_answer(mode: str) -> web.Response:
    """What each odd path answers: a 400 envelope, an HTML 200, redirects, 4xx, 5xx."""
    if mode == "bad400":
        return web.json_response({"error": {"code": "invalid_request", "message":
                                  "limit must be between 1 and 50", "details": {"param": "limit"}}},
                                 status=400)
    if mode == "emptymore":  # a page with nothing on it that says more follow, forever
        return web.json_response({"data": [], "has_more": True})
    if mode == "html200":
        return web.Response(text="<html><body><h1>Welcome to our portal</h1></body></html>",
                            content_type="text/html")
    if mode == "redirect":
        return web.Response(status=302, headers={"Location": "/elsewhere/ok"})
    if mode == "notfound":
        return web.Response(status=404, text="no such hook")
    if mode == "fail500":
        return web.Response(status=500, text="receiver crashed")
    return web.Response(status=204)


# valid JSON syntax, but `\ud800` alone is no Unicode character (JavaScript can send it)
SURROGATE_ITEM = World(seed=9, recordings=1).all()[0]
SURROGATE_NAME = "Lone \ufffd surrogate"
SURROGATE_PAGE = orjson.dumps({"data": [{**SURROGATE_ITEM, "name": "Lone @ surrogate"}],
                               "has_more": False}).replace(b"@", b"\\ud800")


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- one case's world -------------------------------------------------------------------------


@dataclass
class Ctx:
    """Everything one case prepares, runs against and checks."""

    name: str
    tmp: Path
    sim: Simulator
    servers: Servers
    db: Path
    sections: dict[str, Any]
    args: list[str] = field(default_factory=lambda: ["sync"])
    env: dict[str, str] = field(default_factory=dict)
    config_text: str | None = None
    preexec: Callable[[], None] | None = None
    exclude: set[str] = field(default_factory=set)  # world ids the mirror must not hold
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.tmp / "handler-out.txt"

    def hook(self, mode: str) -> str:
        return f"{self.servers.url}/hook/{mode}/{self.name}"


Setup = Callable[[Ctx], Awaitable[None]]
Check = Callable[[Ctx, Run], list[str]]


@dataclass(frozen=True)
class Case:
    """One bad input: how to cause it and what botasync must do about it."""

    name: str
    bad: str
    code: int
    line: str | None  # regex of the one line that names the problem; None: no such line
    kept: str
    retried: str
    dead: str
    setup: Setup
    check: Check
    presync: bool = True
    command_run: Callable[[Ctx], Awaitable[Run]] | None = None
    dialect: Dialect = "documented"
    lines: int = 1  # how many lines `line` matches (one per bad item, when there are several)


@dataclass
class Outcome:
    """A case as it ran: its process, what was wrong, how long it took."""

    case: Case
    run: Run
    problems: list[str]  # everything wrong, `damage` included
    damage: list[str]  # what the checks found lost or corrupted
    seconds: float


# --- checks -------------------------------------------------------------------------------


def _snapshot(db: Path) -> list[Any]:
    return [rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in ("recordings", "media", "events")]


def untouched(ctx: Ctx, run: Run) -> list[str]:
    """The mirror and the outbox are exactly as before the run, and sound."""
    out = [] if not ctx.db.exists() or integrity(ctx.db) == "ok" else ["integrity check failed"]
    if ctx.data.get("snapshot") is not None and _snapshot(ctx.db) != ctx.data["snapshot"]:
        out.append("the database changed")
    return out


def bytes_untouched(ctx: Ctx, run: Run) -> list[str]:
    """The database file is byte for byte what it was (it was not even opened for writing)."""
    return [] if ctx.db.read_bytes() == ctx.data["bytes"] else ["the database file changed"]


def nothing_created(ctx: Ctx, run: Run) -> list[str]:
    """No database file appeared anywhere under the case's directory."""
    made = [p.name for p in ctx.tmp.rglob("*.db")]
    return [f"created {made}"] if made else []


def exact(ctx: Ctx, run: Run) -> list[str]:
    """The mirror equals the world, but for what cannot be mirrored (or keeps its last good row)."""
    kept: dict[str, Any] = ctx.data.get("kept", {})
    world = [kept.get(str(i.get("id")), i) for i in ctx.sim.world.all()
             if i.get("id") not in ctx.exclude]
    out = [f"mirror: {d}" for d in mirror_diff(ctx.db, world)[:3]]
    stored = {r[0] for r in rows(ctx.db, "SELECT id FROM recordings")}
    out += [f"{i} was stored" for i in ctx.exclude & stored]
    return out + ([] if integrity(ctx.db) == "ok" else ["integrity check failed"])


@dataclass(frozen=True)
class Odd:
    """An odd item botasync must still mirror, and what its stored rows must hold."""

    fields: dict[str, Any]  # laid over a copy of the newest item (or alone, when `bare`)
    columns: dict[str, Any]  # recordings columns as stored
    media: list[tuple[Any, ...]] | None = None  # its media rows (file_size_bytes, status)
    bare: bool = False


def _row_problems(ctx: Ctx, item: dict[str, Any], odd: Odd) -> list[str]:
    """The item's row is live, holds `odd.columns` and its raw as sent, with one created
    event and `odd.media` (a deployed recording's media row has the recording's id)."""
    rid, names = item["id"], sorted(odd.columns)
    got = rows(ctx.db, f"SELECT {', '.join([*names, 'raw', 'deleted_at'])} "
                       "FROM recordings WHERE id = ?", (rid,))
    if not got:
        return [f"{rid} was not stored"]
    *values, raw, deleted_at = got[0]
    stored = dict(zip(names, values, strict=True))
    out = [] if stored == odd.columns else [f"{rid}: stored {stored}, not {odd.columns}"]
    out += [] if json.loads(raw) == item else [f"{rid}: raw {raw[:200]} is not as sent"]
    out += [] if deleted_at is None else [f"{rid}: tombstoned"]
    created = rows(ctx.db, "SELECT count(*) FROM events WHERE recording_id = ? AND "
                           "type = 'recording.created'", (rid,))
    out += [] if created == [(1,)] else [f"{rid}: {created} created events"]
    if odd.media is not None:
        want = [(rid, *m) for m in odd.media]
        got_media = rows(ctx.db, "SELECT id, file_size_bytes, status FROM media WHERE "
                                 "recording_id = ? ORDER BY position", (rid,))
        out += [] if got_media == want else [f"{rid}: media {got_media} != {want}"]
    return out


def kept(ctx: Ctx, run: Run) -> list[str]:
    """Every odd item is mirrored as its `Odd` says; every other item exact."""
    odds: dict[str, tuple[dict[str, Any], Odd]] = ctx.data["odds"]
    others = [i for i in ctx.sim.world.all() if i.get("id") not in odds]
    out = [f"mirror: {d}" for d in mirror_diff(ctx.db, others)
           if d.split(":", 1)[0] not in odds][:3]
    for item, odd in odds.values():
        out += _row_problems(ctx, item, odd)
    return out + ([] if integrity(ctx.db) == "ok" else ["integrity check failed"])


def skipped(ctx: Ctx, run: Run) -> list[str]:
    """The items with unusable ids left no trace (no row, media or event); the rest exact."""
    out = exact(ctx, run)
    for rec_id in sorted(ctx.exclude):
        traces = rows(ctx.db, "SELECT (SELECT count(*) FROM media WHERE id = ?1 OR "
                              "recording_id = ?1) + (SELECT count(*) FROM events WHERE "
                              "recording_id = ?1)", (rec_id,))
        out += [] if traces == [(0,)] else [f"{rec_id[:40]}: {traces[0][0]} media rows or events"]
    return out


def _deliveries(ctx: Ctx) -> list[tuple[Any, ...]]:
    return rows(ctx.db, "SELECT d.state, d.attempts, e.type FROM deliveries d "
                        "JOIN events e ON e.seq = d.event_seq ORDER BY d.event_seq")


def dead_lettered(ctx: Ctx, run: Run) -> list[str]:
    """The one event went dead after MAX_ATTEMPTS, stays in the outbox; the mirror is exact."""
    got = _deliveries(ctx)
    want = [("dead", MAX_ATTEMPTS, "recording.updated")]
    return exact(ctx, run) + ([] if got == want else [f"deliveries {got} != {want}"])


def delivered_once(ctx: Ctx, run: Run) -> list[str]:
    """The one event was delivered, once, and recorded as delivered."""
    lines = ctx.out.read_text().splitlines() if ctx.out.exists() else []
    got = _deliveries(ctx)
    out = [] if len(lines) == 1 else [f"handler ran {len(lines)} times"]
    cursor = rows(ctx.db, "SELECT seq FROM handler_cursors")
    last = rows(ctx.db, "SELECT max(seq) FROM events")
    settled = got == [("delivered", 1, "recording.updated")] or (not got and cursor == last)
    return exact(ctx, run) + out + ([] if settled else [f"deliveries {got}, cursor {cursor}"])


# --- setups ---------------------------------------------------------------------------------


def log_line(event: str, *fragments: str) -> str:
    """A regex for one JSON log line of `event` holding every fragment, in any key order."""
    parts = [f'"event": "{event}"', *fragments]
    return "".join(f"(?=.*{p})" for p in parts)


def _set(section: str, **values: Any) -> Setup:
    async def setup(ctx: Ctx) -> None:
        ctx.sections.setdefault(section, {}).update(values)

    return setup


def _daemon_with(**api: Any) -> Setup:
    """`botasync run` instead of `sync`, with these [api] settings."""
    async def setup(ctx: Ctx) -> None:
        ctx.args = ["run"]
        ctx.sections["api"].update(api)

    return setup


def _text(text: str) -> Setup:
    async def setup(ctx: Ctx) -> None:
        ctx.config_text = text

    return setup


async def _missing_key_file(ctx: Ctx) -> None:
    ctx.sections["api"].pop("api_key")
    ctx.sections["api"]["api_key_file"] = str(ctx.tmp / "no-such-key-file")


async def _db_under_a_file(ctx: Ctx) -> None:
    blocker = ctx.tmp / "a-file"
    blocker.write_text("not a directory\n")
    ctx.sections["database"]["path"] = str(blocker / "botasync.db")


async def _db_is_a_directory(ctx: Ctx) -> None:
    (ctx.tmp / "a-directory").mkdir()
    ctx.sections["database"]["path"] = str(ctx.tmp / "a-directory")


async def _db_not_sqlite(ctx: Ctx) -> None:
    ctx.db.write_bytes(b"this is not a database, but someone's notes\n" * 200)
    ctx.data["bytes"] = ctx.db.read_bytes()


async def _db_newer(ctx: Ctx) -> None:
    conn = sqlite3.connect(ctx.db)
    try:
        conn.execute(f"PRAGMA user_version = {migrations.LATEST + 5}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the change in the file, not the WAL
    finally:
        conn.close()
    ctx.data["bytes"] = ctx.db.read_bytes()


async def _disk_full(ctx: Ctx) -> None:
    """Room for the database as it is and a little more; the new recordings need far more."""
    for _ in range(600):
        ctx.sim.world.create()
    limit = ctx.db.stat().st_size + 300_000
    ctx.data["limit"] = limit

    def cap_file_size() -> None:  # runs in the child before exec: every file it writes
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    ctx.preexec = cap_file_size


def _odd_api(mode: str) -> Setup:
    async def setup(ctx: Ctx) -> None:
        ctx.sections["api"]["base_url"] = f"{ctx.servers.url}/api/{mode}/{ctx.name}/v1"

    return setup


def _faults(kind: str, timeout_s: float | None = None) -> Setup:
    async def setup(ctx: Ctx) -> None:
        ctx.sim.faults.queue(kind, 20)
        ctx.sim.faults.slow_s = 1.0
        if timeout_s:
            ctx.sections["api"]["timeout_s"] = timeout_s

    return setup


async def _ignore_offset(ctx: Ctx) -> None:
    ctx.sim.ignore_offset = True
    ctx.sections.setdefault("sync", {})["page_size"] = 5  # 40 recordings: 8 pages, all the same


async def _unreachable(ctx: Ctx) -> None:
    ctx.sections["api"]["base_url"] = f"http://127.0.0.1:{ctx.servers.closed_port}/v1"


def _odd_item(ctx: Ctx, fields: dict[str, Any], name: str = "") -> dict[str, Any]:
    """A copy of the newest item with its own id (and media ids), `fields` laid over it."""
    tag = f"torture{ctx.name.replace('_', '')}{name}"
    base = dict(ctx.sim.world.all()[0])
    base["id"] = f"rec_{tag}"
    if isinstance(base.get("media"), list):  # ids of its own: two recordings never share one
        base["media"] = [{**m, "id": f"med_{tag}{i}"} for i, m in enumerate(base["media"])]
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _DROP}


def _item(**fields: Any) -> Setup:
    """Serve an item botasync cannot mirror at the top of the list."""
    async def setup(ctx: Ctx) -> None:
        base = _odd_item(ctx, fields)
        ctx.sim.world.put_raw(base, 0)
        if isinstance(base.get("id"), str):
            ctx.exclude.add(base["id"])

    return setup


def _odd(**odds: Odd) -> Setup:
    """Serve odd items botasync must still mirror, near the top of the list, one per name."""
    async def setup(ctx: Ctx) -> None:
        ctx.data["odds"] = {}
        for n, (name, odd) in enumerate(odds.items()):
            item = _odd_item(ctx, odd.fields, name)
            if odd.bare:
                item = {"id": item["id"], **odd.fields}
            ctx.data["odds"][item["id"]] = (ctx.sim.world.put_raw(item, n * 2), odd)

    return setup


async def _stored_item_turns_bad(ctx: Ctx) -> None:
    """A stored recording's list item comes back with a duration that is no number."""
    victim = ctx.sim.world.ids()[5]
    item = ctx.sim.world.update(victim, duration_ms="forty minutes")
    ctx.data["odds"] = {victim: (item, Odd({}, {"duration_ms": None}))}


# ids that would escape a directory or break a URL path, and one just too long; beside
# them one exactly as long as allowed, which must be mirrored
UNSAFE_IDS = ("rec_abc/def", "rec_../../escape", "rec_with space", "rec_" + "a" * 129)
LONGEST_ID = "rec_" + "b" * 128


async def _unsafe_ids(ctx: Ctx) -> None:
    for i, rec_id in enumerate(UNSAFE_IDS):
        ctx.sim.world.put_raw(_odd_item(ctx, {"id": rec_id}), i * 3)
        ctx.exclude.add(rec_id)
    ctx.sim.world.put_raw(_odd_item(ctx, {"id": LONGEST_ID}), 1)


_DROP = object()




def _handler(**handler: Any) -> Setup:
    """One change in the world (a rename) and one handler for `recording.updated`."""
    async def setup(ctx: Ctx) -> None:
        ctx.sim.world.update(ctx.sim.world.ids()[2], name=f"renamed for {ctx.name}")
        ctx.sections["events"]["max_attempts"] = MAX_ATTEMPTS
        ctx.sections["handlers"] = [{"name": "h", "events": ["recording.updated"],
                                     "timeout_s": 10, **handler}]

    return setup


def _handler_config(**handler: Any) -> Setup:
    """A handler entry that cannot work (the start must stop before touching anything)."""
    async def setup(ctx: Ctx) -> None:
        ctx.sections["handlers"] = [{"name": "h", **handler}]

    return setup


def _cmd(mode: str, **extra: Any) -> Setup:
    async def setup(ctx: Ctx) -> None:
        await _handler(type="command", command=[sys.executable, str(CMD_HANDLER), str(ctx.out),
                                                mode], **extra)(ctx)

    return setup


def _webhook(mode: str) -> Setup:
    async def setup(ctx: Ctx) -> None:
        url = ctx.hook(mode) if mode != "refused" else \
            f"http://127.0.0.1:{ctx.servers.closed_port}/hook"
        await _handler(type="webhook", url=url, timeout_s=5)(ctx)

    return setup


async def _python_raises(ctx: Ctx) -> None:
    (ctx.tmp / "torture_hooks.py").write_text(
        "def refuse(event):\n    raise ValueError('torture handler refuses ' + event['type'])\n")
    ctx.env["PYTHONPATH"] = os.pathsep.join([str(ctx.tmp), clean_env()["PYTHONPATH"]])
    await _handler(type="python", target="torture_hooks:refuse")(ctx)


def _hang_killed(ctx: Ctx, run: Run) -> list[str]:
    """The hung handler and the child it started are gone (killed with their group)."""
    out = dead_lettered(ctx, run)
    pids = ctx.out.read_text().split() if ctx.out.exists() else []
    alive = [p for p in pids if _alive(int(p))]
    return out + ([f"still running: {alive}"] if alive else [])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _redirect_not_followed(ctx: Ctx, run: Run) -> list[str]:
    out = dead_lettered(ctx, run)
    followed = ctx.servers.count("/elsewhere/ok")
    return out + ([f"the redirect was followed {followed} times"] if followed else [])


def _surrogate_replaced(ctx: Ctx, run: Run) -> list[str]:
    """The item is mirrored, its unrepresentable character as U+FFFD; the database sound."""
    got = rows(ctx.db, "SELECT name, json_extract(raw, '$.name') FROM recordings WHERE id = ?",
               (SURROGATE_ITEM["id"],))
    want = [(SURROGATE_NAME, SURROGATE_NAME)]
    out = [] if got == want else [f"stored {got!r}, not {want!r}"]
    return out + ([] if integrity(ctx.db) == "ok" else ["integrity check failed"])


def _requests_to(mode: str, expected: int) -> Check:
    """The odd API saw exactly `expected` requests (a 400 or an empty page is not retried)."""
    def check(ctx: Ctx, run: Run) -> list[str]:
        got = ctx.servers.count(f"/api/{mode}/{ctx.name}/v1/recordings")
        return untouched(ctx, run) + ([] if got == expected else [f"{got} requests, not {expected}"])

    return check


def _consistent(ctx: Ctx) -> list[str]:
    """Sound, and what was committed is whole: every recording has its created event."""
    out = [] if integrity(ctx.db) == "ok" else ["integrity check failed"]
    orphans = rows(ctx.db, "SELECT count(*) FROM recordings r WHERE NOT EXISTS (SELECT 1 FROM "
                           "events e WHERE e.recording_id = r.id AND e.type = 'recording.created')")
    if orphans and orphans[0][0]:
        out.append(f"{orphans[0][0]} recordings without their created event")
    return out


async def _disk_full_then_recover(ctx: Ctx) -> Run:
    """The capped sync fails part way; one without the cap then completes the mirror."""
    cfg = str(ctx.tmp / "botasync.toml")
    run = await botasync("sync", "--config", cfg, env=clean_env(**ctx.env),
                         preexec_fn=ctx.preexec, timeout=RUN_TIMEOUT_S)
    ctx.data["committed"] = rows(ctx.db, "SELECT count(*) FROM recordings")[0][0]
    ctx.data["after_failure"] = _consistent(ctx)
    after = await botasync("sync", "--config", cfg, env=clean_env(**ctx.env), timeout=RUN_TIMEOUT_S)
    ctx.data["recovery"] = after.code
    return run


def _disk_full_check(ctx: Ctx, run: Run) -> list[str]:
    """Consistent after the failure, and the next run loses nothing: the mirror is exact."""
    out = list(ctx.data.get("after_failure", ctx.data.get("after_stop", [])))
    if ctx.data["recovery"] != 0:
        out.append(f"the sync after it exited {ctx.data['recovery']}")
    return out + exact(ctx, run)


# --- SIGTERM while a delivery runs ----------------------------------------------------------------

SLOW_HANDLER = """#!/bin/sh
cat > /dev/null
: > "$1.started"
sleep 1
printf '%s %s\\n' "$BOTASYNC_EVENT_ID" "$BOTASYNC_EVENT_TYPE" >> "$1"
"""


async def _slow_handler(ctx: Ctx) -> None:
    script = ctx.tmp / "slow-handler.sh"
    script.write_text(SLOW_HANDLER)
    script.chmod(0o755)
    await _handler(type="command", command=[str(script), str(ctx.out)])(ctx)
    ctx.sections["sync"] = {"interval_s": 0.2}


async def _sigterm_during_delivery(ctx: Ctx) -> Run:
    """`botasync run`, SIGTERM once the handler has started; then a sync delivers nothing twice."""
    log = ctx.tmp / "run.log"
    proc = await spawn("run", "--config", str(ctx.tmp / "botasync.toml"), log_to=log,
                       env=clean_env(**ctx.env))
    started = Path(f"{ctx.out}.started")
    try:
        await until(started.exists, 20)
    finally:
        code = await stop(proc, signal.SIGTERM, timeout=20)
    after = await botasync("sync", "--config", str(ctx.tmp / "botasync.toml"),
                           env=clean_env(**ctx.env))
    err = log.read_text() + (f"\n[torture: the sync after exited {after.code}]"
                             if after.code else "")
    return Run(code, "", err)


async def _big_change(ctx: Ctx) -> None:
    """Many new recordings behind slow answers: the daemon's first pass walks for seconds."""
    for _ in range(1500):
        ctx.sim.world.create()
    ctx.sim.faults.latency_s = 0.01
    ctx.sections["sync"] = {"page_size": 20, "interval_s": 60}
    ctx.sections["api"]["concurrency"] = 1


async def _sigterm_mid_walk(ctx: Ctx) -> Run:
    """`botasync run`, SIGTERM once its walk has committed a few pages; then one more sync."""
    log, cfg = ctx.tmp / "run.log", str(ctx.tmp / "botasync.toml")
    proc = await spawn("run", "--config", cfg, log_to=log, env=clean_env(**ctx.env))
    try:
        await until(lambda: (rows(ctx.db, "SELECT count(*) FROM recordings") or [(0,)])[0][0]
                    >= 200, 20)
    finally:
        code = await stop(proc, signal.SIGTERM, timeout=20)
    ctx.data["after_stop"] = _consistent(ctx)
    ctx.sim.faults.latency_s = 0.0
    after = await botasync("sync", "--config", cfg, env=clean_env(**ctx.env))
    ctx.data["recovery"] = after.code
    return Run(code, "", log.read_text())


# --- the table ----------------------------------------------------------------------------------

KEEP_ALL = "the mirror and the outbox as they were"
NO_RETRY = "nothing: it cannot get better by itself"
NO_DEAD = "-"
FIX_CONFIG = "nothing: the start stops (fix the file)"
API_RETRY = "the request, [api] max_retries times with backoff; the next run retries the pass"
HANDLER_RETRY = "the delivery, with backoff, up to [events] max_attempts"
HANDLER_DEAD = "the event (dead delivery, in the outbox: `botasync events replay`)"
HANDLER_KEPT = "the mirror, exact; the event in the outbox"
ITEM_KEPT = "every other item (exact); the bad one is skipped and counted in sync_runs.invalid"
DEPLOYED_OPTIONAL = ("name", "device_id", "end_user_id", "duration_seconds", "recorded_at",
                     "file_size_bytes", "content_sha256", "content_sha256_verified_at",
                     "source", "audio_url", "metadata", "updated_at", "project_id")
# what a deployed item may send that botasync must still mirror (each logs at most one
# warning: the two statuses it does not know)
DEPLOYED_ODD = {
    "unknownstatus": Odd({"status": "archived"}, {"status": "archived"}),
    "numbersasstrings": Odd({"status": "completed", "duration_seconds": "125",
                             "file_size_bytes": " 2048 "},
                            {"duration_ms": 125_000, "file_size_bytes": 2048},
                            media=[(2048, "uploaded")]),
    "nulls": Odd(dict.fromkeys(DEPLOYED_OPTIONAL),
                 dict.fromkeys(("name", "device_id", "end_user_id", "duration_ms",
                                "recorded_at", "updated_at", "source", "project_id",
                                "file_size_bytes", "content_sha256", "metadata")),
                 media=[(None, "pending")]),
    "missingfields": Odd({}, {"status": "unknown", "name": None, "created_at": None,
                              "file_size_bytes": None}, media=[], bare=True),
    "wrongtypes": Odd({"status": "completed", "metadata": "not an object",
                       "duration_seconds": "forty", "file_size_bytes": "12 MB",
                       "recorded_at": "yesterday", "device_id": 12345,
                       "name": ["not", "text"], "source": {"kind": "device"}},
                      {"metadata": None, "duration_ms": None, "file_size_bytes": None,
                       "recorded_at": None, "device_id": "12345", "name": None,
                       "source": None, "status": "completed"}),
}


def odd_kept(what: str) -> str:
    """What is kept of an odd item botasync must still mirror."""
    return f"the item, mirrored ({what}), its raw as sent; every other item exact"


CASES: tuple[Case, ...] = (
    Case("bad_toml", "the config file is not TOML", 2,
         r"^error: config file .* is not valid TOML: ", KEEP_ALL, FIX_CONFIG, NO_DEAD,
         _text("[api\nbase_url = \n"), bytes_untouched),
    Case("unknown_key", "an unknown key ([sync] intervl_s)", 2,
         r"^error: \[sync\] intervl_s: unknown key", KEEP_ALL, FIX_CONFIG, NO_DEAD,
         _set("sync", intervl_s=5), bytes_untouched),
    Case("wrong_type", "a wrong type ([api] timeout_s = \"fast\")", 2,
         r"^error: \[api\] timeout_s: Input should be a valid number", KEEP_ALL, FIX_CONFIG,
         NO_DEAD, _set("api", timeout_s="fast"), bytes_untouched),
    Case("bad_value", "a value out of its set ([sync] detail = \"sometimes\")", 2,
         r"^error: \[sync\] detail: Input should be 'changed', 'always' or 'never'", KEEP_ALL,
         FIX_CONFIG, NO_DEAD, _set("sync", detail="sometimes"), bytes_untouched),
    Case("missing_key_file", "api_key_file names a file that does not exist", 2,
         r"^error: \[api\] api_key_file: .*no-such-key-file does not exist", KEEP_ALL,
         FIX_CONFIG, NO_DEAD, _missing_key_file, bytes_untouched),
    Case("no_api_key", "no API key at all", 2, r"^error: \[api\] api_key: no API key", KEEP_ALL,
         FIX_CONFIG, NO_DEAD, _set("api", api_key=""), bytes_untouched),
    Case("unknown_handler_type", "a handler of an unknown type", 2,
         r"^error: \[\[handlers\]\] #1.*type must be one of command, webhook, python, log",
         KEEP_ALL, FIX_CONFIG, NO_DEAD, _handler_config(type="carrier-pigeon"), bytes_untouched),
    Case("webhook_secret_unset", "a webhook whose secret_env is not set", 2,
         r'^error: handler "h": secret_env TORTURE_UNSET_SECRET is not set', KEEP_ALL,
         FIX_CONFIG, NO_DEAD, _handler_config(type="webhook", url="http://127.0.0.1:9/hook",
                                              secret_env="TORTURE_UNSET_SECRET"), bytes_untouched),
    Case("python_target_missing", "a Python handler whose module does not exist", 2,
         r'^error: handler "h": cannot load "no_such_torture_module:fn"', KEEP_ALL, FIX_CONFIG,
         NO_DEAD, _handler_config(type="python", target="no_such_torture_module:fn"),
         bytes_untouched),
    Case("db_under_a_file", "a database path whose parent is a file", 1,
         r"^error: cannot open database .*a-file/botasync\.db: not a directory", KEEP_ALL,
         NO_RETRY, NO_DEAD, _db_under_a_file, nothing_created, presync=False),
    Case("db_is_a_directory", "a database path that is a directory", 1,
         r"^error: cannot open database .*a-directory: ", KEEP_ALL, NO_RETRY, NO_DEAD,
         _db_is_a_directory, nothing_created, presync=False),
    Case("db_not_sqlite", "a database path holding some other file", 1,
         r"^error: cannot open database .*: file is not a database", "the file, byte for byte",
         NO_RETRY, NO_DEAD, _db_not_sqlite, bytes_untouched, presync=False),
    Case("db_newer_schema", "a database from a newer schema version", 1,
         r"^error: database schema version \d+ is newer than this botasync knows",
         "the file, byte for byte", NO_RETRY, NO_DEAD, _db_newer, bytes_untouched),
    Case("disk_full", "the disk fills up mid-sync (RLIMIT_FSIZE)", 1,
         r"^error: database .*: (disk I/O error|database or disk is full)",
         "every page committed before the write failed, with its events; the rest is "
         "rolled back", "the walk, from its checkpoint, on the next run", NO_DEAD,
         _disk_full, _disk_full_check, command_run=_disk_full_then_recover),
    Case("key_rejected_401", "a key the API rejects (401)", 3,
         r"^error: GET /recordings: API key rejected \(401 unauthorized\)$", KEEP_ALL,
         "nothing: the daemon stops (systemd does not restart on exit 3)", NO_DEAD,
         _set("api", api_key=WRONG_KEY), untouched),
    Case("key_rejected_daemon", "`botasync run` with a key the API rejects (401)", 3,
         log_line("auth_failed", r"API key rejected \(401 unauthorized\)"), KEEP_ALL,
         "nothing: the daemon stops at its first pass (exit 3, not restarted)", NO_DEAD,
         _daemon_with(api_key=WRONG_KEY), untouched),
    Case("key_lacks_scope_403", "a key without the recordings:read scope (403)", 3,
         r"^error: GET /recordings: API key lacks the recordings:read scope \(403 forbidden\)$",
         KEEP_ALL, "nothing (exit 3)", NO_DEAD, _set("api", api_key=NOSCOPE_KEY), untouched),
    Case("bad_request_400", "the API answers 400 invalid_request", 1,
         r"^error: GET /recordings: bad request \(400\) parameter 'limit': limit must be",
         KEEP_ALL, "nothing: a 400 is a bug or a bad setting", NO_DEAD, _odd_api("bad400"),
         _requests_to("bad400", 1)),
    Case("html_200", "a 200 whose body is an HTML page (a captive portal)", 1,
         r"^error: GET /recordings: 200 response body is not JSON \(text/html", KEEP_ALL,
         API_RETRY, NO_DEAD, _odd_api("html200"), _requests_to("html200", 3)),
    Case("empty_page_has_more", "an empty page that says more follow (has_more), forever",
         1, r"^error: GET /recordings: an empty page that says more follow", KEEP_ALL,
         "nothing: the walk stops at once; the next pass tries again", NO_DEAD,
         _odd_api("emptymore"), _requests_to("emptymore", 1)),
    Case("offset_ignored", "a server (or proxy) ignoring `offset`: every page is the first",
         1, r"^error: GET /recordings returned the same 5 items for 5 pages in a row", KEEP_ALL,
         "nothing: the next pass resumes where the repeat began", NO_DEAD, _ignore_offset,
         untouched),
    Case("non_utf8_body", "a 200 whose body is not UTF-8", 1,
         r"^error: GET /recordings: 200 response body is not UTF-8", KEEP_ALL, API_RETRY, NO_DEAD,
         _faults("non_utf8"), untouched),
    Case("malformed_json", "a 200 whose JSON is cut short", 1,
         r"^error: GET /recordings: 200 response body is not JSON", KEEP_ALL, API_RETRY, NO_DEAD,
         _faults("malformed"), untouched),
    Case("html_502", "a proxy's HTML 502 page", 1,
         r"^error: GET /recordings: server error 502 \(not the API: text/html\)", KEEP_ALL,
         API_RETRY, NO_DEAD, _faults("html_502"), untouched),
    Case("server_error_5xx", "the API keeps answering 500/503", 1,
         r"^error: GET /recordings: server error 50[03] internal_error", KEEP_ALL, API_RETRY,
         NO_DEAD, _faults("server_error"), untouched),
    Case("dropped_connections", "the API drops every connection", 1,
         r"^error: GET /recordings: connection dropped by the server", KEEP_ALL, API_RETRY,
         NO_DEAD, _faults("drop"), untouched),
    Case("slower_than_timeout", "answers slower than [api] timeout_s", 1,
         r"^error: GET /recordings: no complete answer within 0\.3 s", KEEP_ALL, API_RETRY,
         NO_DEAD, _faults("slow", timeout_s=0.3), untouched),
    Case("api_unreachable", "nothing listens at base_url", 1,
         r"^error: GET /recordings: cannot connect to 127\.0\.0\.1:\d+", KEEP_ALL, API_RETRY,
         NO_DEAD, _unreachable, untouched),
    Case("item_without_id", "a list item without `id`", 0,
         log_line("invalid_item", r'"reason": "no id"'), ITEM_KEPT,
         "nothing (every walk skips it again)", NO_DEAD, _item(id=_DROP), exact),
    Case("item_wrong_type", "a list item with a wrong-typed field (metadata a string)", 0,
         None, odd_kept("metadata null"), "nothing", NO_DEAD,
         _odd(x=Odd({"metadata": "not an object"}, {"metadata": None})), kept),
    Case("item_unknown_status", "a list item with an unknown status (\"archived\")", 0,
         log_line("unknown_status", r'"status": "archived"'),
         odd_kept("its status as sent, watched like an in-flight one"), "nothing",
         NO_DEAD, _odd(x=Odd({"status": "archived"}, {"status": "archived"})), kept),
    Case("item_lone_surrogate", "a list item whose name holds an escaped lone surrogate", 0,
         None, "the item, the unrepresentable character stored as U+FFFD", "nothing",
         NO_DEAD, _odd_api("surrogate"), _surrogate_replaced, presync=False),
    Case("stored_item_turns_bad", "a stored recording comes back with a string duration_ms", 0,
         None, "the recording, live, its raw as sent and duration_ms null; everything else "
         "exact", "nothing", NO_DEAD, _stored_item_turns_bad, kept),
    Case("deployed_odd_items", "deployed: one item each with an unknown status, numbers as "
         "strings, null for every optional value, nothing but an id, values of the wrong "
         "type", 0, log_line("unknown_status"),
         "every item, mirrored with its raw as sent, its row checked (the status as sent; "
         "the numbers read; the columns null and the file pending; status \"unknown\" and no "
         "media row; each unreadable value null); every other item exact",
         "nothing", NO_DEAD, _odd(**DEPLOYED_ODD), kept, dialect="deployed", lines=2),
    Case("deployed_unsafe_ids", "deployed: ids with `/`, `..`, a space, over 128 characters",
         0, log_line("invalid_item", r'"reason": "an id that is not rec_ followed by'),
         "every other item (exact), one of exactly 128 characters too; the four skipped, "
         "counted in sync_runs.invalid, no row, media or event", "nothing (every walk skips "
         "them again)", NO_DEAD, _unsafe_ids, skipped, dialect="deployed",
         lines=len(UNSAFE_IDS)),
    Case("handler_not_found", "a command handler that does not exist", 2,
         r'^error: handler "h": command /nonexistent/torture-handler does not exist', KEEP_ALL,
         FIX_CONFIG, NO_DEAD,
         _handler_config(type="command", command=["/nonexistent/torture-handler"]),
         bytes_untouched),
    Case("handler_hangs", "a command handler that hangs past its timeout", 0,
         log_line("delivery_dead", r'timed out after 0\.5s \(killed\)'), HANDLER_KEPT,
         HANDLER_RETRY + " (each run killed with its children)", HANDLER_DEAD,
         _cmd("hang", timeout_s=0.5), _hang_killed),
    Case("handler_floods", "a command handler that writes 16 MiB to stdout and stderr", 0, None,
         "the mirror, exact; memory bounded (the output is read and dropped)", "nothing",
         NO_DEAD, _cmd("flood"), delivered_once),
    Case("handler_floods_forever", "a command handler that never stops writing", 0,
         log_line("delivery_dead", r'timed out after 0\.5s \(killed\)'), HANDLER_KEPT,
         HANDLER_RETRY, HANDLER_DEAD, _cmd("flood-forever", timeout_s=0.5), dead_lettered),
    Case("webhook_refused", "a webhook target refusing connections", 0,
         log_line("delivery_dead", r'Cannot connect to host 127\.0\.0\.1'), HANDLER_KEPT,
         HANDLER_RETRY, HANDLER_DEAD, _webhook("refused"), dead_lettered),
    Case("webhook_3xx", "a webhook answering 302", 0,
         log_line("delivery_dead", r'HTTP 302 \(redirects are not followed\)'), HANDLER_KEPT,
         HANDLER_RETRY + " (the redirect is never followed)", HANDLER_DEAD, _webhook("redirect"),
         _redirect_not_followed),
    Case("webhook_4xx", "a webhook answering 404", 0,
         log_line("delivery_dead", r'"error": "HTTP 404: no such hook"'), HANDLER_KEPT,
         HANDLER_RETRY, HANDLER_DEAD, _webhook("notfound"), dead_lettered),
    Case("webhook_5xx", "a webhook answering 500", 0,
         log_line("delivery_dead", r'"error": "HTTP 500: receiver crashed"'), HANDLER_KEPT,
         HANDLER_RETRY, HANDLER_DEAD, _webhook("fail500"), dead_lettered),
    Case("python_handler_raises", "a Python handler that raises", 0,
         log_line("delivery_dead", r'ValueError: torture handler refuses recording\.updated'),
         HANDLER_KEPT, HANDLER_RETRY, HANDLER_DEAD, _python_raises, dead_lettered),
    Case("sigterm_mid_walk", "SIGTERM while a walk is committing pages", 0,
         log_line("stopping", r'"signal": "SIGTERM"'),
         "every page committed, with its events; the walk's checkpoint",
         "the walk, from its checkpoint, on the next run", NO_DEAD, _big_change,
         _disk_full_check, command_run=_sigterm_mid_walk),
    Case("sigterm_during_delivery", "SIGTERM while a handler is running", 0,
         log_line("stopping", r'"signal": "SIGTERM"'),
         "the mirror; the delivery in flight finishes (up to 5 s) and is recorded",
         "nothing is repeated: the next run has nothing to deliver", NO_DEAD, _slow_handler,
         delivered_once, command_run=_sigterm_during_delivery),
)


# --- running the table ------------------------------------------------------------------------------


def judge(case: Case, run: Run) -> list[str]:
    """One clear line, no traceback, the documented exit code, and no key anywhere."""
    problems = [] if run.code == case.code else [f"exit code {run.code}, not {case.code}"]
    text = run.out + run.err
    if "Traceback" in text:
        problems.append("a traceback")
    if KEY in text or WRONG_KEY in text:
        problems.append("the API key was printed")
    lines = run.err_lines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    loose = [ln for ln in lines if ln not in errors and not ln.startswith("{")]
    if loose:
        problems.append(f"stray stderr lines: {loose[:2]}")
    if len(errors) > 1:  # the one-shot commands' lines are `error: ...` (see the regexes)
        problems.append(f"{len(errors)} error lines")
    broken = [ln for ln in lines if '"state_save_failed"' in ln or '"run_log_failed"' in ln]
    problems += [f"store failure: {ln[:200]}" for ln in broken[:2]]
    if case.line is None:
        noisy = [ln for ln in lines if '"level": "warning"' in ln or '"level": "error"' in ln
                 or ln.startswith("error: ")]
        problems += [f"unexpected: {ln[:200]}" for ln in noisy[:2]]
    else:
        hits = [ln for ln in lines if re.search(case.line, ln)]
        if len(hits) != case.lines:
            problems.append(f"{len(hits)} lines match {case.line!r}; stderr: {run.err[-600:]!r}")
    return problems


async def _presync(ctx: Ctx) -> None:
    cfg = config.load(write_config(ctx.tmp / "presync.toml", ctx.sections), env={})
    async with await App.open(cfg) as app:
        await app.syncer.full()


async def run_case(case: Case, tmp: Path, servers: Servers, seed: int) -> Outcome:
    """Prepare, break, run and judge one case."""
    started = time.monotonic()
    tmp.mkdir(parents=True, exist_ok=True)
    world = World(seed=seed, recordings=40, dialect=case.dialect)
    async with serve(world, api_keys=API_KEYS, rate_limit=None) as sim:
        db = tmp / "botasync.db"
        ctx = Ctx(case.name, tmp, sim, servers, db, base_sections(sim.url, db))
        if case.presync:
            await _presync(ctx)
            ctx.data["bytes"] = db.read_bytes()
        await case.setup(ctx)
        ctx.data["snapshot"] = _snapshot(db) if db.exists() else None
        cfg = tmp / "botasync.toml"
        if ctx.config_text is not None:
            cfg.write_text(ctx.config_text)
        else:
            write_config(cfg, ctx.sections)
        if case.command_run is not None:
            run = await case.command_run(ctx)
        else:
            run = await botasync(*ctx.args, "--config", str(cfg), env=clean_env(**ctx.env),
                                 preexec_fn=ctx.preexec, timeout=RUN_TIMEOUT_S)
        damage = case.check(ctx, run)
    return Outcome(case, run, judge(case, run) + damage, damage,
                   round(time.monotonic() - started, 2))


async def run_table(tmp: Path, cases: tuple[Case, ...] = CASES, parallel: int = 4) -> list[Outcome]:
    """Every case, a few at a time, against shared loopback servers."""
    servers = Servers(closed_port=_closed_port())
    runner = web.AppRunner(_servers_app(servers), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    servers.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    gate = asyncio.Semaphore(parallel)

    async def one(i: int, case: Case) -> Outcome:
        async with gate:
            return await run_case(case, tmp / case.name, servers, seed=100 + i)

    try:
        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(cases))))
    finally:
        await runner.cleanup()
