"""The dedup store: claim (a lease) -> done, or release on failure. One round trip per step.

A key is one callback (``{appId}:{bot}:{trigger}:{message id}``). States:

- free: nobody worked on it, or a failed attempt released it;
- claimed: a worker is on it. The claim names its owner's liveness key (``worker.liveness``):
  once that key is gone the claim is free at once, and the next claimer learns that the earlier
  attempt's outcome is unknown (``Claim.unsure``: a reply may have gone out). The lease is only
  a backstop for a live worker that lost track of a claim;
- done: its replies were accepted; remembered for ``BOTRELAY_DEDUP_TTL``.

For callbacks with several replies, ``progress`` records how many were accepted, so a retry
sends only the rest.

**Conversation pens** (``worker.pens``) keep replies in order across retries. The store's
``hold`` and ``unhold`` are the pen's own; a claim meets the pen in its own script: a message
that is not its pen's head is ``PARKED`` behind it.

Every claim in ordered mode also puts its message at the head of its pen (in the same script, no
extra round trip), and ``done`` takes it off. So while a message is in flight on one worker, a
later message of its conversation that reaches another worker (a partition hand-over, a crash, a
paused worker) is parked behind it instead of overtaking it.

**Done marks.** In ordered mode a done callback is one field of its conversation's hash
``P:done:{pen}`` (``_DONE``), about 40 bytes where a key of its own took about 200
(``bench/dedup_memory.py``). Without a pen the state key holds ``done``.

**Key names.** Every key of one callback and its conversation shares a Redis Cluster hash tag,
``{pen}`` (or ``{key}`` without one), so that work sits in one slot, and every script touches
only the keys it is given. The claim names its holder's liveness key (``P:alive:{P}:...``,
``worker.liveness``), which sits in another slot; the claim script does not read it: when a
claim is held by another session, the caller asks whether that session is alive in a call of
its own (only then, so the first claim of a callback stays one round trip), and takes the claim
over only if it is still the one it asked about. A worker's own liveness is checked before it
claims (``Live.wait_valid``) and before it sends.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
import redis.exceptions

from botrelay.shared.errors import DedupUnavailable
from botrelay.shared.redis_connect import FAILOVER_WAIT, make_redis
from botrelay.shared.settings import Settings
from botrelay.worker.liveness import Live, LocalLiveness
from botrelay.worker.pens import MemoryPens, RedisPens, pen_keys
from botrelay.worker.redis_batch import ScriptBatcher

log = logging.getLogger("botrelay.dedup")


class Status(enum.Enum):
    CLAIMED = 0  # this worker owns the key now
    DONE = 1  # already answered: a duplicate
    BUSY = 2  # another live worker holds the claim
    PARKED = 3  # an earlier message of the conversation is waiting: wait behind it


class NotAlive(DedupUnavailable):
    """This worker's liveness lapsed: it may neither claim nor send until it is alive again."""


@dataclass(frozen=True, slots=True)
class Claim:
    status: Status
    token: str = ""
    sent: int = 0  # replies already accepted by an earlier attempt
    delay: float = 0.0  # PARKED: the delay the pen's head is waiting out; BUSY: until free
    # An earlier attempt may have sent reply number ``sent`` without it being recorded (its
    # owner died holding the claim, or its answer was lost): look before sending it again.
    unsure: bool = False
    owner: str = ""  # the liveness session the claim was made under


class DedupStore(Protocol):
    liveness: Live

    async def claim(self, key: str, pen: str | None = None) -> Claim: ...
    async def progress(self, key: str, sent: int, pen: str | None = None) -> None: ...
    async def done(self, key: str, token: str, pen: str | None = None) -> None: ...
    async def release(self, key: str, token: str, unsure: bool = False,
                      pen: str | None = None) -> None: ...
    async def hold(self, key: str, pen: str, delay: float) -> None: ...
    async def unhold(self, key: str, pen: str) -> None: ...
    async def close(self) -> None: ...


