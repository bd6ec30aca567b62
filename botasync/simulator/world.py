"""The simulated Bota archive: recordings newest first, indexed for the API's filters.

Items are kept serialised (orjson bytes): a page of the list is then a join of stored
bytes, and 100,000 recordings fit in tens of megabytes. The order is a list of keys,
oldest first, so a new recording is an append and a page is a slice from the end.
Each key has an integer rank that grows with position; the per-field indices
(`status`, `device_id`, `end_user_id`) are key lists kept in rank order with bisect,
so a filtered page never scans the whole archive.

A world speaks one of two dialects. `documented` is the API as Bota's reference
describes it (offset pages, `media[]`). `deployed` is the API as deployed (cursor
pages, one file per recording with its sha256, a newly signed `audio_url` on every
answer, seven statuses, `updated_at`): its stored items hold `deployed.AUDIO_MARK` in
place of the URL, and every read that serves them (`page_body`, `cursor_page_body`,
`detail_body`, `get`, `all`, `iter_bodies`) swaps in a URL from a signer, so a page
costs one HMAC per item on top of the join.

Transcriptions and summaries live in `transcripts.Transcripts` (`world.transcripts`):
made when first read, and told of every change to a recording through `_replace` and
`_remove_key`. They draw on a generator of their own, so the recordings a seed builds
are the same as without them.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from botasync.simulator import archive, deployed, speech
from botasync.simulator.archive import IN_FLIGHT, STATUSES, Cast
from botasync.simulator.clock import Clock, SystemClock, iso_ms, parse_iso_ms
from botasync.simulator.deployed import InvalidCursor, decode_cursor, encode_cursor
from botasync.simulator.files import file_chunks, recording_chunks, sign
from botasync.simulator.transcripts import Transcripts

Item = dict[str, Any]
Dialect = Literal["documented", "deployed"]
DIALECTS: tuple[Dialect, ...] = ("documented", "deployed")
Signer = Callable[[str], str]  # file id -> a signed URL to its file
INDEXED = ("status", "device_id", "end_user_id")
RANK_BITS = 20
RANK_STEP = 1 << RANK_BITS
RAW_PREFIX = "\x00raw"  # keys of put_raw items that cannot be reached by id
MOVE_WEIGHTS = {"create": 3.0, "advance": 6.0, "media": 1.5, "edit": 1.0, "delete": 0.5}
DEPLOYED_MOVE_WEIGHTS = {"create": 3.0, "advance": 6.0, "edit": 1.5, "delete": 0.5}
MARK_JSON = orjson.dumps(deployed.AUDIO_MARK)
RETRANSCRIBE_RATE = 0.01  # the share of `step()` moves that re-run a transcription
NO_AUDIO = ("pending", "streaming")  # nothing to transcribe yet


def _clone(value: Any) -> Any:
    """A deep copy that is also plain JSON (what the API would send)."""
    return orjson.loads(orjson.dumps(value))


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file a download URL can point at: a media item's, or a deployed recording's own."""

    id: str
    size: int
    content_type: str
    own: bool  # a deployed recording's file (its bytes match the recording's sha256)

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes `start` to `end` (exclusive) of the file, in chunks."""
        if self.own:
            return recording_chunks(self.id, self.size, start, end)
        return file_chunks(self.id, start, end)


class World:
    """A deterministic archive of recordings that tests and `step()` can change."""

    def __init__(
        self, seed: int = 0, recordings: int = 0, *, start: datetime | None = None,
        max_file_bytes: int = 262_144, clock: Clock | None = None,
        dialect: Dialect = "documented",
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
        self.seed = seed
        self.dialect: Dialect = dialect
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.max_file_bytes = max_file_bytes
        self._rng = random.Random(seed)
        self.cast = Cast.generate(self._rng)
        self.project_id = archive.new_id(self._rng, "proj_", 10) if self.deployed else None
        # signs `audio_url` for reads that are not answers to a request (`get`, `all`);
        # a Simulator installs its own when it starts serving this world
        self.signer: Signer = self._unserved_url
        self._epoch = 0  # how many times the ranks were spread out (cursors carry it)
        self._items: dict[str, bytes] = {}
        self._rank: dict[str, int] = {}
        self._order: list[str] = []
        self._index: dict[tuple[str, str], list[str]] = {}
        self._media_owner: dict[str, str] = {}
        self._txn_owner: dict[str, str] = {}  # documented: transcription_id -> recording key
        self._raw_count = 0
        # Transcriptions have their own generator, so the recordings a seed makes (and the
        # moves `step` picks for them) stay what they were before there were transcripts.
        self._talk_rng = random.Random(f"{seed}:transcripts")
        self.transcripts = Transcripts(
            seed, dialect, self.project_id or speech.derived_id("proj_", f"{seed}:project", 10),
            load=self._recording_or_none, now_ms=self._now_ms, owner=self._txn_owner)
        if start is None:
            start_s = self.clock.now()
        else:
            start_s = (start if start.tzinfo else start.replace(tzinfo=UTC)).timestamp()
        self._last_ms = int(start_s) * 1000
        self._made = (recordings, start_s)  # what `like` builds another world from
        self._generate(recordings)

    def like(self, seed: int) -> World:
        """A new world built as this one was (as many recordings, the same start, clock,
        dialect and file sizes) from another seed: another Bota project beside it."""
        recordings, start_s = self._made
        return World(seed, recordings, start=datetime.fromtimestamp(start_s, UTC),
                     max_file_bytes=self.max_file_bytes, clock=self.clock, dialect=self.dialect)

    # -- generation -------------------------------------------------------------------

    def _generate(self, count: int) -> None:
        """Build `count` recordings newest first: a few dozen in flight at the top.

        Each is serialised as soon as it is made and the order and indices are filled
        newest first and reversed once, so 100,000 items build in a couple of seconds.
        """
        in_flight = min(40, count // 20)
        created_ms = self._last_ms
        newest_first: list[str] = []
        for i in range(count):
            if self.deployed:
                item = self._deployed_recording(created_ms, in_flight=i < in_flight)
            else:
                status = self._rng.choice(IN_FLIGHT) if i < in_flight else (
                    "failed" if self._rng.random() < 0.08 else "completed")
                item = archive.recording(self._rng, self.cast, created_ms=created_ms,
                                         status=status, max_bytes=self.max_file_bytes)
            while item["id"] in self._items:
                item["id"] = archive.new_id(self._rng, "rec_")
            key = item["id"]
            newest_first.append(key)
            self._rank[key] = (count - 1 - i) * RANK_STEP
            self._items[key] = orjson.dumps(item)
            for ikey in self._index_keys(item):
                self._index.setdefault(ikey, []).append(key)
            for media_id in self._media_ids(item):
                self._media_owner[media_id] = key
            if isinstance(txn_id := item.get("transcription_id"), str):
                self._txn_owner[txn_id] = key
            created_ms -= self._rng.randint(30, 1800) * 1000
        self._order = newest_first[::-1]
        for keys in self._index.values():
            keys.reverse()

    def _deployed_recording(self, created_ms: int, *, in_flight: bool) -> Item:
        if in_flight:
            status = self._rng.choice(deployed.IN_FLIGHT)
        else:
            draw = self._rng.random()
            status = "failed" if draw < 0.05 else "integrity_failure" if draw < 0.07 else (
                "completed")
        assert self.project_id is not None
        return deployed.recording(self._rng, self.cast, self.project_id, created_ms=created_ms,
                                  now_ms=self._last_ms, status=status,
                                  max_bytes=self.max_file_bytes)

    # -- storage and indices ------------------------------------------------------------

    def _rank_of(self, key: str) -> int:
        return self._rank[key]

    def _sorted_insert(self, keys: list[str], key: str) -> None:
        if not keys or self._rank[keys[-1]] < self._rank[key]:
            keys.append(key)  # the common case: a new newest item
        else:
            bisect.insort(keys, key, key=self._rank_of)

    def _sorted_remove(self, keys: list[str], key: str) -> None:
        i = bisect.bisect_left(keys, self._rank[key], key=self._rank_of)
        if i < len(keys) and keys[i] == key:
            del keys[i]

    def _index_keys(self, item: Item) -> list[tuple[str, str]]:
        return [(f, item[f]) for f in INDEXED if isinstance(item.get(f), str)]

    def _media_ids(self, item: Item) -> list[str]:
        media = item.get("media")
        if not isinstance(media, list):
            return []
        return [m["id"] for m in media if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def _attach(self, key: str, item: Item) -> None:
        """Store an item under a key that already has a rank, and index it."""
        self._items[key] = orjson.dumps(item)
        for ikey in self._index_keys(item):
            self._sorted_insert(self._index.setdefault(ikey, []), key)
        for media_id in self._media_ids(item):
            self._media_owner[media_id] = key
        if isinstance(item, dict) and isinstance(txn_id := item.get("transcription_id"), str):
            self._txn_owner[txn_id] = key

    def _detach(self, key: str) -> Item:
        """Remove an item from the store and the indices (not from the order)."""
        item: Item = orjson.loads(self._items.pop(key))
        for ikey in self._index_keys(item):
            self._sorted_remove(self._index[ikey], key)
        for media_id in self._media_ids(item):
            if self._media_owner.get(media_id) == key:
                del self._media_owner[media_id]
        txn_id = item.get("transcription_id") if isinstance(item, dict) else None
        if isinstance(txn_id, str) and self._txn_owner.get(txn_id) == key:
            del self._txn_owner[txn_id]
        return item

    def _add(self, key: str, item: Item, rank: int) -> None:
        self._rank[key] = rank
        self._sorted_insert(self._order, key)
        self._attach(key, item)

    def _replace(self, key: str, item: Item) -> None:
        old = self._detach(key)
        self._attach(key, item)
        if isinstance(old, dict) and isinstance(item, dict):
            self.transcripts.recording_changed(key, old, item)

    def _load(self, key: str) -> Item:
        item: Item = orjson.loads(self._items[key])
        return item

    def _recording_or_none(self, rec_id: str) -> Item | None:
        """A recording as stored (a dict), or None: what the transcripts read."""
        if rec_id not in self:
            return None
        item = self._load(rec_id)
        return item if isinstance(item, dict) else None

    def _key(self, rec_id: str) -> str:
        if rec_id not in self._items or rec_id.startswith(RAW_PREFIX):
            raise KeyError(rec_id)
        return rec_id

    def _top_rank(self) -> int:
        return self._rank[self._order[-1]] + RANK_STEP if self._order else 0

    def _rank_at(self, position: int) -> int:
        """A free rank for an item shown at `position` (0 = newest); renumbers if needed."""
        n = len(self._order)
        position = max(0, min(position, n))
        if position == 0:
            return self._top_rank()
        if position == n:
            return self._rank[self._order[0]] - RANK_STEP
        low, high = self._rank[self._order[n - 1 - position]], self._rank[self._order[n - position]]
        if high - low < 2:
            # The gap is used up: spread the ranks out by scaling them, so the order stays
            # and a cursor made before (it carries the epoch) still names the same place.
            self._rank = {key: rank << RANK_BITS for key, rank in self._rank.items()}
            self._epoch += 1
            return self._rank_at(position)
        return (low + high) // 2

    def _now_ms(self) -> int:
        return round(self.clock.now() * 1000)

    def _next_created_ms(self) -> int:
        """Now, nudged past the newest `created_at` so the list order stays strict."""
        self._last_ms = max(self._now_ms(), self._last_ms + 1)
        return self._last_ms

    # -- serving ----------------------------------------------------------------------

    @property
    def deployed(self) -> bool:
        """Whether this world speaks the deployed dialect."""
        return self.dialect == "deployed"

    @property
    def statuses(self) -> tuple[str, ...]:
        """The statuses of this world's dialect."""
        return deployed.STATUSES if self.deployed else STATUSES

    def _unserved_url(self, file_id: str) -> str:
        """A URL for reads made while no simulator serves the world (it opens nothing)."""
        expires = round(self.clock.now()) + 3600
        return (f"http://unserved.invalid/_files/{file_id}?expires={expires}"
                f"&sig={sign(b'unserved', file_id, expires)}")

    def _served(self, key: str, sign_url: Signer | None = None) -> bytes:
        """The stored bytes of an item as an answer carries them (a fresh `audio_url`)."""
        body = self._items[key]
        if self.deployed and MARK_JSON in body:
            url = (sign_url or self.signer)(key)
            return body.replace(MARK_JSON, orjson.dumps(url))
        return body

    # -- reads ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, rec_id: object) -> bool:
        return isinstance(rec_id, str) and not rec_id.startswith(RAW_PREFIX) and (
            rec_id in self._items)

    def get(self, rec_id: str) -> Item | None:
        """A copy of one recording as served, or None (a deployed `audio_url` is new each time)."""
        if rec_id not in self:
            return None
        item: Item = orjson.loads(self._served(rec_id))
        return item

    def all(self) -> list[Item]:
        """Copies of every item, newest first, exactly as the list serves them.

        In the deployed dialect `audio_url` is signed anew for this call, so it differs
        from what an answer carried; everything else is the same.
        """
        return [orjson.loads(self._served(key)) for key in reversed(self._order)]

    def ids(self) -> list[str]:
        """The ids of every recording, newest first (put_raw items without one are left out)."""
        return [key for key in reversed(self._order) if not key.startswith(RAW_PREFIX)]

    def counts(self) -> dict[str, int]:
        """How many items have each status of the world's dialect."""
        return {s: len(self._index.get(("status", s), ())) for s in self.statuses}

    def detail_body(self, rec_id: str, sign_url: Signer | None = None) -> bytes | None:
        """The serialised recording for `GET /recordings/{id}`, or None."""
        return self._served(rec_id, sign_url) if rec_id in self else None

    def _filtered(self, filters: list[tuple[str, str]]) -> list[str]:
        if not filters:
            return self._order
        keys = min((self._index.get(f, []) for f in filters), key=len)
        if len(filters) == 1:
            return keys
        rest = filters  # more than one filter: scan the smallest index for the others
        return [k for k in keys if all(self._load(k).get(f) == v for f, v in rest)]

    def page_keys(
        self, limit: int, offset: int, *, status: str | None = None,
        device_id: str | None = None, end_user_id: str | None = None,
    ) -> tuple[list[str], bool]:
        """Keys of one page, newest first, and whether more items follow it."""
        wanted = (("status", status), ("device_id", device_id), ("end_user_id", end_user_id))
        keys = self._filtered([(f, v) for f, v in wanted if v is not None])
        end = len(keys) - offset
        if end <= 0:
            return [], False
        start = max(0, end - limit)
        return keys[start:end][::-1], start > 0

    def page_body(
        self, limit: int, offset: int, *, status: str | None = None,
        device_id: str | None = None, end_user_id: str | None = None,
        sign_url: Signer | None = None,
    ) -> bytes:
        """The serialised `{"data": [...], "has_more": ...}` of one list page."""
        keys, more = self.page_keys(limit, offset, status=status, device_id=device_id,
                                    end_user_id=end_user_id)
        tail = b'],"has_more":true}' if more else b'],"has_more":false}'
        return b'{"data":[' + b",".join([self._served(k, sign_url) for k in keys]) + tail

    def cursor_page_body(
        self, limit: int, cursor: str | None = None, *, status: str | None = None,
        device_id: str | None = None, end_user_id: str | None = None,
        sign_url: Signer | None = None,
    ) -> bytes:
        """One keyset page, `{"data", "has_more", "next_cursor"}` (no cursor on the last page).

        A cursor names the rank just below the last item it followed, so items created at
        the top or deleted meanwhile do not shift the rest of a walk. InvalidCursor when
        `cursor` was not made here.
        """
        wanted = (("status", status), ("device_id", device_id), ("end_user_id", end_user_id))
        keys = self._filtered([(f, v) for f, v in wanted if v is not None])
        end = len(keys)
        if cursor is not None:
            epoch, rank = decode_cursor(cursor)
            if epoch > self._epoch:
                raise InvalidCursor(cursor)
            end = bisect.bisect_left(keys, rank << (RANK_BITS * (self._epoch - epoch)),
                                     key=self._rank_of)
        start = max(0, end - limit)
        head = b'{"data":[' + b",".join([self._served(k, sign_url)
                                         for k in reversed(keys[start:end])])
        if start == 0:
            return head + b'],"has_more":false}'
        after = encode_cursor(self._epoch, self._rank[keys[start]]).encode()
        return head + b'],"has_more":true,"next_cursor":"' + after + b'"}'

    def iter_bodies(self, sign_url: Signer | None = None) -> Iterator[bytes]:
        """Every serialised item newest first, from a snapshot of the order."""
        for key in list(reversed(self._order)):
            if key in self._items:
                yield self._served(key, sign_url)

    def file(self, file_id: str) -> FileRef | None:
        """The file behind `/_files/{file_id}`: a media item's (documented), or a recording's
        own once it is stored (deployed); None when there is none."""
        if not self.deployed:
            media = self.find_media(file_id)
            if media is None:
                return None
            return FileRef(file_id, int(media.get("file_size_bytes") or 0),
                           str(media.get("mime_type") or "application/octet-stream"), own=False)
        if file_id not in self:
            return None
        item = self._load(file_id)
        size = deployed.file_size_of(item)
        if size is None or not deployed.has_file(item):
            return None
        content_type = deployed.download_form(item, size)[0]
        return FileRef(file_id, size, content_type or "application/octet-stream", own=True)

    def download_info(self, rec_id: str) -> Item | None:
        """Deployed: `content_type` and `file_size_bytes` as the download-url answer sends
        them, or None while the recording has no stored file; KeyError when it is unknown."""
        item = self._load(self._key(rec_id))
        size = deployed.file_size_of(item)
        if size is None or not deployed.has_file(item):
            return None
        content_type, size_sent = deployed.download_form(item, size)
        return {"content_type": content_type, "file_size_bytes": size_sent}

    def find_media(self, media_id: str, rec_id: str | None = None) -> Item | None:
        """A copy of a media item (of `rec_id`, when given), or None."""
        key = self._media_owner.get(media_id)
        if key is None or (rec_id is not None and key != rec_id):
            return None
        for media in self._load(key)["media"]:
            if isinstance(media, dict) and media.get("id") == media_id:
                return dict(media)
        return None

    # -- mutations ----------------------------------------------------------------------

    def create(self, **fields: Any) -> Item:
        """Add a recording at the top: created now, pending (documented: one pending audio item).

        Deployed: a status past streaming gets a stored file (size, sha256, `audio_url`)
        unless those fields are given.
        """
        created_ms = self._next_created_ms()
        if self.deployed:
            assert self.project_id is not None
            item = deployed.recording(self._rng, self.cast, self.project_id,
                                      created_ms=created_ms, now_ms=created_ms,
                                      status="pending", max_bytes=self.max_file_bytes)
        else:
            item = archive.recording(self._rng, self.cast, created_ms=created_ms,
                                     status="pending", max_bytes=self.max_file_bytes)
        item.update(_clone(fields))
        if not isinstance(item.get("id"), str) or item["id"] in self._items:
            raise ValueError(f"cannot create a recording with id {item.get('id')!r}")
        if self.deployed:
            deployed.settle(self._rng, item, self.max_file_bytes, given=fields)
        self._add(item["id"], item, self._top_rank())
        return self._public(item["id"])

    def update(self, rec_id: str, **fields: Any) -> Item:
        """Change fields of a recording in place (its position in the list stays).

        Deployed: the file fields follow the status (unless given) and `updated_at`
        moves on when anything changed (unless given).
        """
        key = self._key(rec_id)
        old = self._load(key)
        item = {**old, **_clone(fields)}
        item["id"] = rec_id  # renaming would break every index keyed on it
        if self.deployed:
            deployed.settle(self._rng, item, self.max_file_bytes, given=fields)
            self._touch(item, old, fields)
        self._replace(key, item)
        return self._public(key)

    def _public(self, key: str) -> Item:
        """A stored item as `get` returns it."""
        item: Item = orjson.loads(self._served(key))
        return item

    def _touch(self, item: Item, old: Item, given: Collection[str] = ()) -> None:
        """Deployed: move `updated_at` on (strictly) when anything else changed."""
        if "updated_at" in given or item == old:
            return
        before = parse_iso_ms(old.get("updated_at"))
        now = self._now_ms()
        item["updated_at"] = iso_ms(now if before is None else max(now, before + 1))

    def _no_media(self) -> None:
        if self.deployed:
            raise ValueError("the deployed dialect has no media items: a recording has one file")

    def add_media(
        self, rec_id: str, type: str = "audio", status: str = "pending", **fields: Any,
    ) -> Item:
        """Append a media item to a recording and return the new item."""
        self._no_media()
        key = self._key(rec_id)
        item = self._load(key)
        media = archive.media_item(self._rng, type, status=status, created_ms=self._now_ms(),
                                   captured_ms=None, max_bytes=self.max_file_bytes)
        media.update(_clone(fields))
        item["media"] = [*(item.get("media") or []), media]
        self._replace(key, item)
        return dict(media)

    def _edit_media(
        self, rec_id: str, media_id: str, edit: Callable[[list[Item], int], None],
    ) -> Item:
        self._no_media()
        key = self._key(rec_id)
        item = self._load(key)
        media = item.get("media") or []
        for i, entry in enumerate(media):
            if isinstance(entry, dict) and entry.get("id") == media_id:
                edit(media, i)
                self._replace(key, item)
                return item
        raise KeyError(media_id)

    def update_media(self, rec_id: str, media_id: str, **fields: Any) -> Item:
        """Change a media item; marking it uploaded gives it a size if it had none."""
        def edit(media: list[Item], i: int) -> None:
            media[i].update(_clone(fields))
            if media[i].get("status") == "uploaded" and "file_size_bytes" not in fields:
                archive.upload_media(self._rng, media[i], self.max_file_bytes)

        item = self._edit_media(rec_id, media_id, edit)
        return next(dict(m) for m in item["media"] if m.get("id") == media_id)

    def remove_media(self, rec_id: str, media_id: str) -> Item:
        """Drop a media item from a recording and return the recording."""
        def edit(media: list[Item], i: int) -> None:
            del media[i]

        return self._edit_media(rec_id, media_id, edit)

    def delete(self, rec_id: str) -> Item:
        """Remove a recording (later items move up one place); returns its last state."""
        key = self._key(rec_id)
        item = self._remove_key(key)
        if self.deployed and item.get("audio_url") == deployed.AUDIO_MARK:
            item["audio_url"] = self.signer(key)  # as served last (the file is gone now)
        return item

    def _remove_key(self, key: str) -> Item:
        item = self._detach(key)
        self._sorted_remove(self._order, key)
        del self._rank[key]
        self.transcripts.recording_removed(key)
        return item

    def put_raw(self, item: Item, position: int = 0) -> Item:
        """Serve an arbitrary (maybe invalid) item at `position` of the list (0 = top).

        It is reachable by id only when it has a string id not already taken.
        """
        raw = _clone(item)
        rec_id = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(rec_id, str) and rec_id not in self._items:
            key = rec_id
        else:
            self._raw_count += 1
            key = f"{RAW_PREFIX}{self._raw_count}"
        self._add(key, raw, self._rank_at(position))
        return _clone(raw)  # type: ignore[no-any-return]

    # -- transcriptions and summaries ---------------------------------------------------------

    def transcriptions_of(self, rec_id: str) -> list[Item]:
        """A recording's transcriptions as served, newest first (KeyError: no such recording).

        Documented: the one its `transcription_id` names, if any. Deployed: its own once it
        is processing, completed or failed, and any added with `add_transcription`.
        """
        items = self.transcripts.of_recording(self._key(rec_id))
        if items is None:
            raise KeyError(rec_id)
        return items

    def transcription(self, txn_id: str) -> Item | None:
        """One transcription as `GET /transcriptions/{id}` serves it, or None (a 404)."""
        return self.transcripts.get(txn_id)

    def summaries_of(self, txn_id: str) -> list[Item]:
        """A transcription's summaries as served, newest first (KeyError: no such one)."""
        items = self.transcripts.summaries_of(txn_id)
        if items is None:
            raise KeyError(txn_id)
        return items

    def summary(self, sum_id: str) -> Item | None:
        """One summary as `GET /summaries/{id}` serves it, or None (a 404).

        Its id is known once its transcription was read (`summary_id`, or `summaries_of`).
        """
        return self.transcripts.summary(sum_id)

    def retranscribe(self, rec_id: str, status: str = "completed") -> Item:
        """Re-run a recording's transcription: a new one (in `status`, made now) replaces it
        under a new id, and the old id is gone (404). Documented: the recording's
        `transcription_id` changes. ValueError while the recording has no audio."""
        key = self._key(rec_id)
        if self._load(key).get("status") in NO_AUDIO:
            raise ValueError(f"{rec_id} has no audio to transcribe yet")
        new_id = self.transcripts.next_own_id(key)
        if not self.deployed:
            self.update(key, transcription_id=new_id)
        return self.transcripts.served(self.transcripts.replace_own(key, new_id, status))

    def fail_transcription(self, rec_id: str, message: str | None = None) -> Item:
        """Make a recording's transcription fail now (with `message`); ValueError if it has none."""
        state = self.transcripts.own_state(self._key(rec_id))
        if state is None:
            raise ValueError(f"{rec_id} has no transcription")
        self.transcripts.force(state, "failed", message)
        return self.transcripts.served(state)

    def update_transcription(self, txn_id: str, **fields: Any) -> Item:
        """Force a transcription's `status` (and `error`); any other field is served as given
        (e.g. `segments=None`). KeyError when there is no such transcription."""
        return self.transcripts.served(self.transcripts.update(txn_id, _clone(fields)))

    def add_transcription(self, rec_id: str, status: str = "completed") -> Item:
        """Deployed: another transcription of a recording (made now), listed beside its own."""
        if not self.deployed:
            raise ValueError("the documented dialect links one transcription per recording")
        return self.transcripts.served(self.transcripts.add(self._key(rec_id), status))

    # -- the world moving ------------------------------------------------------------------

    def step(self, n: int = 1) -> list[str]:
        """Make `n` random plausible changes, deterministic for the seed; describe each."""
        moves: dict[str, Callable[[], str]] = {
            "create": self._move_create, "advance": self._move_advance,
            "media": self._move_media, "edit": self._move_edit, "delete": self._move_delete,
        }
        table = DEPLOYED_MOVE_WEIGHTS if self.deployed else MOVE_WEIGHTS
        names, weights = list(table), list(table.values())
        changes = []
        for _ in range(n):
            if self._talk_rng.random() < RETRANSCRIBE_RATE and (
                    rerun := self._move_retranscribe()) is not None:
                changes.append(rerun)
            else:
                changes.append(moves[self._rng.choices(names, weights)[0]]())
        return changes

    def _move_retranscribe(self) -> str | None:
        """Re-run the transcription of a completed recording that has one (None: none found)."""
        keys = self._index.get(("status", "completed"), [])
        for _ in range(5 if keys else 0):
            key = self._talk_rng.choice(keys)
            if self.deployed or isinstance(self._load(key).get("transcription_id"), str):
                return f"{key} transcription replaced by {self.retranscribe(key)['id']}"
        return None

    def _move_create(self) -> str:
        return f"created {self.create()['id']}"

    def _move_advance(self) -> str:
        in_flight = deployed.IN_FLIGHT if self.deployed else IN_FLIGHT
        keys = [k for s in in_flight for k in self._index.get(("status", s), [])]
        if not keys:
            return self._move_create()
        key = self._rng.choice(keys)
        item = self._load(key)
        before = item.get("status")
        if self.deployed:
            old = dict(item)
            deployed.advance(self._rng, item, self.max_file_bytes, self._now_ms())
            self._touch(item, old)
            self._replace(key, item)
        else:
            self._replace(key, archive.advance(self._rng, item, self.max_file_bytes))
        return f"{item.get('id')} {before}->{item.get('status')}"

    def _move_media(self) -> str:
        recent = [self._load(k) for k in self._order[-30:]]
        recent = [r for r in recent if r.get("status") != "pending" and isinstance(r.get("id"), str)
                  and isinstance(r.get("media"), list)]
        waiting = [(r["id"], m["id"]) for r in recent for m in r["media"]
                   if isinstance(m, dict) and m.get("status") == "pending"]
        if waiting:
            rec_id, media_id = self._rng.choice(waiting)
            self.update_media(rec_id, media_id, status="uploaded")
            return f"{rec_id} media {media_id} uploaded"
        if not recent:
            return self._move_create()
        rec_id = self._rng.choice(recent)["id"]
        media = self.add_media(rec_id, type="image")
        return f"{rec_id} media {media['id']} added"

    def _move_edit(self) -> str:
        if not self._order:
            return self._move_create()
        key = self._rng.choice(self._order)
        item = self._load(key)
        value: Any
        if self._rng.random() < 0.5:
            field, value = "name", archive.random_name(self._rng)
        else:
            field, value = "metadata", archive.random_metadata(self._rng)
        if value == item.get(field):
            field, value = "name", f"{item.get('name') or 'Recording'} (edited)"
        old = dict(item)
        item[field] = value
        if self.deployed:
            self._touch(item, old)
        self._replace(key, item)
        return f"{item.get('id')} {field} edited"

    def _move_delete(self) -> str:
        if not self._order:
            return self._move_create()
        item = self._remove_key(self._rng.choice(self._order))
        return f"deleted {item.get('id')}"
