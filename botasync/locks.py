"""Exclusive process locks on a file: one daemon per database, one downloader per files dir.

A `flock` on a small lock file beside what it guards. The kernel drops it when the
process dies, SIGKILL included, so a crash never leaves a stale lock to clean up. The
holder writes its pid into the file, so the one refused can say who holds it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

try:  # POSIX only; elsewhere two processes sharing a lock are not detected
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

from botasync.errors import BotasyncError


class ExclusiveLock:
    """Held by one process at a time; `acquire()` raises `BotasyncError(busy)` otherwise.

    The message gets the holder's pid, when it is known: "<busy> (pid 1234)".
    """

    def __init__(self, path: Path, busy: str) -> None:
        self.path = path
        self.busy = busy
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or raise `BotasyncError` with the `busy` message."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise BotasyncError(f"cannot open lock file {self.path}: {e.strerror}") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f" (pid {holder})" if holder else ""
                raise BotasyncError(f"{self.busy}{who}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> ExclusiveLock:
        self.acquire()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None