class MemoryDedup:
    """In-process store with the same semantics: right for one worker, dev mode and tests."""

    def __init__(self, lease: float, ttl: float) -> None:
        self.lease, self.ttl = lease, ttl
        self.liveness: Live = LocalLiveness()
        self._keys: dict[str, tuple[str, float]] = {}  # key -> (token or "done", expires at)
        self._sent: dict[str, int] = {}
        self._unsure: set[str] = set()
        self.pens = MemoryPens()
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
            self._unsure.discard(key)

    async def claim(self, key: str, pen: str | None = None) -> Claim:
        now = time.monotonic()
        self._sweep(now)
        value = self._get(key, now)
        if value == "done":
            if pen is not None:
                self.pens.pop_head(pen, key)
            return Claim(Status.DONE)
        if pen is not None:
            delay = self.pens.parked_behind(pen, key)
            if delay is not None:
                return Claim(Status.PARKED, delay=delay)
        if value is not None:
            return Claim(Status.BUSY)
        token = secrets.token_hex(16)
        self._keys[key] = (token, now + self.lease)
        if pen is not None:
            self.pens.enter(pen, key)
        return Claim(Status.CLAIMED, token, self._sent.get(key, 0), unsure=key in self._unsure,
                     owner=self.liveness.owner)

    async def progress(self, key: str, sent: int, pen: str | None = None) -> None:
        self._sent[key] = sent

    async def done(self, key: str, token: str, pen: str | None = None) -> None:
        self._keys[key] = ("done", time.monotonic() + self.ttl)
        self._sent.pop(key, None)
        self._unsure.discard(key)
        if pen is not None:
            self.pens.pop_head(pen, key)

    async def hold(self, key: str, pen: str, delay: float) -> None:
        self.pens.hold(pen, key, delay)

    async def unhold(self, key: str, pen: str) -> None:
        self.pens.unhold(pen, key)

    async def release(self, key: str, token: str, unsure: bool = False,
                      pen: str | None = None) -> None:
        if self._get(key, time.monotonic()) == token:
            del self._keys[key]
            if unsure:
                self._unsure.add(key)

    async def close(self) -> None:
        self._keys.clear()


