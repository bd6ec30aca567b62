"""Clocks for the simulator: real time by default, a hand-driven one for tests.

The rate-limit window, URL expiry and the `created_at` of new recordings all read the
world's clock, so a test that advances a `ManualClock` moves them without sleeping.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    """Anything that tells the time as Unix seconds."""

    def now(self) -> float:
        """The current time, Unix seconds."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        """The current time, Unix seconds."""
        return time.time()


class ManualClock:
    """A clock that only moves when told to, so tests control windows and expiry."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self._t = float(start)

    def now(self) -> float:
        """The current time, Unix seconds."""
        return self._t

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (never backwards) and return the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._t += seconds
        return self._t

    def set(self, t: float) -> None:
        """Jump to the Unix time `t`, which must not be in the past."""
        if t < self._t:
            raise ValueError("a clock does not go backwards")
        self._t = float(t)


@functools.lru_cache(maxsize=4096)
def _day(days: int) -> str:
    return (EPOCH + timedelta(days=days)).strftime("%Y-%m-%dT")


def iso_ms(ms: int) -> str:
    """Unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ`, with `.mmm` only when not whole."""
    # Built by hand (with the date cached): world generation formats ~5 of these per item.
    seconds, frac = divmod(ms, 1000)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    text = f"{_day(days)}{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{text}.{frac:03d}Z" if frac else f"{text}Z"


def iso_s(t: float) -> str:
    """Unix seconds (rounded to the millisecond) as an ISO 8601 UTC timestamp."""
    return iso_ms(round(t * 1000))


def parse_iso_ms(value: object) -> int | None:
    """An ISO 8601 timestamp as Unix milliseconds, or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)
