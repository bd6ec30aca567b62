"""The handler `bench/workers.py` gives its workers: one line per delivery, appended.

`[[handlers]] type = "python"`, `target = "workers_sink:handle"` (the bench puts this
folder on the workers' `PYTHONPATH`). Each line is `<pid> <event id>`, written with one
`write` to a file opened for appending (`O_APPEND`: lines from several processes never
interleave) before the handler returns: a delivery the outbox records was written here
first, so the file holds every delivery, the repeated ones included.
"""

from __future__ import annotations

import os
from typing import Any

_fd: int | None = None


def handle(event: dict[str, Any]) -> None:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ["BOTASYNC_BENCH_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                      0o600)
    os.write(_fd, f"{os.getpid()} {event['id']}\n".encode())
