"""A wake-up for a background loop that sleeps while it has nothing to do: the confirm batcher's
flusher and the Redis batcher's writer and reader. Cheaper than ``asyncio.Event`` for one waiter,
and a ``set`` with nobody waiting is dropped (the loop checks its work before it sleeps)."""

from __future__ import annotations

import asyncio


class Wakeup:
    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Wake the loop if it is sleeping."""
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        """Sleep until the next ``set``."""
        self._future = asyncio.get_running_loop().create_future()
        try:
            await self._future
        finally:
            self._future = None
