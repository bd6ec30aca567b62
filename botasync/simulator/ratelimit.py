"""A fixed-window request limiter per API key, on the world's clock (pure: no I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from botasync.simulator.clock import Clock


@dataclass(frozen=True, slots=True)
class Decision:
    """The limiter's answer for one request, with what the response headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int

    def headers(self) -> dict[str, str]:
        """The `X-RateLimit-*` headers (and `Retry-After` when refused)."""
        out = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
               "X-RateLimit-Reset": str(self.reset)}
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after)
        return out


class RateLimiter:
    """`limit` requests per key per window; a window opens at the first request after the last.

    `limit = None` turns it off. Refused requests do not use up the allowance.
    """

    def __init__(self, limit: int | None, clock: Clock, window_s: float = 60.0) -> None:
        self.limit = limit
        self.clock = clock
        self.window_s = window_s
        self._windows: dict[str, tuple[float, int]] = {}

    def hit(self, key: str) -> Decision | None:
        """Count one request for `key`; None when the limiter is off."""
        if self.limit is None:
            return None
        now = self.clock.now()
        start, used = self._windows.get(key, (now, 0))
        if now >= start + self.window_s:
            start, used = now, 0
        allowed = used < self.limit
        if allowed:
            used += 1
        self._windows[key] = (start, used)
        end = start + self.window_s
        return Decision(allowed=allowed, limit=self.limit, remaining=self.limit - used,
                        reset=math.ceil(end), retry_after=max(1, math.ceil(end - now)))

    def reset(self) -> None:
        """Forget every window (a new limit starts fresh)."""
        self._windows.clear()
