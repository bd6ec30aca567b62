"""The database: the store (SQLite by default, PostgreSQL with `[database] url`) and its
migrations, the read queries, snapshots, retention, and the SQL of the transcript tables
and their queue. Imports the core and `api` (models).
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botasync.config import DatabaseConfig, redact_database_url
from botasync.errors import BotasyncError
from botasync.store.base import Database

if TYPE_CHECKING:
    from botasync.store.postgres import PgStore


async def open_store(db: DatabaseConfig, *, readonly: bool = False,
                     application_name: str | None = None) -> Database:
    """The configured store, open: PostgreSQL when `[database] url` is set, else the SQLite
    file at `path`. `readonly`: no migration, nothing written (`Store.open_readonly`).
    `application_name`: PostgreSQL, the sessions' name (a worker's id)."""
    if db.url:
        pg: type[PgStore] = (await _postgres()).PgStore
        if readonly:
            return await pg.open_readonly(db.url, lock_path=db.path)
        # a session idle in a transaction past a lease is a worker paused mid-write: the
        # server ends it, so the other workers do not wait on its locks (store/postgres.py)
        return await pg.open(db.url, lock_path=db.path, idle_in_transaction_s=db.lease_s,
                             lock_wait_s=writers_lock_wait(db.lease_s),
                             application_name=application_name)
    from botasync.store.sqlite import Store

    return await (Store.open_readonly(db.path) if readonly else Store.open(db.path))


# A write waits this long at most for the writers' lock (PostgreSQL's `lock_timeout`), then
# fails with one line naming the session that holds it; the pass runs again on its next
# schedule. Why a bound at all: the live workers end a dead worker's sessions within
# `lease_s` and a round, so a longer wait means a holder they cannot end (no right to
# signal it, a process that is not a worker: a psql session, an older botasync) or one
# stuck while alive, and a line in the log says so where a silent hang said nothing. Why
# this long: a live writer may hold the lock for a while (a large retention prune, the
# schema migration at the first start, a loaded machine), and failing it costs a retry;
# it is never shorter than a minute, however short `lease_s` is.
MIN_LOCK_WAIT_S = 60.0


def writers_lock_wait(lease_s: float) -> float:
    """How long a write waits for the writers' lock before it fails (see above)."""
    return max(MIN_LOCK_WAIT_S, 2 * lease_s)


async def _postgres() -> Any:
    """`botasync.store.postgres`: psycopg is imported only when it is used, and off the loop
    (imports read files)."""
    return await asyncio.to_thread(importlib.import_module, "botasync.store.postgres")


async def open_existing(db: DatabaseConfig, *, readonly: bool = True) -> Database:
    """`open_store` for a command that needs a mirror already there: a missing SQLite file
    is one line (`no database at ...`), not a new empty database."""
    if not db.url and not Path(db.path).exists():
        raise BotasyncError(f"no database at {db.path}: run `botasync sync` first")
    return await open_store(db, readonly=readonly)


def describe(db: DatabaseConfig) -> str:
    """The configured database for a message: the file, or the URL without its password."""
    return redact_database_url(db.url) if db.url else db.path


__all__ = ["Database", "describe", "open_existing", "open_store"]
