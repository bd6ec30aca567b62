"""Fingerprint of a list item: a hash of its canonical JSON.

Stored per recording so an unchanged item costs nothing on the next walk: the
same data in any key order gives the same fingerprint, any change gives another.
"""

from __future__ import annotations

import hashlib
from typing import Any

from botasync.jsoncodec import canonical


def fingerprint(item: Any) -> str:
    """A 32-hex-digit BLAKE2b digest of the item's canonical JSON."""
    return hashlib.blake2b(canonical(item), digest_size=16).hexdigest()
