"""The retry schedule and `Retry-After` parsing: case tables and hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from botasync.backoff import MAX_RETRY_AFTER_S, Jitter, backoff_delay, parse_retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("attempt", "r", "jitter", "expected"),
    [
        (0, 1.0, "full", 0.5),
        (0, 0.0, "full", 0.0),
        (0, 0.5, "full", 0.25),
        (1, 1.0, "full", 1.0),
        (3, 1.0, "full", 4.0),
        (10, 1.0, "full", 30.0),  # 512 capped
        (0, 0.0, "equal", 0.25),
        (0, 1.0, "equal", 0.5),
        (2, 0.0, "equal", 1.0),
        (2, 0.5, "equal", 1.5),
        (20, 0.0, "equal", 15.0),  # capped, then halved: never fires at once
        (10_000, 1.0, "equal", 30.0),  # huge attempts do not overflow
        (-3, 1.0, "full", 0.5),  # a negative attempt counts as the first retry
    ],
)
def test_backoff_table(attempt: int, r: float, jitter: Jitter, expected: float) -> None:
    """Each attempt doubles the ceiling up to the cap, and the jitter draws inside it."""
    got = backoff_delay(attempt, base=0.5, cap=30.0, rand=lambda: r, jitter=jitter)
    assert got == pytest.approx(expected)


def test_backoff_default_is_equal_jitter() -> None:
    """Without a jitter argument the delay is at least half the ceiling."""
    assert backoff_delay(3, base=1.0, cap=100.0, rand=lambda: 0.0) == 4.0


def test_backoff_rejects_negative_base() -> None:
    """A negative base or cap is a programming error, not a zero delay."""
    with pytest.raises(ValueError, match="base and cap"):
        backoff_delay(0, base=-1.0, cap=1.0, rand=lambda: 0.5)


@given(
    attempt=st.integers(min_value=-5, max_value=5000),
    base=st.floats(min_value=0, max_value=1000, allow_nan=False),
    cap=st.floats(min_value=0, max_value=10_000, allow_nan=False),
    r=st.floats(min_value=-1, max_value=2, allow_nan=False),
    jitter=st.sampled_from(["full", "equal"]),
)
def test_backoff_stays_within_cap(
    attempt: int, base: float, cap: float, r: float, jitter: Jitter
) -> None:
    """Whatever the inputs (even a rand() out of range), 0 <= delay <= cap."""
    d = backoff_delay(attempt, base=base, cap=cap, rand=lambda: r, jitter=jitter)
    assert 0.0 <= d <= cap


@given(attempt=st.integers(min_value=0, max_value=40), r=st.floats(0, 1))
def test_backoff_equal_jitter_grows(attempt: int, r: float) -> None:
    """With equal jitter, the floor of attempt n+1 is at least the floor of attempt n."""
    lo_now = backoff_delay(attempt, base=0.1, cap=60.0, rand=lambda: 0.0)
    lo_next = backoff_delay(attempt + 1, base=0.1, cap=60.0, rand=lambda: 0.0)
    assert lo_now <= lo_next
    assert lo_now <= backoff_delay(attempt, base=0.1, cap=60.0, rand=lambda: r)


def _http_date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "2.5"}, 2.5),  # any case
        ({"Retry-After": " 3 "}, 3.0),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "-4"}, 0.0),  # clamped at 0
        ({"Retry-After": "999999"}, MAX_RETRY_AFTER_S),  # clamped at the maximum
        ({"Retry-After": _http_date(NOW + 30)}, 30.0),
        ({"Retry-After": _http_date(NOW - 30)}, 0.0),  # a date in the past: go now
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"X-RateLimit-Reset": str(int(NOW) + 12)}, 12.0),
        ({"x-ratelimit-reset": str(int(NOW) + 12)}, 12.0),
        ({"X-RateLimit-Reset": str(int(NOW) - 5)}, 0.0),
        ({"X-RateLimit-Reset": "20"}, 20.0),  # a gateway sending a delta
        ({"X-RateLimit-Reset": "never"}, None),
        ({"Retry-After": "4", "X-RateLimit-Reset": str(int(NOW) + 50)}, 4.0),  # Retry-After wins
        ({"Retry-After": "bogus", "X-RateLimit-Reset": str(int(NOW) + 50)}, 50.0),  # falls back
    ],
)
def test_parse_retry_after_table(headers: dict[str, str], expected: float | None) -> None:
    """Seconds, HTTP dates and reset epochs all become a clamped wait, or None."""
    got = parse_retry_after(headers, NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1.0 if "GMT" in str(headers) else 1e-9)


@given(
    value=st.one_of(
        st.text(max_size=40),
        st.integers(min_value=-(10**12), max_value=10**12).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
    ),
    name=st.sampled_from(["Retry-After", "X-RateLimit-Reset", "retry-after"]),
)
def test_parse_retry_after_is_bounded(value: str, name: str) -> None:
    """Any header value gives None or a wait within [0, MAX_RETRY_AFTER_S], never an error."""
    got = parse_retry_after({name: value}, NOW)
    assert got is None or 0.0 <= got <= MAX_RETRY_AFTER_S