# Done marks. With a pen (ordered mode) a callback is remembered as one field of its
# conversation's hash ``P:done:{pen}``: an 8-byte digest of its key -> the second it expires.
# Redis stores a small hash as one packed listpack: about 40 bytes a callback at 10 callbacks a
# conversation, against about 200 for a key of its own (``bench/dedup_memory.py``). Fields past
# their second are pruned as the hash grows, and the hash itself expires a TTL after its last
# write. Without a pen, and for marks written before, the state key holds 'done'.
#
# KEYS: state, progress, unsure[, pen, pen delay[, done hash]], all under one hash tag;
# ARGV: claim value ("token|owner's liveness key"), lease ms, key, pen ttl ms, the claim value
# of a holder found dead (or "")[, done field].
# Returns {status, n, unsure[, holder]}: 0 claimed (n = replies sent), 1 done, 2 busy (n = ms
# left of a claim that names no owner), 3 parked (n = delay ms), 5 held by another session
# (holder = its claim value). Whether that holder is alive is asked by the caller, in a call of
# its own: its liveness key is in another slot. A session once gone never comes back (a lapsed
# worker starts a new one under a new name), so the answer cannot go stale; the claim is then
# taken only if it still holds that same value (ARGV[5]).
_CLAIM = """
local v = redis.call('GET', KEYS[1])
local penned = #KEYS >= 4
if #KEYS >= 6 and v ~= 'done' then
  local expires = redis.call('HGET', KEYS[6], ARGV[6])
  if expires and tonumber(expires) > tonumber(redis.call('TIME')[1]) then v = 'done' end
end
if v == 'done' then
  if penned and redis.call('LINDEX', KEYS[4], 0) == ARGV[3] then redis.call('LPOP', KEYS[4]) end
  return {1, 0, 0}
end
local head = false
if penned then
  head = redis.call('LINDEX', KEYS[4], 0)
  if head and head ~= ARGV[3] then
    if not redis.call('LPOS', KEYS[4], ARGV[3]) then redis.call('RPUSH', KEYS[4], ARGV[3]) end
    redis.call('PEXPIRE', KEYS[4], ARGV[4])
    return {3, tonumber(redis.call('GET', KEYS[5]) or '0'), 0}
  end
end
local unsure = redis.call('EXISTS', KEYS[3])
-- Our own value: this same claim ran before and its answer was lost with the connection.
if v and v ~= ARGV[1] then
  if not string.match(v, '|(.+)$') then return {2, redis.call('PTTL', KEYS[1]), 0} end
  if v ~= ARGV[5] then return {5, 0, 0, v} end
  unsure = 1  -- its owner died holding it: a reply may have gone out unrecorded
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if penned then
  -- In flight: a later message of the conversation, wherever it arrives, waits behind it.
  if not head then redis.call('RPUSH', KEYS[4], ARGV[3]) end
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
return {0, tonumber(redis.call('GET', KEYS[2]) or '0'), unsure}
"""
# KEYS: state, progress, unsure[, pen[, done hash]]; ARGV: ttl ms, key[, done field].
_DONE = """
if #KEYS >= 5 then
  local now = tonumber(redis.call('TIME')[1])
  local n = redis.call('HSET', KEYS[5], ARGV[3], now + math.ceil(ARGV[1] / 1000))
  redis.call('PEXPIRE', KEYS[5], ARGV[1])
  redis.call('DEL', KEYS[1])
  if n == 1 and redis.call('HLEN', KEYS[5]) % 32 == 0 then
    local all = redis.call('HGETALL', KEYS[5])
    for i = 1, #all, 2 do
      if tonumber(all[i + 1]) <= now then redis.call('HDEL', KEYS[5], all[i]) end
    end
  end
else
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[1])
end
redis.call('DEL', KEYS[2], KEYS[3])
if #KEYS >= 4 and redis.call('LINDEX', KEYS[4], 0) == ARGV[2] then redis.call('LPOP', KEYS[4]) end
return 1
"""
# KEYS: state, unsure; ARGV: claim value, unsure (1/0), ttl ms.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '1' then redis.call('SET', KEYS[2], '1', 'PX', ARGV[3]) end
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# How long a claim waits for this worker's liveness to come back (a new session) before the
# message is delayed instead: a few heartbeats.
CLAIM_WAIT = 2.0

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisDedup:
    """Shared store for many workers: atomic Lua steps, keys under ``{prefix}:dedup:``.

    ``liveness`` names this worker in its claims; ``worker.service`` gives it the worker's
    heartbeat (``worker.liveness.Liveness``) before the first claim."""

    def __init__(self, client: aioredis.Redis, prefix: str, lease: float, ttl: float,
                 pen_ttl: float = 3600.0, liveness: Live | None = None,
                 claim_wait: float = CLAIM_WAIT) -> None:
        self.client = client
        self.prefix = prefix
        self.lease_ms = int(lease * 1000)
        self.ttl_ms = int(ttl * 1000)
        self.pen_ttl_ms = int(pen_ttl * 1000)
        self.liveness: Live = liveness or LocalLiveness(f"{prefix}:alive:unset")
        # How long a claim waits for this worker's lapsed liveness to be valid again.
        self.claim_wait = claim_wait
        # Claims and done marks, the two calls every delivery makes, share pipelines (with the
        # rate limiter's reservations when it uses this client too).
        self._batch = ScriptBatcher.of(client)
        self._claim = self._batch.script(_CLAIM, idempotent=True)  # by its token
        self._done = self._batch.script(_DONE, idempotent=True)
        self._release = client.register_script(_RELEASE)
        self.pens = RedisPens(client, prefix, self.pen_ttl_ms)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisDedup:
        client = make_redis(
            settings,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=15,
            max_connections=settings.concurrency * 2,
        )
        # Through Sentinel a failover is waited out (``shared.redis_connect``), and it outlasts
        # the heartbeat's TTL: a claim waits for the next session that long, not CLAIM_WAIT.
        return cls(client, settings.prefix, settings.dedup_lease, settings.dedup_ttl,
                   pen_ttl=pen_ttl(settings),
                   claim_wait=FAILOVER_WAIT if settings.redis_sentinels else CLAIM_WAIT)

    # Every key of one callback and its pen shares a Redis Cluster hash tag, ``{pen}`` (or
    # ``{key}`` without one): see the module's "Key names".
    def keys(self, key: str, pen: str | None = None) -> list[str]:
        tag = f"{{{pen}}}:{key}" if pen is not None else f"{{{key}}}"
        return [f"{self.prefix}:dedup:{tag}", f"{self.prefix}:sent:{tag}",
                f"{self.prefix}:unsure:{tag}"]

    def pen_keys(self, pen: str) -> list[str]:
        return pen_keys(self.prefix, pen)

    def done_key(self, pen: str) -> str:
        return f"{self.prefix}:done:{{{pen}}}"

    async def claim(self, key: str, pen: str | None = None) -> Claim:
        """A lapsed liveness (a pause, a slow Redis) waits for the next heartbeat's new session
        instead of failing at once: a message delayed without a claim would let the next one
        of its conversation overtake it."""
        if not await self.liveness.wait_valid(self.claim_wait):
            raise NotAlive("this worker's liveness lapsed; not claiming")
        owner = self.liveness.owner
        token = f"{secrets.token_hex(16)}|{owner}"
        dead_holder = ""
        for _ in range(2):
            status, n, unsure, holder = await self._claim_once(key, pen, token, dead_holder)
            if status == 5:  # held by another session: is it alive?
                left = await self._left(holder.rpartition("|")[2])
                if left > 0:
                    return Claim(Status.BUSY, delay=left / 1000)
                dead_holder = holder
                continue
            state = Status(status)
            if state is Status.PARKED or state is Status.BUSY:
                return Claim(state, delay=max(0, n) / 1000)
            if state is Status.DONE:
                return Claim(state)
            return Claim(state, token, n, unsure=bool(unsure), owner=owner)
        # The dead holder's claim was taken by a third worker meanwhile: it is busy.
        return Claim(Status.BUSY, delay=self.claim_wait)

    async def _claim_once(self, key: str, pen: str | None, token: str, dead_holder: str
                          ) -> tuple[int, int, int, str]:
        keys = self.keys(key, pen)
        args: list[str | int | bytes] = [token, self.lease_ms, key, self.pen_ttl_ms,
                                         dead_holder]
        if pen is not None:
            keys += [*self.pen_keys(pen), self.done_key(pen)]
            args.append(done_field(key))
        try:
            reply = await self._claim(keys=keys, args=args)
        except _REDIS_ERRORS as exc:
            raise DedupUnavailable(f"dedup store unreachable: {type(exc).__name__}") from exc
        holder = reply[3] if len(reply) > 3 else b""
        return (int(reply[0]), int(reply[1]), int(reply[2]),
                holder.decode() if isinstance(holder, bytes) else str(holder))

    async def _left(self, liveness_key: str) -> int:
        """Milliseconds left of a liveness key (0 once it is gone)."""
        try:
            return max(0, int(await self.client.pttl(liveness_key)))
        except _REDIS_ERRORS as exc:
            raise DedupUnavailable(f"dedup store unreachable: {type(exc).__name__}") from exc

    async def progress(self, key: str, sent: int, pen: str | None = None) -> None:
        try:
            await self.client.set(self.keys(key, pen)[1], sent, px=self.ttl_ms)
        except _REDIS_ERRORS as exc:
            raise DedupUnavailable(f"dedup store unreachable: {type(exc).__name__}") from exc

    async def done(self, key: str, token: str, pen: str | None = None) -> None:
        keys = self.keys(key, pen)
        args: list[str | int | bytes] = [self.ttl_ms, key]
        if pen is not None:
            keys += [self.pen_keys(pen)[0], self.done_key(pen)]
            args.append(done_field(key))
        try:
            await self._done(keys=keys, args=args)
        except _REDIS_ERRORS as exc:
            raise DedupUnavailable(f"dedup store unreachable: {type(exc).__name__}") from exc

    async def hold(self, key: str, pen: str, delay: float) -> None:
        try:
            await self.pens.hold(pen, key, delay)
        except _REDIS_ERRORS as exc:
            raise DedupUnavailable(f"dedup store unreachable: {type(exc).__name__}") from exc

    async def unhold(self, key: str, pen: str) -> None:
        try:
            await self.pens.unhold(pen, key)
        except _REDIS_ERRORS as exc:
            raise DedupUnavailable(f"dedup store unreachable: {type(exc).__name__}") from exc

    async def release(self, key: str, token: str, unsure: bool = False,
                      pen: str | None = None) -> None:
        state, _, unsure_key = self.keys(key, pen)
        try:
            await self._release(keys=[state, unsure_key],
                                args=[token, 1 if unsure else 0, self.ttl_ms])
        except _REDIS_ERRORS as exc:
            raise DedupUnavailable(f"dedup store unreachable: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self._batch.close()
        await self.client.aclose()


def done_field(key: str) -> bytes:
    """A callback's field in its conversation's done hash: 8 bytes of a digest of its key (two
    keys of one conversation share it with odds of about n^2 / 2^65)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def pen_ttl(settings: Settings) -> float:
    """How long a pen outlives its last use: past the longest retry delay, twice over."""
    return max(settings.retry_delays) * 2 + settings.dedup_lease


def make_store(settings: Settings) -> DedupStore:
    if settings.redis_enabled:
        return RedisDedup.from_settings(settings)
    log.warning(
        "BOTRELAY_REDIS_URL is not set: deduplication is in this process's memory. Right for "
        "one worker; with several workers, or across restarts, duplicates can get through."
    )
    return MemoryDedup(settings.dedup_lease, settings.dedup_ttl)
