"""The media files on disk: names, hashing, atomic publication, the directory lock.

Layout: each project has a root, `files_dir` itself for the project `default` (where a
mirror of one project always kept its files) and `<files_dir>/<project>` for any other;
under it `<root>/<recording_id>/<media_id>.<ext>`, and while a download is under way
`<root>/<recording_id>/.<media_id>.part` beside it, so the final rename is atomic (same
directory, same filesystem) and a partial file never shows under its final name. A
deployed recording's own file has the recording's id for its media id:
`<root>/<rec_id>/<rec_id>.<ext>`. A project's files sit one level deeper than the
default's, so the two never share a path, even for a project named like a recording;
the default's scan, which looks for recording directories holding files, passes over
the project directories. Ids are the models' (`rec_`/`med_` and a short run of letters,
digits, `_` and `-`), project names the configuration's (a-z, 0-9, `_`, `-`) and
extensions a short run of letters and digits, so no name the API sends can climb out of
`files_dir`. The naming is pure; the helpers that touch the disk are blocking and are
meant to run in a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from botasync.api.models import MEDIA_ID, RECORDING_ID
from botasync.envelope import DEFAULT_PROJECT
from botasync.locks import ExclusiveLock

HASH_CHUNK = 1 << 20  # bytes read at a time when hashing a file
LOCK_NAME = ".botasync.lock"
PART_SUFFIX = ".part"
# the types Bota sends, named as people expect; anything else goes through `mimetypes`
EXTENSIONS = {
    "audio/opus": ".opus",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/m4a": ".m4a",
    "audio/flac": ".flac",
    "audio/aac": ".aac",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/webm": ".webm",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/heic": ".heic",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
}
_EXT_RE = re.compile(r"\.[A-Za-z0-9]{1,10}")
RECORDING_ID_RE = RECORDING_ID
MEDIA_ID_RE = MEDIA_ID
_FILE_ID = f"(?:{MEDIA_ID.pattern}|{RECORDING_ID.pattern})"  # a media id, or a recording's own
_FINAL_RE = re.compile(rf"({_FILE_ID})(\.[A-Za-z0-9]{{1,10}})?")
_PART_RE = re.compile(rf"\.({_FILE_ID})\.part")
PROJECT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # a project's name, as config allows it


def project_root(files_dir: Path, project: str = DEFAULT_PROJECT) -> Path:
    """Where a project's files live: `files_dir` for `default`, else `<files_dir>/<project>`."""
    if project == DEFAULT_PROJECT:
        return files_dir
    if not PROJECT_RE.fullmatch(project):
        raise ValueError(f"not a project name: {project!r}")
    return files_dir / project


def extension_for(mime_type: str | None) -> str:
    """`.opus` for `audio/opus`, ...; else what `mimetypes` knows; else `.bin`."""
    base = (mime_type or "").split(";", 1)[0].strip().lower()
    ext = EXTENSIONS.get(base) or mimetypes.guess_extension(base, strict=False) or ".bin"
    # a name that reaches the disk must not be able to say `/..` or anything odd
    return ext if _EXT_RE.fullmatch(ext) else ".bin"


def is_file_id(recording_id: str, media_id: str) -> bool:
    """A media id of this recording: `med_...`, or the recording's own id (its own file)."""
    return bool(MEDIA_ID_RE.fullmatch(media_id)) or media_id == recording_id


def _checked(recording_id: str, media_id: str) -> None:
    """Refuse ids that could step outside the directory (they come from the network)."""
    if not RECORDING_ID_RE.fullmatch(recording_id) or not is_file_id(recording_id, media_id):
        raise ValueError(f"not a recording/media id pair: {recording_id!r}, {media_id!r}")


def final_path(root: Path, recording_id: str, media_id: str, mime_type: str | None) -> Path:
    """Where a verified file lives."""
    _checked(recording_id, media_id)
    return root / recording_id / f"{media_id}{extension_for(mime_type)}"


def part_path(root: Path, recording_id: str, media_id: str) -> Path:
    """Where its download grows, hidden, in the same directory as the final name."""
    _checked(recording_id, media_id)
    return root / recording_id / f".{media_id}{PART_SUFFIX}"


def finals(root: Path, recording_id: str, media_id: str) -> list[Path]:
    """The published files of one media item, whatever their extension (blocking).

    The extension may come from the download-url answer, so a file published before a
    crash, before it was recorded, is found by its name alone.
    """
    _checked(recording_id, media_id)
    try:
        with os.scandir(root / recording_id) as entries:
            return sorted(Path(e.path) for e in entries if e.is_file(follow_symlinks=False)
                          and parse_name(e.name) == (media_id, False))
    except (FileNotFoundError, NotADirectoryError):
        return []


@dataclass(frozen=True)
class FoundFile:
    """A file of ours found on disk: whose, which, and whether it is a partial download."""

    recording_id: str
    media_id: str
    path: Path
    is_part: bool


def parse_name(name: str) -> tuple[str, bool] | None:
    """(media id, is a part) for one of our file names; None for anything else."""
    m = _PART_RE.fullmatch(name)
    if m:
        return m.group(1), True
    m = _FINAL_RE.fullmatch(name)
    return (m.group(1), False) if m else None


def scan(root: Path) -> list[FoundFile]:
    """Every file of ours under `root` (blocking). Names we did not make are ignored."""
    found: list[FoundFile] = []
    if not root.is_dir():
        return found
    with os.scandir(root) as top:
        for d in top:
            if not (d.is_dir(follow_symlinks=False) and RECORDING_ID_RE.fullmatch(d.name)):
                continue
            found += _scan_recording(d)
    return found


def _scan_recording(d: os.DirEntry[str]) -> list[FoundFile]:
    """The files of one recording's directory; one removed meanwhile has none."""
    try:
        with os.scandir(d.path) as inner:
            return [FoundFile(d.name, parsed[0], Path(f.path), parsed[1]) for f in inner
                    if f.is_file(follow_symlinks=False) and (parsed := parse_name(f.name))
                    and is_file_id(d.name, parsed[0])]
    except FileNotFoundError:  # a prune or an orphan sweep removed it while we looked
        return []


def size_of(path: Path) -> int | None:
    """A file's size, or None when it is not there."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def hash_file(path: Path) -> tuple[hashlib._Hash, int]:
    """A SHA-256 of the file so far (to go on feeding) and its size (blocking)."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h, size


def append(path: Path, data: bytes, hasher: hashlib._Hash) -> None:
    """Add bytes to a partial file and to its running hash (blocking).

    Opened and closed per call, so a download cancelled while a write is in a
    thread never leaves a file handle behind.
    """
    with path.open("ab") as f:
        f.write(data)
    hasher.update(data)


def start_over(path: Path) -> None:
    """Create or empty a partial file (blocking)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb"):
        pass


def publish(part: Path, final: Path) -> None:
    """fsync the part, rename it to its final name, fsync the directory (blocking).

    After this returns the file is on disk under its name, complete, even across a
    power cut; before it, the final name is untouched.
    """
    with part.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, final)
    fsync_dir(final.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove(path: Path) -> int:
    """Delete a file; the bytes freed (0 when it was not there)."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def remove_dir_if_empty(path: Path) -> None:
    """Drop a recording's directory once its last file is gone."""
    with contextlib.suppress(OSError):
        path.rmdir()


def disk_free(root: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) `root`."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


class DirLock(ExclusiveLock):
    """An exclusive lock on a files directory, so two processes never write the same part."""

    def __init__(self, root: Path) -> None:
        super().__init__(root / LOCK_NAME, f"another botasync process is downloading into {root}")
