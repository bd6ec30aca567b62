"""Where botasync's first-mirror memory goes: tracemalloc at the walk's end, RSS beside it.

Profiling aid for part 3 (memory flat in N), not part of `run.py`:

    python bench/memprofile.py --recordings 100000

Starts a simulator process (no latency, no rate limit), runs `botasync sync` in this
process under tracemalloc, and takes a snapshot when the full walk's end asks the store
for the ids it did not see (the moment what the walk remembers is largest). Prints
one JSON line: RSS and traced memory then, the traced peak, and the top allocation
sites. `run.py` calls it when the memory target is missed. (RSS here includes
tracemalloc's own bookkeeping; compare the traced figures between sizes.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from env import BENCH, PY, mirror_config
from procs import SimProcess, rss_bytes

from botasync import config
from botasync.logging import configure
from botasync.service.app import sync_once
from botasync.store.sqlite import Mirror

MB = 2**20
FRAMES = 6  # enough to reach botasync's own line from inside orjson or aiosqlite


def instrument(report: dict[str, Any]) -> None:
    """Snapshot memory when the walk's end asks for the stored ids it did not see."""
    name = "live_ids_not_in" if hasattr(Mirror, "live_ids_not_in") else "live_ids"
    original = getattr(Mirror, name)

    async def hooked(self: Mirror, *args: Any, **kwargs: Any) -> Any:
        result = await original(self, *args, **kwargs)
        if kwargs.get("status") is None and "snapshot" not in report:
            report["snapshot"] = tracemalloc.take_snapshot()
            report["rss_at_walk_end"] = rss_bytes(os.getpid())
            report["traced_at_walk_end"] = tracemalloc.get_traced_memory()[0]
        return result

    setattr(Mirror, name, hooked)


def site(stat: tracemalloc.Statistic) -> str:
    """Where a block was allocated, then the botasync lines that led there (newest first)."""
    frames = list(stat.traceback)  # oldest first: the last frame allocated the block
    alloc = frames[-1]
    chain = [f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[:-1])
             if "/botasync/" in f.filename][:3]
    where = f"{Path(alloc.filename).name}:{alloc.lineno}"
    return where + (f" (via {' <- '.join(chain)})" if chain else "")


def profile(n: int, top: int) -> dict[str, Any]:
    """Mirror a world of n recordings under tracemalloc; the figures and the top sites."""
    work = BENCH / "work" / "memprofile"
    work.mkdir(parents=True, exist_ok=True)
    for f in work.glob("p.db*"):
        f.unlink()
    sim = SimProcess(PY, BENCH / "simserver.py", recordings=n, seed=7, latency_ms=0,
                     log_path=work / "sim.log")
    try:
        cfg = config.load(mirror_config(work / "mirror.toml"), env={
            "BOTA_API_URL": sim.url, "BOTA_API_KEY": sim.api_key,
            "BOTASYNC_DB": str(work / "p.db")})
        report: dict[str, Any] = {}
        instrument(report)
        tracemalloc.start(FRAMES)
        asyncio.run(sync_once(cfg, full=True))
        peak_traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        sim.stop()
    stats = report["snapshot"].statistics("traceback")[:top]
    return {
        "n": n, "rss_at_walk_end_mb": round(report["rss_at_walk_end"] / MB, 1),
        "traced_at_walk_end_mb": round(report["traced_at_walk_end"] / MB, 2),
        "traced_peak_mb": round(peak_traced / MB, 2),
        "top": [{"mb": round(st.size / MB, 2), "blocks": st.count, "where": site(st)}
                for st in stats]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recordings", type=int, default=100_000)
    p.add_argument("--top", type=int, default=8)
    args = p.parse_args()
    configure("warning", "json")
    print(json.dumps(profile(args.recordings, args.top)))


if __name__ == "__main__":
    main()
