"""How many recordings a first walk by offset will see, for its progress bar alone.

The probe doubles an offset until a page comes back empty, then bisects to the nearest
page: about 2 log2(N / page) one-item requests (~20 for 100,000), against the ~1,000 of
the walk itself. An API that pages by cursor has no offset to probe, and one that
ignores the offset none that means anything: the total stays unknown (None) rather than
guessed. The search is pure; `first_at(offset)` makes the requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from botasync.api.client import Page

# the one-item page at an offset
FirstAt = Callable[[int], Awaitable[Page]]


async def probe_total(first_at: FirstAt, page_size: int) -> int | None:
    """The list's length to the nearest `page_size` above it; None when it cannot tell."""
    first = await first_at(0)
    if first.next_cursor is not None:
        return None
    if not first.items:
        return 0
    top = first.items[0]

    async def exists(offset: int) -> bool | None:
        """Whether an item is there; None when the API answers the first item again."""
        page = await first_at(offset)
        if page.items and page.items[0] == top:
            return None  # offset ignored: no total can be found this way
        return bool(page.items)

    lo, hi = 0, page_size
    while (found := await exists(hi)) is True:
        lo, hi = hi, hi * 2
    if found is None:
        return None
    while hi - lo > page_size:
        mid = (lo + hi) // 2
        found = await exists(mid)
        if found is None:
            return None
        lo, hi = (mid, hi) if found else (lo, mid)
    return hi
