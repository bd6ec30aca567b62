"""Webhook signatures, in the three schemes a webhook handler can speak.

- `bota` (the default): as Bota signs its own webhooks, so a receiver written for
  them accepts botasync's deliveries unchanged. `X-Bota-Timestamp: <unix seconds>`,
  `X-Bota-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>">` keyed with the
  secret's UTF-8 bytes, and `X-Bota-Event-Id: <the event id>` (equal to the body's `id`).
- `standard`: Standard Webhooks v1 (`webhook-id`, `webhook-timestamp`,
  `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`), keyed with
  the base64 part of a `whsec_<base64>` secret, for the libraries that verify it.
- `botasync`: the original Stripe-style `Botasync-Signature: t=<unix>,v1=<hex>` over
  `"<t>." + body`; `sign`, `parse` and `verify` below are its two sides.

Every scheme signs the raw body with its timestamp, so a receiver checks the body
and its age (a captured request replayed later fails the timestamp check). Pure:
the time comes in as an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Literal

SignatureMode = Literal["bota", "standard", "botasync"]
SIGNATURE_MODES: tuple[SignatureMode, ...] = ("bota", "standard", "botasync")

SIGNATURE_HEADER = "Botasync-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300

BOTA_SIGNATURE_HEADER = "X-Bota-Signature"
BOTA_TIMESTAMP_HEADER = "X-Bota-Timestamp"
BOTA_EVENT_ID_HEADER = "X-Bota-Event-Id"

STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
STANDARD_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


# --- bota ----------------------------------------------------------------------------


def bota_signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """The `X-Bota-Signature` value for `body` sent at `timestamp` (Unix seconds)."""
    return f"v1={_hmac(secret, f'{timestamp}.'.encode() + body).hex()}"


# --- standard webhooks -----------------------------------------------------------------


def standard_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; `ValueError` saying what is wrong.

    Padding may be left out, as some providers print it; anything but the standard
    base64 alphabet is refused, so a secret pasted with a stray character fails now
    rather than on every delivery.
    """
    why = f'a "standard" secret must be {STANDARD_SECRET_PREFIX} followed by base64'
    if not secret.startswith(STANDARD_SECRET_PREFIX):
        raise ValueError(f"{why} (it does not start with {STANDARD_SECRET_PREFIX})")
    encoded = secret[len(STANDARD_SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"{why} (the rest is not base64)") from None
    if not key:
        raise ValueError(f"{why} (the key after {STANDARD_SECRET_PREFIX} is empty)")
    return key


def standard_signature(key: bytes, msg_id: str, body: bytes, timestamp: int) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`."""
    mac = _hmac(key, f"{msg_id}.{timestamp}.".encode() + body)
    return f"v1,{base64.b64encode(mac).decode('ascii')}"


# --- choosing ------------------------------------------------------------------------


def signing_key(mode: SignatureMode, secret: str) -> bytes:
    """The key `mode` signs with: a standard secret decoded, else the secret's UTF-8 bytes."""
    return standard_key(secret) if mode == "standard" else secret.encode("utf-8")


def webhook_headers(
    mode: SignatureMode, key: bytes | None, body: bytes, event_id: str, timestamp: int
) -> dict[str, str]:
    """The headers that name and sign one delivery of `body` in `mode`.

    The mode's event-id header always; its timestamp and signature only with a key.
    """
    if mode == "bota":
        headers = {BOTA_EVENT_ID_HEADER: event_id}
        if key is not None:
            headers[BOTA_TIMESTAMP_HEADER] = str(timestamp)
            headers[BOTA_SIGNATURE_HEADER] = bota_signature(key, body, timestamp)
        return headers
    if mode == "standard":
        headers = {STANDARD_ID_HEADER: event_id}
        if key is not None:
            headers[STANDARD_TIMESTAMP_HEADER] = str(timestamp)
            headers[STANDARD_SIGNATURE_HEADER] = standard_signature(key, event_id, body, timestamp)
        return headers
    return {SIGNATURE_HEADER: sign(key, body, timestamp)} if key is not None else {}


# --- botasync ------------------------------------------------------------------------


def _mac(secret: bytes, body: bytes, timestamp: int) -> str:
    return _hmac(secret, f"{timestamp}.".encode() + body).hex()


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The `Botasync-Signature` value for `body` sent at `timestamp` (Unix seconds)."""
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
            # isdigit() alone takes "²", which int() refuses
            if not (value.isascii() and value.isdigit()):
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
