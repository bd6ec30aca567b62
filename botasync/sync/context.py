"""What every part of one project's pass works with, made once by the `Syncer`.

The walker (pages) and the item sync (what a page changes) share the project's config,
client, mirror, what was learnt of the API, the clock, the logger and the progress
callback; one frozen record hands them over instead of seven arguments each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botasync.api.client import BotaClient
from botasync.config import Config
from botasync.store.sqlite import Mirror
from botasync.sync.learning import Learning
from botasync.sync.runs import Walk


@dataclass(frozen=True)
class PassContext:
    """One project's pass parts: `progress` is called after every page of a walk."""

    cfg: Config
    client: BotaClient
    mirror: Mirror
    learning: Learning
    clock: Callable[[], datetime]
    log: Any  # structlog's bound logger, with the project
    progress: Callable[[Walk], None]
