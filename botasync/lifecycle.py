"""AsyncClosing: `async with` for the long-lived objects, which all close with `aclose()`."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self


class AsyncClosing:
    """`async with obj:` closes it with `aclose()` (idempotent in every subclass)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        raise NotImplementedError


async def wait_set(event: asyncio.Event, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait for `event`; False when `timeout` seconds pass first (the `drain()` contract)."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
