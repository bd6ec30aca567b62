"""The garbage collector, set for a long-running service.

CPython's full collection walks every container object the process holds. A daemon holds
tens of thousands from its start alone (its modules, pydantic's schemas, aiohttp,
structlog, rich, APScheduler), and they live as long as it does. Walked again at every
full collection, they made each one a pause of 80-110 ms on the 2-core machine, on the
event loop, in the middle of whatever it landed on: a tick's recording events came that
much later whenever the transcript worker's allocations had brought a full collection
round (bench/transcripts.py).

`settle()` moves what exists once the service has started out of the collector's sight
(`gc.freeze()`): a full collection then walks only what the service allocated since,
which is what can become garbage. Nothing frozen is lost: it is what a running service
keeps until it exits.
"""

from __future__ import annotations

import gc


def settle() -> int:
    """Collect once, then freeze what is left (the service's start-up heap); returns how
    many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
