"""Conversation pens: the FIFO of a conversation's messages that must wait their turn.

In ordered mode (``BOTRELAY_ORDERING=conversation``) a message that must wait (a retry, a claim
held elsewhere) is *held* at the head of its conversation's pen; a later message of that
conversation that is not the head is parked behind it and waits in the same delay queue. The head
leaves when it is done or dead-lettered (*unhold*), and the next one becomes the head. So a
conversation's replies go out in arrival order even when one of them needs ten attempts.

This module holds the pen's own operations and names. Two steps of the dedup store
(``worker.dedup``) touch a pen too, inside their own atomic step and without an extra round
trip: a claim takes the pen's head (or parks behind it), and ``done`` pops it.
"""

from __future__ import annotations

import redis.asyncio as aioredis


def pen_keys(prefix: str, pen: str) -> list[str]:
    """The pen's list and the delay its head waits out, under the conversation's hash tag."""
    return [f"{prefix}:pen:{{{pen}}}", f"{prefix}:pendelay:{{{pen}}}"]


class MemoryPens:
    """The pens of one process (``MemoryDedup``): pen -> (keys in arrival order, head's delay)."""

    def __init__(self) -> None:
        self._pens: dict[str, tuple[list[str], float]] = {}

    def parked_behind(self, pen: str, key: str) -> float | None:
        """The head's delay when ``key`` must wait behind another head (it joins the pen);
        None when ``key`` may go (the pen is empty, or ``key`` is its head)."""
        entry = self._pens.get(pen)
        if entry is None:
            return None
        keys, delay = entry
        if keys and keys[0] != key:
            if key not in keys:
                keys.append(key)
            return delay
        return None

    def enter(self, pen: str, key: str) -> None:
        """A claim in ordered mode: ``key`` heads its pen while it is in flight."""
        self._pens.setdefault(pen, ([key], 0.0))

    def pop_head(self, pen: str, key: str) -> None:
        """``key`` is answered: the next message of the pen becomes its head."""
        entry = self._pens.get(pen)
        if entry is not None and entry[0] and entry[0][0] == key:
            entry[0].pop(0)
            if not entry[0]:
                del self._pens[pen]

    def hold(self, pen: str, key: str, delay: float) -> None:
        keys, _ = self._pens.get(pen, ([], delay))
        if key not in keys:
            keys.append(key)
        self._pens[pen] = (keys, delay)

    def unhold(self, pen: str, key: str) -> None:
        entry = self._pens.get(pen)
        if entry is not None and key in entry[0]:
            entry[0].remove(key)
            if not entry[0]:
                del self._pens[pen]


# KEYS: pen, pen delay; ARGV: key, delay ms, pen ttl ms.
_HOLD = """
if not redis.call('LPOS', KEYS[1], ARGV[1]) then redis.call('RPUSH', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""


class RedisPens:
    """The pens shared by every worker, in Redis; errors are the client's (the dedup store
    turns them into ``DedupUnavailable``)."""

    def __init__(self, client: aioredis.Redis, prefix: str, ttl_ms: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_ms = ttl_ms
        self._hold = client.register_script(_HOLD)

    def keys(self, pen: str) -> list[str]:
        return pen_keys(self.prefix, pen)

    async def hold(self, pen: str, key: str, delay: float) -> None:
        await self._hold(keys=self.keys(pen), args=[key, int(delay * 1000), self.ttl_ms])

    async def unhold(self, pen: str, key: str) -> None:
        await self.client.lrem(self.keys(pen)[0], 0, key)
