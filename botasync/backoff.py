"""The retry schedule: exponential backoff with jitter, and reading a server's `Retry-After`.

Pure: randomness and the current time are passed in, so the schedule is testable
with case tables and a fixed `rand`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Literal

# A server asking for more than this is misconfigured or hostile; waiting an hour
# is the most a sync loop should ever sit idle on one answer.
MAX_RETRY_AFTER_S = 3600.0
# `X-RateLimit-Reset` is documented as Unix seconds, but some gateways send a delta;
# no real epoch value is this small (it is 2001-09-09).
_EPOCH_FLOOR = 1_000_000_000.0
# 2**64 * base overflows nothing and is past any cap anyone sets.
_MAX_EXPONENT = 64

Jitter = Literal["full", "equal"]


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    rand: Callable[[], float],
    jitter: Jitter = "equal",
) -> float:
    """Seconds to wait before retry number `attempt` (0 = first retry), never above `cap`.

    "full" jitter draws from [0, d]; "equal" jitter from [d/2, d], so a retry never
    fires at once; d = min(cap, base * 2**attempt).
    """
    if base < 0 or cap < 0:
        raise ValueError("base and cap must be >= 0")
    exponent = min(max(attempt, 0), _MAX_EXPONENT)
    ceiling = min(cap, base * float(2**exponent))
    r = min(max(rand(), 0.0), 1.0)  # a sloppy rand() must not break the cap
    if jitter == "full":
        return ceiling * r
    return ceiling / 2 + (ceiling / 2) * r


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, case-insensitively, whatever kind of mapping holds them."""
    value = headers.get(name)
    if value is not None:
        return value
    lname = name.lower()
    for key, val in headers.items():
        if key.lower() == lname:
            return val
    return None


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _retry_after(text: str, now_epoch: float) -> float | None:
    """`Retry-After`: delta seconds, or an HTTP date."""
    seconds = _number(text)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one means the same
        return None
    return when.timestamp() - now_epoch


def _reset(text: str, now_epoch: float) -> float | None:
    """`X-RateLimit-Reset`: Unix seconds (or, from some gateways, a delta)."""
    value = _number(text)
    if value is None:
        return None
    return value - now_epoch if value >= _EPOCH_FLOOR else value


def parse_retry_after(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """Seconds the server asks us to wait, from `Retry-After` or `X-RateLimit-Reset`.

    `Retry-After` wins when both are readable. The result is clamped to
    [0, MAX_RETRY_AFTER_S]; None when neither header says anything usable.
    """
    wait: float | None = None
    text = _header(headers, "Retry-After")
    if text is not None:
        wait = _retry_after(text, now_epoch)
    if wait is None:
        text = _header(headers, "X-RateLimit-Reset")
        if text is not None:
            wait = _reset(text, now_epoch)
    if wait is None:
        return None
    return min(max(wait, 0.0), MAX_RETRY_AFTER_S)
