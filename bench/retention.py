"""Outbox retention: what a prune costs, and what schema step 3's two indexes buy.

An outbox of N events, the older half past the retention and delivered to one
handler, is pruned twice in one run on two copies of the same database: as botasync
creates it (schema step 3: indexes on `events(created_at)` and `deliveries(event_seq)`)
and with those two indexes dropped (a step-2 database). Then a prune with nothing to
do (every remaining event recent), and the file's size before, after the prune, and
after `VACUUM`.

    python bench/retention.py [--events 20000] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from sections import replace_section

from botasync.logging import configure
from botasync.store import retention
from botasync.store.sqlite import Store

OLD, NEW = "2025-01-01T00:00:00.000Z", "2026-11-01T00:00:00.000Z"
CUTOFF = "2026-01-01T00:00:00.000Z"
PAYLOAD = "x" * 740  # about a real event's envelope


async def build(db: Path, n: int) -> None:
    """N events (the first half old), each delivered to handler `h`, whose cursor is past all."""
    async with await Store.open(db):
        pass
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO events (id, type, created_at, payload) "
            "VALUES (?, 'recording.created', ?, ?)",
            ((f"evt_{i:08d}", OLD if i < n // 2 else NEW, PAYLOAD) for i in range(n)))
        conn.executemany(
            "INSERT INTO deliveries (handler, event_seq, state, attempts) "
            "VALUES ('h', ?, 'delivered', 1)", ((i + 1,) for i in range(n)))
        conn.execute("INSERT INTO handler_cursors VALUES ('h', ?)", (n,))
    conn.close()


async def prune(db: Path) -> tuple[int, float]:
    async with await Store.open(db) as store:
        started = time.perf_counter()
        result = await retention.prune_events(store, CUTOFF, ["h"])
        return result.events, time.perf_counter() - started


def size(db: Path) -> int:
    """The file's size with the WAL folded in."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return db.stat().st_size


async def run(n: int, work: Path) -> dict[str, Any]:
    indexed, bare = work / "indexed.db", work / "bare.db"
    await build(indexed, n)
    before = size(indexed)  # checkpointed: the copy below takes everything
    shutil.copy(indexed, bare)
    with sqlite3.connect(bare) as conn:
        conn.execute("DROP INDEX events_created_at")
        conn.execute("DROP INDEX deliveries_event_seq")
    conn.close()
    pruned, with_s = await prune(indexed)
    bare_pruned, without_s = await prune(bare)
    assert pruned == bare_pruned == n // 2, (pruned, bare_pruned)
    _, noop_s = await prune(indexed)
    after = size(indexed)
    conn = sqlite3.connect(indexed)
    try:
        conn.execute("VACUUM")
    finally:
        conn.close()
    return {"events": n, "pruned": pruned, "with_indexes_s": round(with_s, 3),
            "without_indexes_s": round(without_s, 3),
            "speedup": round(without_s / with_s, 1), "noop_ms": round(noop_s * 1000, 2),
            "bytes_before": before, "bytes_after": after, "bytes_vacuumed": size(indexed)}


def write(path: Path, r: dict[str, Any]) -> None:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    mb = 1e6
    replace_section(path, "retention", "\n".join([
        "## Outbox retention",
        "",
        f"Written by `python bench/retention.py --write` on {when}. An outbox of "
        f"{r['events']:,} events of ~0.75 KB, the older half past the retention and "
        "delivered; both prunes in this run, on copies of one database.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| events pruned | {r['pruned']:,} |",
        f"| prune, schema step 3 (indexes on `events(created_at)`, `deliveries(event_seq)`) "
        f"| {r['with_indexes_s']:.3f} s |",
        f"| prune, without those indexes | {r['without_indexes_s']:.3f} s |",
        f"| without / with | {r['speedup']:.1f}x |",
        f"| a prune with nothing to do | {r['noop_ms']:.2f} ms |",
        f"| file before / after the prune / after VACUUM | {r['bytes_before'] / mb:.1f} / "
        f"{r['bytes_after'] / mb:.1f} / {r['bytes_vacuumed'] / mb:.1f} MB |",
    ]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--write", action="store_true", help="also put the table in RESULTS.md")
    args = ap.parse_args()
    configure("warning", "console")
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args.events, Path(tmp)))
    print(json.dumps(result, indent=2))
    if args.write:
        write(Path(__file__).resolve().parent / "RESULTS.md", result)


if __name__ == "__main__":
    main()
