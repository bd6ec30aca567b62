"""Does a large download backlog delay status-change events? Measured, downloads off vs on.

The simulator serves a world of N recordings (every finished one with an uploaded audio
file, so turning downloads on makes a backlog of about N files). botasync mirrors it,
then ticks (head + hot pass) every `--interval` seconds while the world changes one
recording's status every second. For each change we time how long until its
`recording.status_changed` event is committed. The run is made twice, with the
download queue off and on; everything else is the same. Budgets are scaled up from
the real ones (100 and 30 a minute) by `--scale`, ratios kept, so it runs in a minute.

    python bench/media_backlog.py [--recordings 2000] [--seconds 30] [--scale 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sections import replace_section

from botasync import config
from botasync.api.budget import RequestBudget
from botasync.api.client import BotaClient
from botasync.logging import configure
from botasync.media.downloader import Downloader
from botasync.simulator import World, serve
from botasync.store.sqlite import Store
from botasync.sync.syncer import Syncer

KEY = "sk_test_botasync"
NEXT = {"uploaded": "processing", "processing": "completed"}


def _cfg(url: str, work: Path, download: bool, scale: int) -> config.Config:
    return config.load(env={}, overrides={
        "api": {"base_url": url, "api_key": KEY, "requests_per_minute": 90 * scale},
        "database": {"path": str(work / "bench.db")},
        "media": {"download": download, "files_dir": str(work / "files"), "min_free_bytes": 0,
                  "requests_per_minute": 25 * scale, "concurrency": 2},
        "logging": {"level": "warning"},
    })


def _change(world: World, rng: random.Random, changed: dict[str, float]) -> None:
    """Move one in-flight recording to its next status and note when."""
    ids = [r["id"] for r in world.all()[:200] if r["status"] in NEXT and r["id"] not in changed]
    if ids:
        rid = rng.choice(ids)
        world.update(rid, status=NEXT[world.get(rid)["status"]])  # type: ignore[index]
        changed[rid] = time.monotonic()


async def _lags(store: Store, after: int, changed: dict[str, float], lags: list[float]) -> int:
    """Record the lag of every new status_changed event of a change we made."""
    rows = await store.fetchall(
        "SELECT seq, recording_id FROM events WHERE seq > ? AND type = "
        "'recording.status_changed' ORDER BY seq", (after,))
    now = time.monotonic()
    for _, rid in rows:
        if rid in changed:
            lags.append(now - changed.pop(rid))
    return int(rows[-1][0]) if rows else after


async def run_once(n: int, seconds: float, interval: float, scale: int, download: bool,
                   work: Path) -> dict[str, Any]:
    world = World(seed=7, recordings=n)
    async with serve(world, rate_limit=100 * scale, download_rate_limit=30 * scale) as sim:
        cfg = _cfg(sim.url, work, download, scale)
        async with await Store.open(cfg.database.path) as store, BotaClient(
                cfg.api, download_budget=RequestBudget(cfg.media.requests_per_minute)) as client:
            dl = Downloader(store, client, cfg.media)
            syncer = Syncer(cfg, client, store, on_commit=dl.notify)
            await syncer.full()
            await dl.start()
            row = await store.fetchone("SELECT max(seq) FROM events")
            seq = int(row[0] or 0) if row else 0
            changed: dict[str, float] = {}
            lags: list[float] = []
            rng = random.Random(1)
            end = time.monotonic() + seconds
            next_tick = time.monotonic()
            while time.monotonic() < end:
                _change(world, rng, changed)
                if time.monotonic() >= next_tick:
                    await syncer.quick()
                    seq = await _lags(store, seq, changed, lags)
                    next_tick += interval
                await asyncio.sleep(1.0)
            files = dl.stats.files
            await dl.aclose()
    lags.sort()
    return {
        "download": download, "changes_seen": len(lags), "files_downloaded": files,
        "lag_median_s": round(statistics.median(lags), 3) if lags else None,
        "lag_p95_s": round(lags[int(0.95 * (len(lags) - 1))], 3) if lags else None,
        "lag_max_s": round(lags[-1], 3) if lags else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recordings", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--scale", type=int, default=6)
    ap.add_argument("--write", action="store_true", help="also put the table in RESULTS.md")
    args = ap.parse_args()
    configure("warning", "console")
    results = []
    for download in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(asyncio.run(run_once(args.recordings, args.seconds, args.interval,
                                                args.scale, download, Path(tmp))))
    print(json.dumps(results, indent=2))
    if args.write:
        write_section(Path(__file__).resolve().parent / "RESULTS.md", args, results)


def write_section(path: Path, args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    """Put this run's table into RESULTS.md between its markers (bench/run.py keeps them)."""
    rows = "\n".join(
        f"| {'on' if r['download'] else 'off'} | {r['files_downloaded']} | {r['changes_seen']} "
        f"| {r['lag_median_s']:.3f} s | {r['lag_p95_s']:.3f} s | {r['lag_max_s']:.3f} s |"
        for r in results)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    replace_section(path, "media", (
        f"## Media download backlog vs status-change events\n\n"
        f"Written by `python bench/media_backlog.py --write` on {when}: {args.recordings} "
        f"recordings, {args.seconds:g} s per run, a tick every {args.interval:g} s, budgets x"
        f"{args.scale} (ratios kept); one status change a second, timed from the change to "
        f"its committed `recording.status_changed`. Same run, downloads off then on.\n\n"
        "| downloads | files fetched | changes seen | lag median | p95 | max |\n"
        "|---|---|---|---|---|---|\n" + rows
    ))


if __name__ == "__main__":
    main()
