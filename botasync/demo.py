"""`botasync demo`: the built-in simulator and the daemon in one process, events on screen.

No key, no config: a simulated project of a few hundred recordings that keeps moving,
mirrored into `./botasync-demo.db`, every delivered event printed as one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from rich.console import Console

from botasync import config
from botasync.daemon import Daemon
from botasync.jsoncodec import loads
from botasync.simulator import Simulator, World, serve
from botasync.sync import PassStats

DEMO_KEY = "sk_test_demo"
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
        self.console.print(describe(event), style=STYLE.get(event_type, ""), highlight=False)

    async def aclose(self) -> None:
        return None


def describe(event: dict[str, Any]) -> str:
    """One line for a person: time, type, recording, and what changed."""
    data, prev = event.get("data") or {}, event.get("previous") or {}
    name = data.get("name") or "(no name)"
    what = ""
    if "status" in prev and event["type"].startswith("recording."):
        what = f"{prev['status'] or 'new'} -> {data.get('status')}"
    elif event["type"] == "recording.updated":
        what = "changed: " + ", ".join(sorted(prev))
    elif event["type"].startswith("media."):
        m = event.get("media") or {}
        what = f"{m.get('type')} {m.get('id')} {m.get('status')}"
    return f"{event['created_at'][11:19]}  {event['type']:<26} {data.get('id')}  {name!r}  {what}"


def demo_config(url: str, db: Path) -> config.Config:
    """The daemon's config for the demo: a fast tick and a short reconcile period."""
    return config.load(env={}, overrides={
        "api": {"base_url": url, "api_key": DEMO_KEY, "requests_per_minute": 400},
        "sync": {"interval_s": 2, "reconcile_every_s": 30},
        "database": {"path": str(db)},
        "logging": {"level": "warning"},
    })


async def run_demo(console: Console, *, db: Path, seconds: float | None, recordings: int,
                   seed: int, move_every_s: float) -> PrintHandler:
    """Serve a moving simulated project and mirror it until Ctrl-C or `seconds`."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)  # a demo starts from a clean slate
    world = World(seed=seed, recordings=recordings)
    printer = PrintHandler(console)
    async with serve(world, api_keys={DEMO_KEY: {"recordings:read"}}, rate_limit=500) as sim:
        console.print(f"[bold]simulated Bota project[/bold]: {recordings} recordings at {sim.url}")
        console.print(f"[bold]mirror[/bold]: {db}  (events of the first sync are kept, "
                      "not delivered; live ones print below)")
        daemon = Daemon(demo_config(sim.url, db), handle_signals=False,
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
                          f"{stats.pages} pages, {stats.requests} requests, {stats.seconds:.1f} s")
            console.print("[dim]the simulated world now changes every few seconds...[/dim]")
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
