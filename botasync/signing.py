"""Webhook signatures, Stripe style: `Botasync-Signature: t=<unix>,v1=<hex>`.

The MAC is HMAC-SHA256 over `f"{t}.".encode() + body` with the shared secret, so a
receiver can check both the body and its age (a captured request replayed later
fails the timestamp check). Pure: the time comes in as an argument.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "Botasync-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300


def _mac(secret: bytes, body: bytes, timestamp: int) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The header value for `body` sent at `timestamp` (Unix seconds)."""
    return f"t={timestamp},{SCHEME}={_mac(secret, body, timestamp)}"


def parse(header: str) -> tuple[int, list[str]] | None:
    """The timestamp and the `v1` signatures of a header, or None if it is malformed.

    Several `v1` entries are allowed, so a sender can sign with an old and a new
    secret while the receiver's secret is being rotated.
    """
    timestamp: int | None = None
    sigs: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            if not value.isdigit():
                return None
            timestamp = int(value)
        elif key == SCHEME:
            sigs.append(value)
    if timestamp is None or not sigs:
        return None
    return timestamp, sigs


def verify(
    secret: bytes, body: bytes, header: str, now: int, tolerance_s: int = DEFAULT_TOLERANCE_S
) -> bool:
    """Whether `header` signs `body` with `secret` and is at most `tolerance_s` old (or ahead)."""
    parsed = parse(header)
    if parsed is None:
        return False
    timestamp, sigs = parsed
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, body, timestamp).encode()
    # compare every candidate (no early exit) in constant time per candidate
    found = False
    for sig in sigs:
        found |= hmac.compare_digest(expected, sig.encode())
    return found
