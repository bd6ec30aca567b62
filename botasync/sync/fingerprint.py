"""Fingerprint of a list item: a hash of its canonical JSON, volatile values left out.

Stored per recording so an unchanged item costs nothing on the next walk: the same
data in any key order gives the same fingerprint, any change gives another. A signed
URL is newly signed on every answer (the deployed API's `audio_url`): its signature
and expiry would make every item look changed on every walk, so a signed URL counts
by its address alone (scheme, host and path), and nothing else is left out.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from botasync.jsoncodec import canonical

# query parameters that make a URL a signed, expiring one (S3, GCS, Azure, CloudFront, ours)
SIGNING_PARAMS = frozenset({
    "x-amz-signature", "x-amz-expires", "x-amz-credential", "x-amz-date",
    "x-amz-security-token", "x-goog-signature", "x-goog-expires", "x-goog-credential",
    "signature", "sig", "expires", "expiry", "se", "st", "sv", "token", "key-pair-id",
    "policy",
})
VOLATILE_KEYS = frozenset({"audio_url"})  # always a signed URL in the deployed dialect


def fingerprint(item: Any) -> str:
    """A 32-hex-digit BLAKE2b digest of the item's canonical JSON, volatile values stable."""
    return hashlib.blake2b(canonical(stable(item)), digest_size=16).hexdigest()


def stable(value: Any, key: str | None = None) -> Any:
    """The value with every signed URL cut to its address; everything else as it is."""
    if isinstance(value, str):
        if key in VOLATILE_KEYS or ("://" in value and "?" in value and is_signed_url(value)):
            return unsigned(value)
        return value
    if isinstance(value, dict):
        return {k: stable(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def is_signed_url(text: str) -> bool:
    """Whether a URL carries signing or expiry parameters in its query."""
    try:
        query = urlsplit(text).query
    except ValueError:
        return False
    return any(k.lower() in SIGNING_PARAMS for k, _ in parse_qsl(query, keep_blank_values=True))


def unsigned(url: str) -> str:
    """A URL without its query and fragment: what stays the same between two signatures."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else parts.path
