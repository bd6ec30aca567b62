"""One file's bytes: from a pre-signed URL into its part file, checked as they come.

The transfer streams the URL with a session of its own (no API key on it) into
`.<media_id>.part`, in bounded chunks, hashing as it goes, and checks the size against
what the API and the file server say. A refused or expired URL is asked for again at
once; a cut connection resumes with a Range request where the server allows it (a part
of the expected size, left by a crash before its rename, needs no request at all). A
file published before a crash is found again by its size and hash.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from botasync import __version__
from botasync.api.client import DownloadUrl
from botasync.media import files as fs
from botasync.media.ledger import Failure
from botasync.media.queue import Job
from botasync.media.urls import Urls

RENEWALS = 2  # fresh URLs per download after the file server refused one
RESUMES = 3  # resumed requests per download after a cut connection that made progress
FLUSH_BYTES = 1 << 20  # received bytes buffered before a write: bounded memory per download
READ_CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 60.0  # between two reads, not for the whole file
USER_AGENT = f"botasync/{__version__}"
# Bota's examples warn that `content_sha256` is not promised to be the hash of the object
# the download URL serves (it "may return an encrypted container"): a file that hashes
# otherwise is kept, its own sha256 recorded, and the difference said once
SHA256_DIFFERS = "media.sha256_differs"


class _Refused(Exception):
    """The file server refused the URL (expired, or its signature): ask for a new one."""


class _Dropped(Exception):
    """The connection failed mid-transfer; `progressed` when bytes landed in the part."""

    def __init__(self, reason: str, progressed: bool) -> None:
        super().__init__(reason)
        self.progressed = progressed


def expected_size(job: Job, url: DownloadUrl) -> int | None:
    """The size the file must have: the answer's, else the mirror's; None when neither says."""
    if url.file_size_bytes is None:
        return job.size
    if job.size is not None and url.file_size_bytes != job.size:
        raise Failure(f"size changed: the API now says {url.file_size_bytes} bytes, "
                      f"the mirror {job.size} (the next sync will update it)")
    return url.file_size_bytes


def _reason(e: BaseException, url: str) -> str:
    """One line for a transfer error, without the pre-signed URL: it is a credential."""
    text = f"{type(e).__name__}: {e}".rstrip(": ")
    base, _, query = url.partition("?")
    text = text.replace(url, base)
    return text.replace(query, "***") if query else text


def _range_start(header: str | None) -> int | None:
    """The first byte of a `Content-Range: bytes a-b/n` answer."""
    if not header or not header.startswith("bytes "):
        return None
    first = header[6:].split("-", 1)[0].strip()
    return int(first) if first.isdigit() else None


async def published(root: Path, job: Job) -> tuple[Path, str, int] | None:
    """A file published before a crash that checks out: (path, sha256, size); else None.

    Only a file that can be checked (a size or a sha256 to compare) is taken; a complete
    partial file is found by the transfer, once the URL says the size.
    """
    if job.size is None and job.sha256 is None:
        return None
    found = await asyncio.to_thread(fs.finals, root, job.recording_id, job.media_id)
    fits: list[tuple[Path, str, int]] = []  # the right size; first the one that hashes right
    for path in found:
        if job.size is not None and await asyncio.to_thread(fs.size_of, path) != job.size:
            continue
        hasher, size = await asyncio.to_thread(fs.hash_file, path)
        fits.append((path, hasher.hexdigest(), size))
    fits.sort(key=lambda f: f[1] != job.sha256)
    # botasync published it only after its size checked: without a hash that matches
    # (the object may be an encrypted container), a file of the right size is it
    if fits and (fits[0][1] == job.sha256 or (job.size is not None and len(fits) == 1)):
        return fits[0]
    return None


class Transfer:
    """Downloads files into their parts over one session: `open()` in the running loop,
    then `fetch()` per file, `aclose()` at the end."""

    def __init__(self, urls: Urls, project: str, on_bytes: Callable[[int], None]) -> None:
        self._urls = urls
        self._on_bytes = on_bytes  # bytes written to a part, as they are
        self._session: aiohttp.ClientSession | None = None
        self._differs_said: set[str] = set()  # files whose sha256 difference was said
        # the lines of the downloader's logger, bound lazily (see `Downloader._log`)
        self._log = structlog.get_logger("botasync.media", project=project)

    def open(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S),
            headers={"User-Agent": USER_AGENT},
            auto_decompress=False,  # the bytes as stored, so sizes and hashes compare
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, job: Job, part: Path) -> tuple[str, int, str | None]:
        """The item's bytes, complete and checked, in `part`: (sha256, size, the content
        type the first URL's answer gave)."""
        url = await self._urls.get(job)
        expected = expected_size(job, url)
        hasher, size = await self._with_retries(job, url, part, expected)
        digest: str = hasher.hexdigest()
        if job.sha256 is not None and digest != job.sha256:
            self._sha256_differs(job, digest, size)
        return digest, size, url.content_type

    def _sha256_differs(self, job: Job, digest: str, size: int) -> None:
        """Say once per file that its bytes do not hash to the API's `content_sha256`."""
        if job.media_id in self._differs_said:
            return
        self._differs_said.add(job.media_id)
        self._log.warning(SHA256_DIFFERS, media_id=job.media_id, recording_id=job.recording_id,
                          bytes=size, sha256=digest, content_sha256=job.sha256,
                          note="kept: the stored object may be an encrypted container")

    async def _with_retries(
        self, job: Job, url: DownloadUrl, part: Path, expected: int | None
    ) -> tuple[Any, int]:
        """Transfer, renewing a refused URL and resuming a cut connection a few times."""
        renewals = resumes = 0
        while True:
            try:
                return await self._transfer(url, part, expected)
            except _Refused as e:
                self._urls.forget(job.media_id)
                renewals += 1
                if renewals > RENEWALS:
                    raise Failure(f"file URL refused {renewals} times: {e}") from None
                self._log.info("media.url_renewed", media_id=job.media_id, reason=str(e))
                url = await self._urls.get(job)
            except _Dropped as e:
                resumes += 1
                if not e.progressed or resumes > RESUMES:
                    raise Failure(f"download interrupted: {e}") from None
                self._log.info("media.download_resumed", media_id=job.media_id, reason=str(e))

    async def _transfer(
        self, url: DownloadUrl, part: Path, expected: int | None
    ) -> tuple[Any, int]:
        """One GET of the URL into the part (ranged when a part exists); (hash, size).

        A part already of the expected size (a crash before its rename) needs no GET.
        """
        hasher, offset = await self._resume_point(part, expected)
        if offset and offset == expected:
            return hasher, offset
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        assert self._session is not None
        try:
            async with self._session.get(url.url, headers=headers) as resp:
                offset, hasher, bound = await self._accept(resp, part, offset, hasher, expected)
                return hasher, await self._stream(resp, part, hasher, offset, bound)
        except (aiohttp.ClientError, TimeoutError) as e:
            # before any byte: no progress (a failure); `_stream` reports its own drops
            raise _Dropped(_reason(e, url.url), progressed=False) from None

    async def _resume_point(self, part: Path, expected: int | None) -> tuple[Any, int]:
        """The hash and length of a part to resume; an oversized part is thrown away."""
        have = await asyncio.to_thread(fs.size_of, part)
        if have is None or have == 0 or (expected is not None and have > expected):
            await asyncio.to_thread(fs.start_over, part)
            return hashlib.sha256(), 0
        return await asyncio.to_thread(fs.hash_file, part)

    async def _accept(
        self, resp: aiohttp.ClientResponse, part: Path, offset: int, hasher: Any,
        expected: int | None,
    ) -> tuple[int, Any, int | None]:
        """Check the answer before reading it; (offset the body starts at, hash so far, and
        the size the file must reach: the expected one, else what the server announces)."""
        if resp.status in (401, 403):
            raise _Refused(f"file server answered {resp.status}")
        if resp.status == 416 or (resp.status == 206 and _range_start(
                resp.headers.get("Content-Range")) != offset):
            await asyncio.to_thread(fs.start_over, part)
            raise _Dropped(f"range not served as asked ({resp.status})", progressed=True)
        if resp.status == 200 and offset:  # the server ignores Range: start over
            await asyncio.to_thread(fs.start_over, part)
            offset, hasher = 0, hashlib.sha256()
        elif resp.status not in (200, 206):
            raise Failure(f"file server answered {resp.status}")
        length = resp.content_length
        if length is None:
            return offset, hasher, expected
        if expected is not None and offset + length != expected:
            raise Failure(f"wrong size: the file server sends {offset + length} bytes, "
                          f"expected {expected}", discard_part=True)
        return offset, hasher, offset + length

    async def _stream(
        self, resp: aiohttp.ClientResponse, part: Path, hasher: Any, offset: int,
        expected: int | None,
    ) -> int:
        """Copy the body to the part in bounded chunks, hashing as it goes; the final size.

        With no size known at all (neither the API nor the file server says), the file
        is what the server streams.
        """
        got, buf = offset, bytearray()
        try:
            async for chunk in resp.content.iter_chunked(READ_CHUNK):
                got += len(chunk)
                if expected is not None and got > expected:
                    raise Failure(f"wrong size: more than the expected {expected} bytes",
                                  discard_part=True)
                buf += chunk
                if len(buf) >= FLUSH_BYTES:
                    await self._write(part, buf, hasher)
        except (aiohttp.ClientError, TimeoutError) as e:
            await self._write(part, buf, hasher)  # keep what arrived: the resume starts after it
            raise _Dropped(_reason(e, str(resp.url)), progressed=got > offset) from None
        await self._write(part, buf, hasher)
        if expected is not None and got != expected:
            raise Failure(f"wrong size: received {got} bytes, expected {expected}",
                          discard_part=True)
        return got

    async def _write(self, part: Path, buf: bytearray, hasher: Any) -> None:
        if not buf:
            return
        data = bytes(buf)
        buf.clear()
        await asyncio.to_thread(fs.append, part, data, hasher)
        self._on_bytes(len(data))
