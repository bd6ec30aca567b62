"""Exclusive locks: one holder at a time, the holder named, and freed when a holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from botasync.errors import BotasyncError
from botasync.locks import ExclusiveLock


def test_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    """The one refused learns who holds the lock; once it is let go, it can be taken."""
    path = tmp_path / "x.lock"
    with ExclusiveLock(path, "busy"):
        with pytest.raises(BotasyncError, match=rf"^busy \(pid {os.getpid()}\)$"):
            ExclusiveLock(path, "busy").acquire()
    second = ExclusiveLock(path, "busy")
    second.acquire()
    second.release()
    second.release()  # twice is fine


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    """SIGKILL frees the lock: the kernel drops a dead process's flock."""
    path = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from botasync.locks import ExclusiveLock; "
         f"ExclusiveLock(Path({str(path)!r}), 'busy').acquire(); print('held', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(BotasyncError, match=rf"\(pid {holder.pid}\)"):
            ExclusiveLock(path, "busy").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    with ExclusiveLock(path, "busy"):
        assert path.read_text().strip() == str(os.getpid())


def test_unusable_place_is_one_clear_error(tmp_path: Path) -> None:
    """A lock path under a file is a BotasyncError naming it, not an OSError."""
    (tmp_path / "file").write_text("")
    with pytest.raises(BotasyncError, match=r"cannot open lock file .*file/x\.lock"):
        ExclusiveLock(tmp_path / "file" / "x.lock", "busy").acquire()
