"""Outbox retention: settled events older than `[events] retention_days` are forgotten.

The outbox is a delivery queue and a change log people read; kept forever it grows
by every status change of every recording (some 2 KB an event). An event is
forgotten only when every configured handler is past it (its cursor) and no handler
holds it as a dead letter, so retention never drops an event someone still has to
take. A handler removed from the config no longer holds events back.

SQLite reuses the freed pages, so the file stops growing rather than shrinking;
`VACUUM` gives the space back to the disk (on PostgreSQL autovacuum reuses them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from botasync.envelope import iso, utc_now
from botasync.store.base import Database
from botasync.store.dialect import POSTGRES, SQLITE

log = structlog.get_logger("botasync.retention")

BATCH = 5_000  # events forgotten per transaction: the sync never waits long for the lock

# The events that may go: old enough (a range of the events_created_at index, so a
# prune with nothing to do reads nothing), settled for every handler named (those with a
# cursor; SQLite: in the json array ?2, PostgreSQL: in an array), and no dead letter. No
# ORDER BY: a sort would read every candidate for each batch.
_PRUNABLE = {
    SQLITE: """
SELECT seq FROM events e
WHERE e.created_at < ?1
  AND e.seq <= coalesce(
        (SELECT min(c.seq) FROM handler_cursors c
         WHERE c.handler IN (SELECT value FROM json_each(?2))),
        e.seq)
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.state = 'dead')
LIMIT ?3
""",
    POSTGRES: """
SELECT seq FROM events e
WHERE e.created_at < ?
  AND e.seq <= coalesce(
        (SELECT min(c.seq) FROM handler_cursors c WHERE c.handler = ANY(?)), e.seq)
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.state = 'dead')
LIMIT ?
""",
}
NO_LIMIT = 2**63 - 1  # a dry run counts them all


@dataclass(frozen=True)
class PruneResult:
    """What one retention run forgot."""

    events: int
    deliveries: int
    before: str


def cutoff(days: int, now: datetime | None = None) -> str:
    """The created_at before which settled events are forgotten."""
    return iso((now or utc_now()) - timedelta(days=days))


async def prune_events(
    store: Database, before: str, handlers: Sequence[str], *, dry_run: bool = False
) -> PruneResult:
    """Forget settled events created before `before` (ISO), with their delivery records."""
    sql = _PRUNABLE[store.dialect]
    names: Any = list(handlers) if store.dialect == POSTGRES else json.dumps(list(handlers))
    if dry_run:
        rows = await store.fetchall(sql, (before, names, NO_LIMIT))
        return PruneResult(len(rows), 0, before)
    events = deliveries = 0
    while True:
        async with store.transaction() as conn:
            async with conn.execute(sql, (before, names, BATCH)) as cur:
                seqs = [(int(r[0]),) for r in await cur.fetchall()]
            if not seqs:
                break
            cur = await conn.executemany("DELETE FROM deliveries WHERE event_seq = ?", seqs)
            deliveries += max(cur.rowcount, 0)
            await conn.executemany("DELETE FROM events WHERE seq = ?", seqs)
            events += len(seqs)
        if len(seqs) < BATCH:
            break
    if events:
        log.info("events_pruned", events=events, deliveries=deliveries, before=before)
    return PruneResult(events, deliveries, before)
