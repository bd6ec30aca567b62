"""The Bota projects a simulator serves: one API key (or several) per project, each with its
own world, rate limits, faults and background mover.

Bota's keys and limits are per project, so a request counts against the limits of the
project its key belongs to and reads that project's world only. A simulator of one
`World` serves one project (every key of `api_keys` is its); `projects=N` or a mapping of
key -> World serves several.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from typing import Any

import structlog

from botasync.simulator.faults import Faults
from botasync.simulator.ratelimit import RateLimiter
from botasync.simulator.world import World

KEY_PREFIX = "sk_test_project_"  # `projects=N` keys: sk_test_project_0, sk_test_project_1, ...

log = structlog.get_logger("botasync.simulator")


def project_key(index: int) -> str:
    """The API key of project `index` of a simulator started with `projects=N`."""
    return f"{KEY_PREFIX}{index}"


def project_seed(base: int, index: int) -> int:
    """The seed of project `index` when `base` seeds project 0: the base itself for 0, a
    number derived from (base, index) for the others, so every project's ids differ."""
    if index == 0:
        return base
    digest = hashlib.blake2b(f"{base}:project:{index}".encode(), digest_size=4,
                             person=b"botasync-proj").digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF


def project_worlds(world: World, n: int) -> dict[str, World]:
    """`n` worlds keyed `sk_test_project_0`..: `world` itself first, then worlds built like
    it (`World.like`) from seeds derived from its seed (distinct, so their ids differ)."""
    if n < 1:
        raise ValueError(f"projects must be at least 1, got {n}")
    seeds = [world.seed]
    worlds = {project_key(0): world}
    for index in range(1, n):
        seed = project_seed(world.seed, index)
        while seed in seeds:  # a hash collision among these few: step on
            seed = (seed + 1) & 0x7FFF_FFFF
        seeds.append(seed)
        worlds[project_key(index)] = world.like(seed)
    return worlds


class Project:
    """One Bota project: its index and key, its world, limits (per key), faults and mover."""

    def __init__(
        self, index: int, key: str, world: World, *, rate_limit: int | None,
        download_rate_limit: int | None, transcription_rate_limit: int | None, faults: Faults,
    ) -> None:
        self.index = index
        self.key = key  # the key shown for it (a project may have several)
        self.world = world
        self.faults = faults
        self.limiter = RateLimiter(rate_limit, world.clock)
        self.download_limiter = RateLimiter(download_rate_limit, world.clock)
        # the transcription and summary endpoints' own bucket, besides the overall limit
        self.transcription_limiter = RateLimiter(transcription_rate_limit, world.clock)
        self.requests = 0  # requests logged for it, ever (the log itself is the simulator's)
        self.status_counts: Counter[int] = Counter()
        self._mover: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Project({self.index}, {self.key!r}, {len(self.world)} recordings)"

    @property
    def rate_limit(self) -> int | None:
        """Requests per minute per key, or None when off; setting it starts a new window."""
        return self.limiter.limit

    @rate_limit.setter
    def rate_limit(self, value: int | None) -> None:
        self.limiter.limit = value
        self.limiter.reset()

    @property
    def transcription_rate_limit(self) -> int | None:
        """Transcription and summary requests per minute per key (None: off); setting it
        starts a new window."""
        return self.transcription_limiter.limit

    @transcription_rate_limit.setter
    def transcription_rate_limit(self, value: int | None) -> None:
        self.transcription_limiter.limit = value
        self.transcription_limiter.reset()

    # -- the world moving ---------------------------------------------------------------------

    @property
    def moving(self) -> bool:
        """Whether a background task is changing this project's world."""
        return self._mover is not None and not self._mover.done()

    def start_moving(self, every_s: float, changes: int = 1) -> None:
        """Every `every_s` seconds (real time) make `changes` random changes to the world."""
        if every_s <= 0 or changes < 1:
            raise ValueError("every_s must be > 0 and changes >= 1")
        if self._mover is not None:
            self._mover.cancel()  # replaced: the old task ends at its next sleep
        self._mover = asyncio.get_running_loop().create_task(self._move(every_s, changes))

    async def _move(self, every_s: float, changes: int) -> None:
        while True:
            await asyncio.sleep(every_s)
            log.debug("simulator.moved", project=self.index, changes=self.world.step(changes))

    async def stop_moving(self) -> None:
        """Stop the background changes (idempotent)."""
        mover, self._mover = self._mover, None
        if mover is not None:
            mover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mover

    def stats(self) -> dict[str, Any]:
        """This project's counts and settings, for `/_sim/stats`."""
        return {
            "index": self.index,
            "key": self.key,
            "seed": self.world.seed,
            "recordings": len(self.world),
            "by_status": self.world.counts(),
            "requests": self.requests,
            "by_status_code": {str(code): n for code, n in sorted(self.status_counts.items())},
            "faults": self.faults.snapshot(),
            "rate_limit": self.rate_limit,
            "transcription_rate_limit": self.transcription_rate_limit,
            "moving": self.moving,
        }
