"""`botasync demo`: the built-in simulator and the daemon in one process, events on screen.

No key, no config: a simulated project of a few hundred recordings that keeps moving,
mirrored into `./botasync-demo.db`, every delivered event printed as one line.

The demo starts from a clean slate, but only ever deletes a database it made itself: it
takes the database's daemon lock first (a daemon or another demo using it stops it
there), and a file that is not marked as a demo database (the `demo_database` key in
`state`) is refused, never replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from botasync import config
from botasync.config import SERVICE
from botasync.envelope import iso, utc_now
from botasync.errors import BotasyncError
from botasync.jsoncodec import loads
from botasync.locks import ExclusiveLock
from botasync.service.daemon import Daemon, daemon_lock
from botasync.simulator import Simulator, World, serve
from botasync.store.sqlite import Mirror, Store
from botasync.sync.syncer import PassStats

DEMO_MARK = "demo_database"  # key in `state`: this database was made by `botasync demo`


class NotADemoDatabase(BotasyncError):
    """`--db` names a file the demo did not make: it is left alone."""

    exit_code = 2

DEMO_KEY = "sk_test_demo"
# the demo plays the API as deployed: what a new user's project answers today (Bota's
# examples record it); `--dialect documented` plays the reference pages' API
DEMO_DIALECT: Literal["documented", "deployed"] = "deployed"
STYLE = {
    "recording.created": "green", "recording.completed": "bold green",
    "recording.failed": "bold red", "recording.deleted": "red", "recording.updated": "yellow",
    "recording.transcribed": "cyan", "recording.status_changed": "blue",
}


class PrintHandler:
    """A handler that prints each event as one readable line."""

    name = "demo"
    patterns = ["*"]

    def __init__(self, console: Console) -> None:
        self.console = console
        self.count = 0
        self.status_changes = 0

    async def deliver(self, payload: bytes, event_id: str, event_type: str) -> None:
        event = loads(payload)
        self.count += 1
        self.status_changes += event_type == "recording.status_changed"
        # soft_wrap: a long line is the terminal's to wrap, never cut at a fixed width
        self.console.print(describe(event), style=STYLE.get(event_type, ""), highlight=False,
                           soft_wrap=True)

    async def aclose(self) -> None:
        return None


def describe(event: dict[str, Any]) -> str:
    """One line for a person: time, type, recording, and what changed."""
    data, prev = event.get("data") or {}, event.get("previous") or {}
    name = repr(data["name"]) if data.get("name") else "(no name)"
    what = ""
    if "status" in prev and event["type"].startswith("recording."):
        what = f"{prev['status'] or 'new'} -> {data.get('status')}"
    elif event["type"] == "recording.updated":
        what = "changed: " + ", ".join(sorted(prev))
    elif event["type"].startswith("media."):
        m = event.get("media") or {}
        what = f"{m.get('type')} {m.get('id')} {m.get('status')}"
    return f"{event['created_at'][11:19]}  {event['type']:<26} {data.get('id')}  {name}  {what}"


def demo_config(url: str, db: Path) -> config.Config:
    """The daemon's config for the demo: a fast tick and a short reconcile period."""
    return config.load(env={}, overrides={
        "api": {"base_url": url, "api_key": DEMO_KEY, "requests_per_minute": 400},
        "sync": {"interval_s": 2, "reconcile_every_s": 30},
        "database": {"path": str(db)},
        "logging": {"level": "warning"},
    })


def is_demo_database(db: Path) -> bool:
    """True if `db` is a SQLite database that `botasync demo` made (read without writing)."""
    try:
        uri = f"{db.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (DEMO_MARK,)).fetchone()
    except sqlite3.Error:
        return False  # not SQLite, not ours, or unreadable: all the same to the demo
    return row is not None


def clear_demo_database(db: Path) -> None:
    """Remove a previous demo's database; refuse (one line, exit 2) any other file.

    Call it holding the database's daemon lock, so no daemon is writing the file.
    """
    files = [Path(f"{db}{suffix}") for suffix in ("", "-wal", "-shm")]
    if not any(f.exists() or f.is_symlink() for f in files):
        return
    if db.is_symlink() or not db.is_file() or not is_demo_database(db):
        raise NotADemoDatabase(
            f"{db} exists and is not a database made by `botasync demo`; the demo never "
            "replaces it: choose another --db")
    for f in files:
        f.unlink(missing_ok=True)


async def prepare(db: Path) -> ExclusiveLock:
    """Take the database's lock, clear a previous demo's database, make and mark a new one."""
    lock = daemon_lock(db)
    lock.acquire()  # a daemon or another demo on this database: one line, nothing touched
    try:
        clear_demo_database(db)
        async with await Store.open(db) as store:
            await Mirror(store, SERVICE).set_state(DEMO_MARK, iso(utc_now()))
    except BaseException:
        lock.release()
        raise
    return lock


async def run_demo(console: Console, *, db: Path, seconds: float | None, recordings: int,
                   seed: int, move_every_s: float,
                   dialect: Literal["documented", "deployed"] = DEMO_DIALECT) -> PrintHandler:
    """Serve a moving simulated project and mirror it until Ctrl-C or `seconds`."""
    lock = await prepare(db)
    world = World(seed=seed, recordings=recordings, dialect=dialect)
    printer = PrintHandler(console)
    async with serve(world, api_keys={DEMO_KEY: {"recordings:read"}}, rate_limit=500) as sim:
        console.print(f"[bold]simulated Bota project[/bold]: {recordings} recordings at {sim.url}"
                      f" ({dialect} dialect)", soft_wrap=True)
        console.print(f"[bold]mirror[/bold]: {db}  (events of the first sync are kept, "
                      "not delivered; live ones print below)", soft_wrap=True)
        daemon = Daemon(demo_config(sim.url, db), handle_signals=False, lock=lock,
                        extra_handlers=[printer], on_pass=_announce(console, sim, move_every_s))
        await _run_until(daemon, seconds)
    return printer


def _announce(console: Console, sim: Simulator, move_every_s: float) -> Any:
    """After the first full walk, say so and set the world moving."""
    state = {"done": False}

    def on_pass(stats: PassStats) -> None:
        if stats.kind == "full" and stats.complete and not state["done"]:
            state["done"] = True
            console.print(f"[bold]first sync[/bold]: {stats.created} recordings in "
                          f"{stats.pages} pages, {stats.requests} requests, {stats.seconds:.1f} s",
                          soft_wrap=True)
            console.print("[dim]the simulated world now changes every few seconds...[/dim]",
                          soft_wrap=True)
            sim.start_moving(move_every_s, 1)

    return on_pass


async def _run_until(daemon: Daemon, seconds: float | None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, daemon.stop)
    runner = asyncio.create_task(daemon.run())
    try:
        if seconds:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(runner), timeout=seconds)
            daemon.stop()
        await runner
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def next_steps(db: Path) -> list[str]:
    """What to try after the demo."""
    return [
        f"BOTASYNC_DB={db} botasync recordings list --status completed",
        f"BOTASYNC_DB={db} botasync recordings show <id>",
        f"BOTASYNC_DB={db} botasync events list --limit 20",
        f"BOTASYNC_DB={db} botasync status",
        f"sqlite3 {db} \"SELECT status, count(*) FROM recordings GROUP BY status\"",  # noqa: S608
    ]
