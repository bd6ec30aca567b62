"""The ceiling: a bare aiohttp loop that walks every page (limit 100) and throws it away.

One request after another, as the API's pagination suggests (`offset += limit` until
`has_more` is false); each body is parsed (orjson) and discarded. Nothing is stored, so
no real sync can be cheaper per page; a faster one must overlap pages.
Prints one JSON line: pages, items, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import orjson

LIMIT = 100


async def walk(url: str, key: str) -> tuple[int, int]:
    """Walk the whole list; returns (pages, items)."""
    pages = items = offset = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        while pages < 1_000_000:  # bounded: far above any archive the bench serves
            params = {"limit": str(LIMIT), "offset": str(offset)}
            async with session.get(f"{url}/recordings", params=params) as resp:
                resp.raise_for_status()
                page = orjson.loads(await resp.read())
            pages += 1
            items += len(page["data"])
            if not page["has_more"]:
                break
            offset += LIMIT
    return pages, items


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    args = p.parse_args()
    started = time.monotonic()
    pages, items = asyncio.run(walk(args.url, args.key))
    print(json.dumps({"pages": pages, "items": items,
                      "seconds": round(time.monotonic() - started, 3)}))


if __name__ == "__main__":
    main()
