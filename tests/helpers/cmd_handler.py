"""A command handler for the tests: `cmd_handler.py OUT MODE`, the event JSON on stdin.

Modes: `append` writes one JSON line (the env vars and stdin) to OUT; `fail` writes to
stderr and exits 3; `hang` starts a child, writes both pids to OUT and sleeps;
`flood` writes 16 MiB to stdout and stderr, then appends; `flood-forever` never stops
writing; `fail-on:<text>` fails when stdin holds <text>, else appends; `hang-on:<text>`
sleeps when stdin holds <text>, else appends; `background` leaves a child in its own
session holding stdout and stderr open, writes its pid to OUT and exits 0.
"""

import json
import os
import subprocess
import sys
import time


def append(out: str, stdin: str) -> None:
    line = {
        "event_id": os.environ.get("BOTASYNC_EVENT_ID"),
        "event_type": os.environ.get("BOTASYNC_EVENT_TYPE"),
        "stdin": stdin,
    }
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def main() -> int:
    out, mode = sys.argv[1], sys.argv[2]
    if mode == "flood-forever":
        chunk = b"x" * 65536
        while True:
            sys.stdout.buffer.write(chunk)
    stdin = sys.stdin.read()
    if mode == "fail" or (mode.startswith("fail-on:") and mode[8:] in stdin):
        sys.stderr.write("first line\nboom: cannot take this event\n")
        return 3
    if mode.startswith("hang-on:") and mode[8:] in stdin:
        time.sleep(60)
    if mode == "background":
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
        )
        with open(out, "w", encoding="utf-8") as f:
            f.write(f"{child.pid}\n")
        sys.stderr.write("done\n")
        return 0
    if mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(out, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {child.pid}\n")
        time.sleep(60)
        return 0
    if mode == "flood":
        block = b"y" * (1 << 20)
        for _ in range(16):
            sys.stdout.buffer.write(block)
            sys.stderr.buffer.write(block)
        sys.stdout.flush()
        sys.stderr.flush()
    append(out, stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
