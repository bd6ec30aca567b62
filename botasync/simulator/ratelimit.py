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
    reset: float
    retry_after: float

    def headers(self) -> dict[str, str]:
        """The `X-RateLimit-*` headers (and `Retry-After` when refused)."""
        out = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
               "X-RateLimit-Reset": _seconds(self.reset)}
        if not self.allowed:
            out["Retry-After"] = _seconds(self.retry_after)
        return out


def _seconds(value: float) -> str:
    """Whole seconds as an integer (`1750000060`), a fraction with what it needs."""
    return str(int(value)) if value == int(value) else f"{value:.6f}".rstrip("0")


def _ceil_to(value: float, step: float) -> float:
    """`value` rounded up to a multiple of `step` (whole seconds: `math.ceil`)."""
    if step == 1.0:
        return math.ceil(value)
    return round(math.ceil(round(value / step, 9)) * step, 6)


class RateLimiter:
    """`limit` requests per key per window; a window opens at the first request after the last.

    `limit = None` turns it off. Refused requests do not use up the allowance.
    `resolution_s` is the step the reset time (and `Retry-After`) are rounded up to:
    whole seconds, as Bota sends them; a benchmark that compresses the window (0.5 s for
    60) compresses it too (0.5 / 60 s), or the rounding alone would be a second in every
    half-second window, where Bota's costs at most a second in 60.
    """

    def __init__(self, limit: int | None, clock: Clock, window_s: float = 60.0,
                 resolution_s: float = 1.0) -> None:
        self.limit = limit
        self.clock = clock
        self.window_s = window_s
        self.resolution_s = resolution_s
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
        step = self.resolution_s
        return Decision(allowed=allowed, limit=self.limit, remaining=self.limit - used,
                        reset=_ceil_to(end, step), retry_after=max(step, _ceil_to(end - now, step)))

    def reset(self) -> None:
        """Forget every window (a new limit starts fresh)."""
        self._windows.clear()
