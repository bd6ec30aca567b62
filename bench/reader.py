"""A reader beside the sync: queries the mirror in a loop, as a dashboard or a cron job would.

Opens the database with the standard `sqlite3` module and its defaults (as the first
script people write does), waits for the `recordings` table, then alternates two
everyday queries until SIGTERM or `--max-s`. Counts `database is locked` errors and
times every query. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import time
from pathlib import Path

QUERIES = (
    "SELECT status, count(*) FROM recordings WHERE deleted_at IS NULL GROUP BY status",
    "SELECT id, name, created_at FROM recordings WHERE status = 'completed'"
    " ORDER BY created_at DESC LIMIT 50",
)


def wait_for_table(db: Path, deadline: float) -> bool:
    """True once the mirror has its recordings table (never creates the file itself)."""
    while time.monotonic() < deadline:
        if db.exists():
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                found = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'recordings'"
                                    ).fetchone()
                con.close()
                if found:
                    return True
            except sqlite3.OperationalError:
                pass
        time.sleep(0.02)
    return False


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--db", required=True, type=Path)
    p.add_argument("--max-s", type=float, default=900)
    p.add_argument("--pause-ms", type=float, default=5)
    args = p.parse_args()
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    deadline = time.monotonic() + args.max_s
    ready = wait_for_table(args.db, deadline)
    times: list[float] = []
    locked = other = 0
    con = sqlite3.connect(args.db)
    started = time.monotonic()
    while ready and not stop["now"] and time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            con.execute(QUERIES[len(times) % 2]).fetchall()
            times.append(time.perf_counter() - t0)
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                locked += 1
            else:
                other += 1
        time.sleep(args.pause_ms / 1000)
    con.close()
    ms = [t * 1000 for t in times]
    print(json.dumps({
        "ready": ready, "queries": len(times), "locked": locked, "other_errors": other,
        "seconds": round(time.monotonic() - started, 3),
        "p50_ms": round(percentile(ms, 0.50), 3), "p99_ms": round(percentile(ms, 0.99), 3),
        "max_ms": round(max(ms, default=0.0), 3)}))


if __name__ == "__main__":
    main()
