"""The simulated Bota archive: recordings newest first, indexed for the API's filters.

Items are kept serialised (orjson bytes): a page of the list is then a join of stored
bytes, and 100,000 recordings fit in tens of megabytes. The order is a list of keys,
oldest first, so a new recording is an append and a page is a slice from the end.
Each key has an integer rank that grows with position; the per-field indices
(`status`, `device_id`, `end_user_id`) are key lists kept in rank order with bisect,
so a filtered page never scans the whole archive.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from botasync.simulator import archive
from botasync.simulator.archive import IN_FLIGHT, STATUSES, Cast
from botasync.simulator.clock import Clock, SystemClock

Item = dict[str, Any]
INDEXED = ("status", "device_id", "end_user_id")
RANK_STEP = 1 << 20
RAW_PREFIX = "\x00raw"  # keys of put_raw items that cannot be reached by id
MOVE_WEIGHTS = {"create": 3.0, "advance": 6.0, "media": 1.5, "edit": 1.0, "delete": 0.5}


def _clone(value: Any) -> Any:
    """A deep copy that is also plain JSON (what the API would send)."""
    return orjson.loads(orjson.dumps(value))


class World:
    """A deterministic archive of recordings that tests and `step()` can change."""

    def __init__(
        self, seed: int = 0, recordings: int = 0, *, start: datetime | None = None,
        max_file_bytes: int = 262_144, clock: Clock | None = None,
    ) -> None:
        self.seed = seed
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.max_file_bytes = max_file_bytes
        self._rng = random.Random(seed)
        self.cast = Cast.generate(self._rng)
        self._items: dict[str, bytes] = {}
        self._rank: dict[str, int] = {}
        self._order: list[str] = []
        self._index: dict[tuple[str, str], list[str]] = {}
        self._media_owner: dict[str, str] = {}
        self._raw_count = 0
        if start is None:
            start_s = self.clock.now()
        else:
            start_s = (start if start.tzinfo else start.replace(tzinfo=UTC)).timestamp()
        self._last_ms = int(start_s) * 1000
        self._generate(recordings)

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
            created_ms -= self._rng.randint(30, 1800) * 1000
        self._order = newest_first[::-1]
        for keys in self._index.values():
            keys.reverse()

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

    def _detach(self, key: str) -> Item:
        """Remove an item from the store and the indices (not from the order)."""
        item: Item = orjson.loads(self._items.pop(key))
        for ikey in self._index_keys(item):
            self._sorted_remove(self._index[ikey], key)
        for media_id in self._media_ids(item):
            if self._media_owner.get(media_id) == key:
                del self._media_owner[media_id]
        return item

    def _add(self, key: str, item: Item, rank: int) -> None:
        self._rank[key] = rank
        self._sorted_insert(self._order, key)
        self._attach(key, item)

    def _replace(self, key: str, item: Item) -> None:
        self._detach(key)
        self._attach(key, item)

    def _load(self, key: str) -> Item:
        item: Item = orjson.loads(self._items[key])
        return item

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
            # The gap is used up: spread the ranks again; the order itself does not change.
            self._rank = {key: i * RANK_STEP for i, key in enumerate(self._order)}
            return self._rank_at(position)
        return (low + high) // 2

    def _now_ms(self) -> int:
        return round(self.clock.now() * 1000)

    def _next_created_ms(self) -> int:
        """Now, nudged past the newest `created_at` so the list order stays strict."""
        self._last_ms = max(self._now_ms(), self._last_ms + 1)
        return self._last_ms

    # -- reads ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, rec_id: object) -> bool:
        return isinstance(rec_id, str) and not rec_id.startswith(RAW_PREFIX) and (
            rec_id in self._items)

    def get(self, rec_id: str) -> Item | None:
        """A copy of one recording as served, or None."""
        return self._load(rec_id) if rec_id in self else None

    def all(self) -> list[Item]:
        """Copies of every item, newest first, exactly as the list serves them."""
        return [self._load(key) for key in reversed(self._order)]

    def ids(self) -> list[str]:
        """The ids of every recording, newest first (put_raw items without one are left out)."""
        return [key for key in reversed(self._order) if not key.startswith(RAW_PREFIX)]

    def counts(self) -> dict[str, int]:
        """How many items have each documented status."""
        return {s: len(self._index.get(("status", s), ())) for s in STATUSES}

    def detail_body(self, rec_id: str) -> bytes | None:
        """The serialised recording for `GET /recordings/{id}`, or None."""
        return self._items[rec_id] if rec_id in self else None

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
    ) -> bytes:
        """The serialised `{"data": [...], "has_more": ...}` of one list page."""
        keys, more = self.page_keys(limit, offset, status=status, device_id=device_id,
                                    end_user_id=end_user_id)
        tail = b'],"has_more":true}' if more else b'],"has_more":false}'
        return b'{"data":[' + b",".join([self._items[k] for k in keys]) + tail

    def iter_bodies(self) -> Iterator[bytes]:
        """Every serialised item newest first, from a snapshot of the order."""
        for key in list(reversed(self._order)):
            body = self._items.get(key)
            if body is not None:
                yield body

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
        """Add a recording at the top: created now, pending, one pending audio item."""
        item = archive.recording(self._rng, self.cast, created_ms=self._next_created_ms(),
                                 status="pending", max_bytes=self.max_file_bytes)
        item.update(_clone(fields))
        if not isinstance(item.get("id"), str) or item["id"] in self._items:
            raise ValueError(f"cannot create a recording with id {item.get('id')!r}")
        self._add(item["id"], item, self._top_rank())
        return self._load(item["id"])

    def update(self, rec_id: str, **fields: Any) -> Item:
        """Change fields of a recording in place (its position in the list stays)."""
        key = self._key(rec_id)
        item = self._load(key)
        item.update(_clone(fields))
        item["id"] = rec_id  # renaming would break every index keyed on it
        self._replace(key, item)
        return self._load(key)

    def add_media(
        self, rec_id: str, type: str = "audio", status: str = "pending", **fields: Any,
    ) -> Item:
        """Append a media item to a recording and return the new item."""
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
        return self._remove_key(key)

    def _remove_key(self, key: str) -> Item:
        item = self._detach(key)
        self._sorted_remove(self._order, key)
        del self._rank[key]
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

    # -- the world moving ------------------------------------------------------------------

    def step(self, n: int = 1) -> list[str]:
        """Make `n` random plausible changes, deterministic for the seed; describe each."""
        moves: dict[str, Callable[[], str]] = {
            "create": self._move_create, "advance": self._move_advance,
            "media": self._move_media, "edit": self._move_edit, "delete": self._move_delete,
        }
        names, weights = list(MOVE_WEIGHTS), list(MOVE_WEIGHTS.values())
        return [moves[self._rng.choices(names, weights)[0]]() for _ in range(n)]

    def _move_create(self) -> str:
        return f"created {self.create()['id']}"

    def _move_advance(self) -> str:
        keys = [k for s in IN_FLIGHT for k in self._index.get(("status", s), [])]
        if not keys:
            return self._move_create()
        key = self._rng.choice(keys)
        item = self._load(key)
        before = item.get("status")
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
        item[field] = value
        self._replace(key, item)
        return f"{item.get('id')} {field} edited"

    def _move_delete(self) -> str:
        if not self._order:
            return self._move_create()
        item = self._remove_key(self._rng.choice(self._order))
        return f"deleted {item.get('id')}"
