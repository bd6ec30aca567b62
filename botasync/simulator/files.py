"""File contents and pre-signed URLs (pure: no I/O).

A media file's bytes (documented dialect) are a SHAKE-256 stream keyed by its media id,
so any offset can be produced without the rest of the file and a client can check what
it downloaded with `file_bytes`.

A recording's own file (deployed dialect) carries a sha256 in the recording object, and
hashing 100,000 files of a few hundred kilobytes would take minutes. So its bytes are
one shared stream (the body) followed by a tail of up to `TAIL` bytes keyed by the
recording id and size: the hash then starts from a checkpoint of the shared stream and
costs a couple of microseconds, while any two files still differ (and a file cut short
or swapped for another one fails its hash).

URLs carry an expiry (and optionally a nonce) and an HMAC of them with the file id, like
an S3 pre-signed URL.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator

BLOCK = 4096  # bytes per block of the stream
CHUNK = 64 * 1024  # bytes per streamed chunk
SHARED_KEY = "\x00shared recording body"  # no media id can collide with it
TAIL = 32  # bytes at the end of a recording's file that are its own
CHECKPOINT = 256  # bytes between saved sha256 states of the shared body


def _blocks(media_id: str, first: int, count: int) -> bytes:
    # block n is SHAKE-256 of the id and n, as long as a block: one C call a block (a
    # 64-byte blake2b a block made the simulator spend 4 ms of CPU on every 256 KB file)
    base = hashlib.shake_256(b"botasync-sim\x00" + media_id.encode() + b"\x00")
    out = []
    for n in range(first, first + count):
        h = base.copy()
        h.update(n.to_bytes(8, "big"))
        out.append(h.digest(BLOCK))
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


class _SharedBody:
    """The shared body of recording files, grown on demand, with sha256 checkpoints."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.states = [hashlib.sha256()]  # states[i]: the hash of data[: i * CHECKPOINT]
        self.covered = 0  # bytes with data and checkpoints both in place (set last)
        self._lock = threading.Lock()  # the contract tests serve from a second thread

    def ensure(self, size: int) -> None:
        """Grow the body (and its checkpoints) to at least `size` bytes."""
        if self.covered >= size:
            return
        with self._lock:
            have = len(self.data)
            if have >= size:
                return
            want = max(size, 2 * have, 256 * 1024)
            want += -want % CHECKPOINT
            self.data.extend(b"".join(file_chunks(SHARED_KEY, have, want)))
            state = self.states[-1].copy()
            for pos in range(len(self.states) * CHECKPOINT, want + 1, CHECKPOINT):
                state.update(self.data[pos - CHECKPOINT: pos])
                self.states.append(state.copy())
            self.covered = want


_SHARED = _SharedBody()


def _tail(rec_id: str, size: int) -> bytes:
    digest = hashlib.blake2b(f"{rec_id}\n{size}".encode(), digest_size=TAIL,
                             person=b"botasync-tail").digest()
    return digest[: min(size, TAIL)]


def recording_chunks(rec_id: str, size: int, start: int, end: int) -> Iterator[bytes]:
    """Bytes `start` to `end` (exclusive) of a recording's file of `size` bytes, in chunks."""
    body = size - min(size, TAIL)
    _SHARED.ensure(body)
    pos = start
    while pos < min(end, body):
        stop = min(end, body, pos + CHUNK)
        yield bytes(_SHARED.data[pos:stop])
        pos = stop
    if end > body:
        yield _tail(rec_id, size)[max(0, start - body): end - body]


def recording_bytes(rec_id: str, size: int) -> bytes:
    """The whole file of a recording of `size` bytes (for tests and checks)."""
    return b"".join(recording_chunks(rec_id, size, 0, size))


def recording_sha256(rec_id: str, size: int) -> str:
    """The hex sha256 of a recording's file, from the nearest checkpoint of the body."""
    body = size - min(size, TAIL)
    _SHARED.ensure(body)
    n = body // CHECKPOINT
    h = _SHARED.states[n].copy()
    h.update(_SHARED.data[n * CHECKPOINT: body])
    h.update(_tail(rec_id, size))
    return h.hexdigest()


def sign(secret: bytes, media_id: str, expires: int, nonce: str = "") -> str:
    """The URL signature for this file id, expiry and nonce (hex HMAC-SHA256)."""
    message = f"{media_id}\n{expires}\n{nonce}" if nonce else f"{media_id}\n{expires}"
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def check_signature(
    secret: bytes, media_id: str, expires: str, sig: str, now: float, nonce: str = "",
) -> str | None:
    """Why a file URL is refused (tampered or expired), or None when it is good."""
    if not expires.isdigit():
        return "AccessDenied: missing or invalid expiry"
    if not hmac.compare_digest(sign(secret, media_id, int(expires), nonce), sig):
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
