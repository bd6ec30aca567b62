"""The naive poller: the first script people write against a list + detail API.

Walk the list page by page; for every item fetch its detail (a few at a time, the
same bounded concurrency as botasync's default), then upsert the page into SQLite
with the standard `sqlite3` module, one commit per page. No fingerprints: every run
costs N/100 + N requests and rewrites every row. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from typing import Any

import aiohttp

LIMIT = 100
SCHEMA = """CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY, status TEXT, name TEXT, created_at TEXT, body TEXT)"""
UPSERT = """INSERT INTO recordings (id, status, name, created_at, body) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT(id) DO UPDATE SET status = excluded.status, name = excluded.name,
    created_at = excluded.created_at, body = excluded.body"""


async def fetch_json(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with session.get(url, params=params) as resp:
        resp.raise_for_status()
        return await resp.json()


async def page_details(session: aiohttp.ClientSession, url: str, ids: list[str],
                       concurrency: int) -> list[dict[str, Any]]:
    """Every detail of one page, `concurrency` at a time."""
    sem = asyncio.Semaphore(concurrency)

    async def one(rid: str) -> dict[str, Any]:
        async with sem:
            return await fetch_json(session, f"{url}/recordings/{rid}")  # type: ignore[no-any-return]

    return list(await asyncio.gather(*(one(i) for i in ids)))


async def run(url: str, key: str, db: str, concurrency: int) -> dict[str, int]:
    con = sqlite3.connect(db)
    con.execute(SCHEMA)
    pages = stored = offset = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        while pages < 1_000_000:  # bounded: far above any archive the bench serves
            page = await fetch_json(session, f"{url}/recordings", limit=str(LIMIT),
                                    offset=str(offset))
            pages += 1
            details = await page_details(session, url, [i["id"] for i in page["data"]],
                                         concurrency)
            with con:
                con.executemany(UPSERT, [(d["id"], d.get("status"), d.get("name"),
                                          d.get("created_at"), json.dumps(d)) for d in details])
            stored += len(details)
            if not page["has_more"]:
                break
            offset += LIMIT
    rows = con.execute("SELECT count(*) FROM recordings").fetchone()[0]
    con.close()
    return {"pages": pages, "details": stored, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args()
    started = time.monotonic()
    out = asyncio.run(run(args.url, args.key, args.db, args.concurrency))
    print(json.dumps({**out, "seconds": round(time.monotonic() - started, 3)}))


if __name__ == "__main__":
    main()
