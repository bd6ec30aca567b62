"""Webhook signatures: the header format, verification, tampering and staleness."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from botasync.signing import parse, sign, verify

SECRET = b"whsec_test"
BODY = b'{"id":"evt_1","type":"recording.created"}'
T = 1_700_000_000


def reference_mac(secret: bytes, body: bytes, t: int) -> str:
    """The MAC computed independently of the module, as a receiver would."""
    return hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


def test_sign_matches_an_independent_hmac() -> None:
    """The header is `t=<unix>,v1=<hex hmac-sha256 of "t." + body>`."""
    assert sign(SECRET, BODY, T) == f"t={T},v1={reference_mac(SECRET, BODY, T)}"


@pytest.mark.parametrize(
    ("body", "header_t", "now", "secret", "expected"),
    [
        (BODY, T, T, SECRET, True),
        (BODY, T, T + 300, SECRET, True),  # exactly at the tolerance
        (BODY, T, T - 300, SECRET, True),  # a sender clock slightly ahead
        (BODY, T, T + 301, SECRET, False),  # stale
        (BODY, T, T - 301, SECRET, False),  # from the future
        (BODY + b" ", T, T, SECRET, False),  # tampered body
        (BODY, T, T, b"other", False),  # wrong secret
    ],
)
def test_verify_cases(body: bytes, header_t: int, now: int, secret: bytes, expected: bool) -> None:
    """Verification accepts a fresh genuine signature and nothing else."""
    header = sign(SECRET, BODY, header_t)
    assert verify(secret, body, header, now) is expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"t={T}",
        f"v1={reference_mac(SECRET, BODY, T)}",
        f"t=abc,v1={reference_mac(SECRET, BODY, T)}",
        f"t={T},v0={reference_mac(SECRET, BODY, T)}",
        f"t={T + 1},v1={reference_mac(SECRET, BODY, T)}",  # timestamp moved
    ],
)
def test_malformed_or_forged_headers_fail(header: str) -> None:
    """A header missing its parts, or whose timestamp was changed, never verifies."""
    assert verify(SECRET, BODY, header, T) is False


def test_any_of_several_v1_signatures_verifies() -> None:
    """During a secret rotation a header may carry one signature per secret."""
    header = f"t={T},v1={reference_mac(b'old', BODY, T)},v1={reference_mac(SECRET, BODY, T)}"
    assert parse(header) == (T, [reference_mac(b"old", BODY, T), reference_mac(SECRET, BODY, T)])
    assert verify(SECRET, BODY, header, T) is True
    assert verify(b"neither", BODY, header, T) is False


@given(secret=st.binary(min_size=1, max_size=64), body=st.binary(max_size=512),
       t=st.integers(min_value=0, max_value=2**40), flip=st.integers(min_value=0))
def test_round_trip_and_any_flipped_byte_fails(
    secret: bytes, body: bytes, t: int, flip: int
) -> None:
    """Whatever the body, its own signature verifies and one changed byte breaks it."""
    header = sign(secret, body, t)
    assert header == f"t={t},v1={reference_mac(secret, body, t)}"
    assert verify(secret, body, header, t)
    if body:
        i = flip % len(body)
        tampered = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
        assert not verify(secret, tampered, header, t)
