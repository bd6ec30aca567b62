"""`botasync simulate` in its own process, for tests that run botasync as a user would."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

URL = re.compile(r"(http://127\.0\.0\.1:\d+/v1)")


@contextmanager
def simulate(args: list[str], env: Mapping[str, str]) -> Iterator[str]:
    """Start `botasync simulate --port 0 ARGS`, yield its URL, stop it at the end.

    Its stderr is read to the end by a thread: a pipe nobody reads fills up, and the
    simulator would then block on its next log line, in the middle of a test.
    """
    proc = subprocess.Popen([sys.executable, "-m", "botasync", "simulate", "--port", "0", *args],
                            stderr=subprocess.PIPE, text=True, env=dict(env))
    try:
        assert proc.stderr is not None
        url = ""
        for line in proc.stderr:
            found = URL.search(line)
            if found:
                url = found.group(1)
                break
        assert url, "the simulator did not start"
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
