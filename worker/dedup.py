"""The dedup store: claim (a lease) -> done, or release on failure. One round trip per step.

A key is one callback (``{appId}:{bot}:{trigger}:{message id}``). States:

- free: nobody worked on it, or a failed attempt released it;
- claimed: a worker is on it; the lease expires by itself if that worker dies;
- done: its replies were accepted; remembered for ``BOTRELAY_DEDUP_TTL``.

For callbacks with several replies, ``progress`` records how many were accepted, so a retry
sends only the rest.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
import redis.exceptions

from shared.errors import DedupUnavailable
from shared.settings import Settings

log = logging.getLogger("botrelay.dedup")


class Status(enum.Enum):
    CLAIMED = 0  # this worker owns the key now
    DONE = 1  # already answered: a duplicate
    BUSY = 2  # another live worker holds the claim


@dataclass(frozen=True, slots=True)
class Claim:
    status: Status
    token: str = ""
    sent: int = 0  # replies already accepted by an earlier attempt


class DedupStore(Protocol):
    async def claim(self, key: str) -> Claim: ...
    async def progress(self, key: str, sent: int) -> None: ...
    async def done(self, key: str, token: str) -> None: ...
    async def release(self, key: str, token: str) -> None: ...
    async def close(self) -> None: ...


class MemoryDedup:
    """In-process store with the same semantics: right for one worker, dev mode and tests."""

    def __init__(self, lease: float, ttl: float) -> None:
        self.lease, self.ttl = lease, ttl
        self._keys: dict[str, tuple[str, float]] = {}  # key -> (token or "done", expires at)
        self._sent: dict[str, int] = {}
        self._last_sweep = time.monotonic()

    def _get(self, key: str, now: float) -> str | None:
        entry = self._keys.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._keys[key]
            return None
        return entry[0]

    def _sweep(self, now: float) -> None:
        # Expired keys are dropped in bulk now and then, so memory stays bounded by the TTL.
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        for key in [k for k, (_, exp) in self._keys.items() if exp <= now]:
            del self._keys[key]
            self._sent.pop(key, None)

    async def claim(self, key: str) -> Claim:
        now = time.monotonic()
        self._sweep(now)
        value = self._get(key, now)
        if value == "done":
            return Claim(Status.DONE)
        if value is not None:
            return Claim(Status.BUSY)
        token = uuid.uuid4().hex
        self._keys[key] = (token, now + self.lease)
        return Claim(Status.CLAIMED, token, self._sent.get(key, 0))

    async def progress(self, key: str, sent: int) -> None:
        self._sent[key] = sent

    async def done(self, key: str, token: str) -> None:
        self._keys[key] = ("done", time.monotonic() + self.ttl)
        self._sent.pop(key, None)

    async def release(self, key: str, token: str) -> None:
        if self._get(key, time.monotonic()) == token:
            del self._keys[key]

    async def close(self) -> None:
        self._keys.clear()


# KEYS[1] state key, KEYS[2] progress key; ARGV[1] token, ARGV[2] lease ms.
# Returns {status, sent}: 0 claimed, 1 done, 2 busy.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v == 'done' then return {1, 0} end
if v then return {2, 0} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {0, tonumber(redis.call('GET', KEYS[2]) or '0')}
"""
# KEYS[1] state key, KEYS[2] progress key; ARGV[1] ttl ms.
_DONE = """
redis.call('SET', KEYS[1], 'done', 'PX', ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisDedup:
    """Shared store for many workers: atomic Lua steps, keys under ``{prefix}:dedup:``."""

    def __init__(self, client: aioredis.Redis, prefix: str, lease: float, ttl: float) -> None:
        self.client = client
        self.prefix = prefix
        self.lease_ms = int(lease * 1000)
        self.ttl_ms = int(ttl * 1000)
        self._claim = client.register_script(_CLAIM)
        self._done = client.register_script(_DONE)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisDedup:
        assert settings.redis_url
        client = aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=15,
            max_connections=settings.concurrency * 2,
        )
        return cls(client, settings.prefix, settings.dedup_lease, settings.dedup_ttl)

    def keys(self, key: str) -> list[str]:
        return [f"{self.prefix}:dedup:{key}", f"{self.prefix}:sent:{key}"]

    async def claim(self, key: str) -> Claim:
        token = uuid.uuid4().hex
        try:
            status, sent = await self._claim(keys=self.keys(key), args=[token, self.lease_ms])
        except _REDIS_ERRORS as exc:
            raise DedupUnavailable(f"dedup store unreachable: {type(exc).__name__}") from exc
        return Claim(Status(int(status)), token if status == 0 else "", int(sent))

    async def progress(self, key: str, sent: int) -> None:
        try:
            await self.client.set(self.keys(key)[1], sent, px=self.ttl_ms)
        except _REDIS_ERRORS as exc:
            raise DedupUnavailable(f"dedup store unreachable: {type(exc).__name__}") from exc

    async def done(self, key: str, token: str) -> None:
        try:
            await self._done(keys=self.keys(key), args=[self.ttl_ms])
        except _REDIS_ERRORS as exc:
            raise DedupUnavailable(f"dedup store unreachable: {type(exc).__name__}") from exc

    async def release(self, key: str, token: str) -> None:
        try:
            await self._release(keys=self.keys(key)[:1], args=[token])
        except _REDIS_ERRORS as exc:
            raise DedupUnavailable(f"dedup store unreachable: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self.client.aclose()


def make_store(settings: Settings) -> DedupStore:
    if settings.redis_url:
        return RedisDedup.from_settings(settings)
    log.warning(
        "BOTRELAY_REDIS_URL is not set: deduplication is in this process's memory. Right for "
        "one worker; with several workers, or across restarts, duplicates can get through."
    )
    return MemoryDedup(settings.dedup_lease, settings.dedup_ttl)
