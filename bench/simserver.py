"""The Bota simulator in its own process, for the bench: prints one JSON line once bound.

Like `botasync simulate`, but on port 0 with a machine-readable ready line, so the
bench learns the port without parsing a human message. The contenders' RSS and CPU
are then theirs alone.
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

API_KEY = "sk_test_botasync"


def exit_with_parent(parent: int) -> None:
    """End this process once the bench that started it is gone (killed, crashed)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main() -> None:
    """Build the seeded world, serve it on 127.0.0.1 until killed."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recordings", type=int, required=True)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--latency-ms", type=int, default=60)
    p.add_argument("--rate-limit", type=int, default=0, help="requests a minute; 0 = off")
    args = p.parse_args()
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    configure("warning", "json")  # logs to stderr: stdout carries the ready line only
    started = time.monotonic()
    world = World(seed=args.seed, recordings=args.recordings)
    built_s = time.monotonic() - started

    def ready(sim: Simulator) -> None:
        line = {"url": sim.url, "origin": sim.origin, "api_key": API_KEY,
                "recordings": len(sim.world), "world_build_s": round(built_s, 3)}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):  # SIGINT is how the bench stops it
        asyncio.run(run_forever(
            world, host="127.0.0.1", port=0, api_keys={API_KEY: {"recordings:read"}},
            rate_limit=args.rate_limit or None, latency_s=args.latency_ms / 1000, on_ready=ready,
            max_logged=None))  # the bench reads the whole request log


if __name__ == "__main__":
    main()
