"""What botasync has learned of the API it faces, from the API's own answers.

The Bota API is documented one way and deployed another (cursor pages, another
recording shape, filters never shown in use), and may change with a release. Nobody
tells botasync which it faces: it learns it per database, from what comes back, and
keeps learning. Pure: the sync reads it at the start of each pass and stores it in the
`state` table (key `dialect`) when it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from botasync.jsoncodec import dumps, loads

STATE_KEY = "dialect"
Paging = Literal["cursor", "offset"]


@dataclass(frozen=True)
class Learned:
    """The API as seen so far; every field starts as "not known yet"."""

    paging: Paging | None = None
    # fields a fetched detail carried that its list item lacked: while any, a never-seen
    # list item lacking one of them gets its detail; while none, a list item is the record
    detail_keys: frozenset[str] = frozenset()
    # when a `status`-filtered page last held other statuses (the filter is ignored)
    filter_ignored_at: str | None = None
    # statuses the API refused as a filter value (400)
    filter_refused: frozenset[str] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)  # keys of newer versions, kept

    def to_state(self) -> str:
        data = {**self.extra, "paging": self.paging, "detail_keys": sorted(self.detail_keys),
                "filter_ignored_at": self.filter_ignored_at,
                "filter_refused": sorted(self.filter_refused)}
        return dumps(data)

    @classmethod
    def from_state(cls, text: str | None) -> Learned:
        """Read the stored value; anything unreadable is "not known yet"."""
        try:
            data = loads(text) if text else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        paging = data.pop("paging", None)
        keys = data.pop("detail_keys", [])
        ignored = data.pop("filter_ignored_at", None)
        refused = data.pop("filter_refused", [])
        return cls(
            paging=paging if paging in ("cursor", "offset") else None,
            detail_keys=frozenset(k for k in keys if isinstance(k, str))
            if isinstance(keys, list) else frozenset(),
            filter_ignored_at=ignored if isinstance(ignored, str) else None,
            filter_refused=frozenset(s for s in refused if isinstance(s, str))
            if isinstance(refused, list) else frozenset(),
            extra=data,
        )

    # -- learning: each returns the new state (equal to self when nothing was learned) --

    def paged(self, mode: Paging) -> Learned:
        return self if self.paging == mode else replace(self, paging=mode)

    def compared(self, listed: dict[str, Any], detail: dict[str, Any],
                 volatile: frozenset[str] = frozenset()) -> Learned:
        """A detail next to its list item: the fields only the detail carries, if any."""
        extra = frozenset(k for k in detail if k not in listed and k not in volatile)
        return self if extra == self.detail_keys else replace(self, detail_keys=extra)

    def filter_ignored(self, now: str) -> Learned:
        return replace(self, filter_ignored_at=now)

    def filter_works(self) -> Learned:
        return self if self.filter_ignored_at is None else replace(self, filter_ignored_at=None)

    def refused(self, status: str) -> Learned:
        return replace(self, filter_refused=self.filter_refused | {status})

    # -- deciding --

    def wants_detail(self, item: dict[str, Any]) -> bool:
        """Whether a never-seen list item lacks what details have been seen to carry."""
        return any(k not in item for k in self.detail_keys)

    def filter_usable(self, status: str, now: datetime, retry_after_s: float) -> bool:
        """Whether to list by `status`: not refused, and not seen ignored lately.

        An ignored filter is tried again after `retry_after_s`: the API may have changed.
        """
        if status in self.filter_refused:
            return False
        if self.filter_ignored_at is None:
            return True
        since = now - datetime.fromisoformat(self.filter_ignored_at)
        return since.total_seconds() >= retry_after_s
