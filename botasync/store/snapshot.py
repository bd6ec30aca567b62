"""`botasync snapshot PATH`: a consistent copy of the mirror, taken while the daemon runs.

SQLite's `VACUUM INTO` writes the database as one read transaction sees it, WAL
included, into a new compact file (rollback journal, not WAL): what Datasette
`--immutable`, a backup or a BI tool should open instead of the live file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from botasync.errors import BotasyncError, StoreError
from botasync.store.sqlite import Store


async def snapshot(source: str | Path, dest: str | Path) -> int:
    """Copy `source` into the new file `dest` (created 0600, never overwritten); its size."""
    target = Path(dest)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BotasyncError(f"{target} already exists; a snapshot never replaces a file") from None
    except OSError as e:
        raise BotasyncError(f"cannot create {target}: {(e.strerror or str(e)).lower()}") from None
    os.close(fd)
    try:
        async with await Store.open_readonly(source) as store, store.read() as conn:
            # query_only forbids VACUUM INTO; the source stays read-only (mode=ro) anyway
            await conn.execute("PRAGMA query_only = OFF")
            try:
                await conn.execute("VACUUM INTO ?", (str(target),))
            except sqlite3.Error as e:
                raise StoreError(f"cannot write the snapshot {target}: {e}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            target.unlink()
        raise
    return target.stat().st_size
