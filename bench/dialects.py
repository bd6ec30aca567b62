"""Both dialects of the Bota API, side by side: `python bench/dialects.py [--write]`.

1. Economy at 20,000 recordings (rate limit off): the first sync's list and detail
   requests, an unchanged re-run's, and 7 changes' (statuses to `streaming` and
   `integrity_failure` in the deployed dialect, renames, 2 deletions); the mirror is
   compared with the simulator's world field by field.
2. The first sync at the rate limit: the simulator enforces 100 requests a minute, the
   client keeps its default budget (90 a minute). The figures are the sync's wall time
   over the physical minimum, `(ceil(requests / budget) - 1) x 60 s` (the budget's last
   window opens then), and over `requests / budget x 60 s`. `--window` shortens the
   minute for a quick look, but then the machine's own speed weighs in the ratio.

`--write` puts the table into RESULTS.md between the `dialects` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sections import replace_section  # noqa: E402

from botasync import config  # noqa: E402
from botasync.api.budget import RequestBudget  # noqa: E402
from botasync.logging import configure  # noqa: E402
from botasync.service.app import App  # noqa: E402
from botasync.simulator import Simulator, World, serve  # noqa: E402
from tests.mirror import mirror_diff  # noqa: E402

KEY = "sk_test_botasync"
SERVER_LIMIT = 100
DIALECTS = ("documented", "deployed")


def _cfg(sim: Simulator, db: Path, rpm: int) -> config.Config:
    return config.load(env={}, overrides={
        "api": {"base_url": sim.url, "api_key": KEY, "requests_per_minute": rpm},
        "database": {"path": str(db)},
    })


def _requests(sim: Simulator, since: int) -> dict[str, int]:
    out = {"list": 0, "detail": 0, "429": 0}
    for r in sim.requests[since:]:
        if r.status == 429:
            out["429"] += 1
        elif r.path == "/v1/recordings":
            out["list"] += 1
        elif r.path.startswith("/v1/recordings/"):
            out["detail"] += 1
    return out


async def _sync(cfg: config.Config, budget: RequestBudget | None = None) -> float:
    async with await App.open(cfg) as app:
        if budget is not None:
            app.client.budget = budget
            app.syncer.client = app.client
        started = time.monotonic()
        stats = await app.syncer.full()
        if not stats.complete:
            raise SystemExit(f"the sync did not complete: {stats}")
        return time.monotonic() - started


def _change(world: World) -> None:
    """7 changes: two status changes, three renames, two deletions."""
    ids = world.ids()
    odd, bad = ("streaming", "integrity_failure") if world.dialect == "deployed" else (
        "processing", "failed")
    world.update(ids[10], status=odd)
    world.update(ids[len(ids) // 2], status=bad)
    for i in (70, len(ids) // 4, len(ids) * 3 // 4):
        world.update(ids[i], name=f"renamed {i}")
    world.delete(ids[300])
    world.delete(ids[-50])


async def economy(dialect: str, n: int, work: Path) -> dict[str, Any]:
    db = work / f"economy-{dialect}.db"
    async with serve(World(seed=7, recordings=n, dialect=dialect), rate_limit=None) as sim:
        cfg = _cfg(sim, db, 1_000_000)
        first_s = await _sync(cfg)
        first = _requests(sim, 0)
        exact_first = not mirror_diff(db, sim.world.all())
        mark = len(sim.requests)
        await _sync(cfg)
        rerun = _requests(sim, mark)
        _change(sim.world)
        mark = len(sim.requests)
        await _sync(cfg)
        changes = _requests(sim, mark)
        exact_after = not mirror_diff(db, sim.world.all())
    return {"dialect": dialect, "n": n, "first": first, "first_s": round(first_s, 2),
            "rerun": rerun, "changes": changes, "exact": exact_first and exact_after}


async def at_the_limit(dialect: str, n: int, work: Path, window_s: float) -> dict[str, Any]:
    db = work / f"limit-{dialect}.db"
    async with serve(World(seed=8, recordings=n, dialect=dialect),
                     rate_limit=SERVER_LIMIT) as sim:
        sim.limiter.window_s = window_s
        cfg = _cfg(sim, db, 90)
        budget = RequestBudget(cfg.api.requests_per_minute, window_s=window_s)
        seconds = await _sync(cfg, budget)
        seen = _requests(sim, 0)
    sent = seen["list"] + seen["detail"]
    rate = cfg.api.requests_per_minute
    allowed = sent / rate * window_s
    floor = (math.ceil(sent / rate) - 1) * window_s  # when the budget's last window opens
    return {"dialect": dialect, "n": n, "requests": sent, "429": seen["429"],
            "seconds": round(seconds, 2), "budget_s": round(allowed, 2),
            "floor_s": round(floor, 2), "window_s": window_s,
            "ratio": round(seconds / allowed, 3),
            "floor_ratio": round(seconds / floor, 3) if floor else None}


def render(rows: list[dict[str, Any]], limits: list[dict[str, Any]]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = [
        "## Both dialects of the API",
        "",
        f"Written by `python bench/dialects.py --write` on {when} ({platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}).",
        "",
        "| dialect | N | first sync: list / detail requests | seconds | unchanged re-run: "
        "list / detail | 7 changes: list / detail | mirror exact |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r['dialect']} | {r['n']:,} | {r['first']['list']} / {r['first']['detail']} | "
            f"{r['first_s']} | {r['rerun']['list']} / {r['rerun']['detail']} | "
            f"{r['changes']['list']} / {r['changes']['detail']} | "
            f"{'yes' if r['exact'] else 'NO'} |")
    window = limits[0]["window_s"] if limits else 60.0
    out += [
        "",
        f"First sync at the rate limit: the simulator enforces {SERVER_LIMIT} requests per "
        f"{window:g} s, the client keeps its default budget of 90. The physical minimum is "
        "`(ceil(requests / 90) - 1) x window` (the budget's last window opens then); "
        "`requests / budget` is `requests / 90 x window`.",
        "",
        "| dialect | N | requests | answered 429 | seconds | physical minimum (s) | x minimum "
        "| requests / budget (s) | x requests / budget |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in limits:
        out.append(f"| {r['dialect']} | {r['n']:,} | {r['requests']} | {r['429']} | "
                   f"{r['seconds']} | {r['floor_s']} | {r['floor_ratio']} | {r['budget_s']} | "
                   f"{r['ratio']} |")
    return "\n".join(out) + "\n"


async def main_async(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="botasync-dialects-") as tmp:
        work = Path(tmp)
        rows = [await economy(d, args.recordings, work) for d in DIALECTS]
        limits = [await at_the_limit(d, args.limit_recordings, work, args.window)
                  for d in DIALECTS]
    return render(rows, limits)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recordings", type=int, default=20_000)
    p.add_argument("--limit-recordings", type=int, default=20_000,
                   help="recordings for the rate-limited first sync (default 20,000)")
    p.add_argument("--window", type=float, default=60.0,
                   help="the rate limit's window in seconds (default 60, as Bota's)")
    p.add_argument("--write", action="store_true", help="write the table into RESULTS.md")
    args = p.parse_args()
    configure("warning", "json")
    text = asyncio.run(main_async(args))
    print(text)
    if args.write:
        replace_section(ROOT / "bench" / "RESULTS.md", "dialects", text)


if __name__ == "__main__":
    main()
