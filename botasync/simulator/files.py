"""Media file contents and pre-signed URLs (pure: no I/O).

A file's bytes are a blake2b stream keyed by its media id, so any offset can be
produced without the rest of the file and a client can check what it downloaded
with `file_bytes`. URLs carry an expiry and an HMAC of the media id and expiry,
like an S3 pre-signed URL.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

BLOCK = 64  # bytes per blake2b digest
CHUNK = 64 * 1024  # bytes per streamed chunk


def _blocks(media_id: str, first: int, count: int) -> bytes:
    base = hashlib.blake2b(media_id.encode(), digest_size=BLOCK, person=b"botasync-sim")
    out = []
    for n in range(first, first + count):
        h = base.copy()
        h.update(n.to_bytes(8, "big"))
        out.append(h.digest())
    return b"".join(out)


def file_chunks(media_id: str, start: int, end: int) -> Iterator[bytes]:
    """Bytes `start` to `end` (exclusive) of the media's file, in chunks of at most CHUNK."""
    pos = start
    while pos < end:
        stop = min(end, pos + CHUNK)
        first = pos // BLOCK
        data = _blocks(media_id, first, -(-stop // BLOCK) - first)
        yield data[pos - first * BLOCK: stop - first * BLOCK]
        pos = stop


def file_bytes(media_id: str, size: int) -> bytes:
    """The whole file of a media item of `size` bytes (for tests and checks)."""
    return b"".join(file_chunks(media_id, 0, size))


def sign(secret: bytes, media_id: str, expires: int) -> str:
    """The URL signature for this media id and expiry (hex HMAC-SHA256)."""
    return hmac.new(secret, f"{media_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def check_signature(secret: bytes, media_id: str, expires: str, sig: str, now: float) -> str | None:
    """Why a file URL is refused (tampered or expired), or None when it is good."""
    if not expires.isdigit():
        return "AccessDenied: missing or invalid expiry"
    if not hmac.compare_digest(sign(secret, media_id, int(expires)), sig):
        return "SignatureDoesNotMatch: the URL was altered"
    if now >= int(expires):
        return "AccessDenied: Request has expired"
    return None


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """`(start, end_exclusive)` for a `bytes=N-` / `bytes=N-M` header.

    None when the header is not one we understand (serve the whole file, as RFC 9110
    allows), "unsatisfiable" when it starts past the end.
    """
    unit, _, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or not first.isdigit() or "," in spec:
        return None
    start = int(first)
    if last and not last.isdigit():
        return None
    end = min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        return "unsatisfiable"
    return start, end
