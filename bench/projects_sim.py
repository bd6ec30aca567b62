"""The simulator serving N Bota projects in its own process, for `bench/projects.py`.

Like `bench/simserver.py`, but `projects=N`: keys `sk_test_project_0..N-1`, each its own
world (built like the first from a derived seed) and its own rate limit per key. Prints
one JSON line once bound (URL, origin, keys, build time); keeps its whole request log
(each entry names its project); exits when the bench that started it is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
import time

from botasync.logging import configure
from botasync.simulator import Simulator, World, run_forever


def exit_with_parent(parent: int) -> None:
    """End this process once the bench that started it is gone (killed, crashed)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--projects", type=int, required=True)
    p.add_argument("--recordings", type=int, required=True, help="per project")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--latency-ms", type=int, default=60)
    p.add_argument("--rate-limit", type=int, default=0, help="per key and minute; 0 = off")
    args = p.parse_args()
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    configure("warning", "json")  # logs to stderr: stdout carries the ready line only
    started = time.monotonic()
    world = World(seed=args.seed, recordings=args.recordings)

    def ready(sim: Simulator) -> None:
        line = {"url": sim.url, "origin": sim.origin, "keys": [p.key for p in sim.projects],
                "recordings": [len(p.world) for p in sim.projects],
                "world_build_s": round(time.monotonic() - started, 3)}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is how the bench stops it
        asyncio.run(run_forever(
            world, host="127.0.0.1", port=0, projects=args.projects,
            rate_limit=args.rate_limit or None, latency_s=args.latency_ms / 1000,
            on_ready=ready, max_logged=None))  # the bench reads the whole request log


if __name__ == "__main__":
    main()
