"""What the passes have learned of the API's dialect, shared by them and kept in `state`.

The walk learns the paging, a page's items whether details carry more than list items,
the hot pass whether the `status` filter works; each pass starts from what is stored.
"""

from __future__ import annotations

from botasync.api import dialect
from botasync.store.sqlite import Mirror


class Learning:
    """`now` is what is known; `keep` makes news of it last."""

    def __init__(self, mirror: Mirror) -> None:
        self._mirror = mirror
        self.now = dialect.Learned()

    async def load(self) -> None:
        """Start from what the database keeps (another process may have learned it)."""
        self.now = dialect.Learned.from_state(await self._mirror.get_state(dialect.STATE_KEY))

    async def keep(self, learned: dialect.Learned) -> None:
        """Keep what was learned of the API, in memory and in the database."""
        if learned != self.now:
            self.now = learned
            await self._mirror.set_state(dialect.STATE_KEY, learned.to_state())
