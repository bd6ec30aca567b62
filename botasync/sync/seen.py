"""SeenIds: the ids a full walk has seen, in 8 bytes each.

A walk of 100,000 recordings must remember every id it saw, to find the stored ones it
did not (deletion candidates). A set of strings costs ~100 bytes an id (10 MB); a sorted
array of 64-bit hashes costs 8 (0.8 MB), so memory stays flat as the archive grows. A
hash collision can only hide a deletion until the next walk: it never invents one, since
a candidate is tombstoned only after its detail answers 404.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable


def _key(recording_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(recording_id.encode(), digest_size=8).digest(), "big",
                          signed=True)


class SeenIds:
    """A compact set of ids: `add`, `update`, `in`, `len`; no iteration (it keeps hashes)."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._sorted = array("q")
        self._pending = array("q")
        self.update(ids)

    def add(self, recording_id: str) -> None:
        self._pending.append(_key(recording_id))

    def update(self, ids: Iterable[str]) -> None:
        self._pending.extend(_key(i) for i in ids)

    def _merge(self) -> None:
        if self._pending:
            self._sorted = array("q", sorted(self._sorted + self._pending))
            self._pending = array("q")

    def __contains__(self, recording_id: object) -> bool:
        if not isinstance(recording_id, str):
            return False
        self._merge()
        k = _key(recording_id)
        i = bisect_left(self._sorted, k)
        return i < len(self._sorted) and self._sorted[i] == k

    def __len__(self) -> int:
        self._merge()
        return len(self._sorted)
