"""On a terminal, `botasync sync` against the deployed dialect shows progress and ends.

The first version probed the archive's size by doubling an offset, which the deployed
API ignores: the probe never ended. Run as a person would: a real pseudo-terminal, a
real `botasync simulate --dialect deployed` process.
"""

from __future__ import annotations

import os
import pty
import re
import select
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.simproc import simulate


@pytest.fixture
def deployed_api() -> Iterator[str]:
    """`botasync simulate --dialect deployed`, 20 ms an answer, in its own process."""
    with simulate(["--recordings", "1000", "--dialect", "deployed", "--latency-ms", "20",
                   "--no-rate-limit"], {**os.environ, "BOTASYNC_CONFIG": ""}) as url:
        yield url


def _run_on_a_terminal(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run argv with stdin, stdout and stderr on a new pty; return (exit code, screen text)."""
    main, side = pty.openpty()
    proc = subprocess.Popen(argv, stdin=side, stdout=side, stderr=side, env=env,
                            start_new_session=True)
    os.close(side)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    data = os.read(main, 65536)
                except OSError:  # the other side closed: the process has ended
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(max(0.1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_sync_on_a_terminal_shows_progress_and_ends(deployed_api: str, tmp_path: Path) -> None:
    """10 cursor pages, no offset probe, a bar that counts items, exit 0 with every row."""
    db = tmp_path / "botasync.db"
    env = {**os.environ, "BOTA_API_URL": deployed_api, "BOTA_API_KEY": "sk_test_botasync",
           "BOTASYNC_DB": str(db), "BOTASYNC_CONFIG": "", "TERM": "xterm-256color",
           "COLUMNS": "120", "LINES": "40"}
    code, screen = _run_on_a_terminal([sys.executable, "-m", "botasync", "sync"], env, 120)
    assert code == 0, screen[-2000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert re.search(r"\d+ pages, [\d,]+ recordings", plain), plain[-2000:]  # the bar
    assert "1000 created" in plain
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT count(*) FROM recordings").fetchone()[0]
        learned = conn.execute("SELECT value FROM state WHERE key = 'dialect'").fetchone()[0]
    conn.close()
    assert rows == 1000 and '"paging":"cursor"' in learned
