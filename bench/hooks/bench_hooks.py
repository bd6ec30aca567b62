"""The python handler of the dispatch bench: appends each event id to $BENCH_EVENTS_OUT."""

from __future__ import annotations

import os
from typing import Any, TextIO

_out: TextIO | None = None


async def on_event(event: dict[str, Any]) -> None:
    """Record the event id (one line each), so the bench can check the order."""
    global _out
    if _out is None:
        _out = open(os.environ["BENCH_EVENTS_OUT"], "a", buffering=1)  # noqa: SIM115
    _out.write(event["id"] + "\n")
