"""`heap.settle()`: a service's start-up heap leaves the garbage collector's walks."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
import botasync.cli.main, botasync.service.daemon
from botasync.service import heap
before = len(gc.get_objects())
frozen = heap.settle()
after = len(gc.get_objects())
junk = [[i] for i in range(1000)]  # allocated after: the collector still sees it
print(before, frozen, after, len(gc.get_objects()) - after >= 1000)
"""


def test_settle_freezes_what_the_service_started_with() -> None:
    """What lives at start-up is frozen (no longer walked by a full collection); what the
    service allocates afterwards is tracked as before. A process of its own: freezing the
    test worker's heap would keep every later test's garbage."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    before, frozen, after = int(out[0]), int(out[1]), int(out[2])
    assert before > 10_000 and frozen >= before * 0.9
    assert after < 100 and out[3] == "True"
