"""The command handler of the steady-state bench: appends id, type, recording, time it ran.

One JSON line per event to $BENCH_EVENTS_OUT; the time is taken first thing, so the
latency measured includes botasync's delivery but not this script's own work.
"""

from __future__ import annotations

import json
import os
import sys
import time

ran_at = time.time()
event = json.load(sys.stdin)
line = {"id": os.environ["BOTASYNC_EVENT_ID"], "type": os.environ["BOTASYNC_EVENT_TYPE"],
        "recording_id": (event.get("data") or {}).get("id"), "t": ran_at}
with open(os.environ["BENCH_EVENTS_OUT"], "a") as out:
    out.write(json.dumps(line) + "\n")
