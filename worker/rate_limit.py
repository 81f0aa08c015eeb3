"""Outbound rate limiting: one budget per app (and optionally per receiver) shared by all workers.

The bucket is a GCRA (a token bucket kept as one "theoretical arrival time"): each request
reserves the next free slot and sleeps until it, so a burst is spread out instead of drawing
429s, and many workers queue up fairly behind one Redis key, one round trip per request.

Adaptive: a 429 that still happens halves the app's rate (at most once a second, down to 5%)
and holds every worker back for the ``Retry-After`` the API sent; the rate then recovers by 5%
of the configured limit per second. Without ``BOTRELAY_REDIS_URL`` the same algorithm runs in
process memory (right for one worker); if Redis cannot be reached, a worker falls back to
its in-memory bucket for that request rather than stop replying.

Keys: ``{prefix}:rl:{{app}}`` and ``{prefix}:rl:{{app}}:to:{receiver}``; ``app`` is the reply
API base URL, which names the app (``https://{appId}.api-{region}.cometchat.io/v3``). The braces
are a Redis Cluster hash tag: both buckets of one reservation sit in one slot.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions

from botrelay.shared.errors import TransientError
from botrelay.shared.metrics import WorkerMetrics
from botrelay.shared.redis_connect import make_redis
from botrelay.shared.settings import Settings
from botrelay.worker.redis_batch import ScriptBatcher

log = logging.getLogger("botrelay.ratelimit")

# The bucket holds this many seconds of requests: a short burst goes out at once.
BURST_SECONDS = 0.2
DECREASE = 0.5  # a 429 multiplies the rate by this ...
MIN_FACTOR = 0.05  # ... down to this share of the configured rate
RECOVERY_PER_SECOND = 0.05  # share of the configured rate won back per second without 429s
MAX_PAUSE = 60.0  # longest Retry-After applied to the whole app
KEY_SLACK_MS = 60_000  # idle buckets expire this long after their last reserved slot


class RateLimited(TransientError):
    """The next free slot is further away than a delivery may wait: try again later.

    Not a ``Retry``: waiting for our own rate limit is no failure of the message, so the
    consumer delays it without spending one of its attempts (it can never be dead-lettered
    for it). Nothing was sent: the request is made only once the slot is reserved."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"outbound rate limit: next slot in {wait:.1f}s")
        self.delay = wait


@dataclass(frozen=True, slots=True)
class Limits:
    app_interval_ms: float  # 0 = no app limit
    receiver_interval_ms: float  # 0 = no receiver limit
    max_wait: float  # seconds one request may wait for its slot

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        # A wait must end well within the dedup lease, which already covers the handler and
        # the inline reply budget.
        spare = settings.dedup_lease - settings.handler_timeout - settings.reply_budget
        return cls(_interval(settings.rate_limit_app), _interval(settings.rate_limit_receiver),
                   max(1.0, spare))

    @property
    def enabled(self) -> bool:
        return bool(self.app_interval_ms or self.receiver_interval_ms)


def _interval(per_minute: float) -> float:
    return 60_000.0 / per_minute if per_minute > 0 else 0.0


def _burst(interval_ms: float) -> float:
    """How many requests the bucket lets through at once: ``BURST_SECONDS`` worth, at least 1."""
    return max(1.0, BURST_SECONDS * 1000.0 / interval_ms)


# KEYS[1] app bucket, KEYS[2] receiver bucket (hashes: t = theoretical arrival time in ms,
# f = rate factor, a = when f was last brought up to date, d = last decrease).
# ARGV: app interval ms, app burst, receiver interval ms, receiver burst, max wait ms,
# recovery per ms, key slack ms. Returns the wait in ms (slot reserved) or -wait (too long,
# nothing reserved).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local app_iv, app_burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local rcv_iv, rcv_burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local allow = now
local app_tat, app_step, f, rcv_tat
if app_iv > 0 then
  local h = redis.call('HMGET', KEYS[1], 't', 'f', 'a')
  f = math.min(1, (tonumber(h[2]) or 1) + (now - (tonumber(h[3]) or now)) * tonumber(ARGV[6]))
  app_step = app_iv / f
  app_tat = math.max(tonumber(h[1]) or now, now)
  allow = math.max(allow, app_tat - (app_burst - 1) * app_step)
end
if rcv_iv > 0 then
  rcv_tat = math.max(tonumber(redis.call('HGET', KEYS[2], 't') or now), now)
  allow = math.max(allow, rcv_tat - (rcv_burst - 1) * rcv_iv)
end
local wait = allow - now
if wait > tonumber(ARGV[5]) then return -math.ceil(wait) end
if app_iv > 0 then
  redis.call('HSET', KEYS[1], 't', app_tat + app_step, 'f', f, 'a', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(app_tat + app_step - now + ARGV[7]))
end
if rcv_iv > 0 then
  redis.call('HSET', KEYS[2], 't', rcv_tat + rcv_iv)
  redis.call('PEXPIRE', KEYS[2], math.ceil(rcv_tat + rcv_iv - now + ARGV[7]))
end
return math.ceil(wait)
"""

# KEYS[1] app bucket. ARGV: app interval ms, app burst, pause ms, decrease, min factor,
# recovery per ms, key slack ms. Slows the app down and holds it for the pause.
_SLOW_DOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local h = redis.call('HMGET', KEYS[1], 't', 'f', 'a', 'd')
local f = math.min(1, (tonumber(h[2]) or 1) + (now - (tonumber(h[3]) or now)) * tonumber(ARGV[6]))
local d = tonumber(h[4]) or 0
if now - d >= 1000 then
  f = math.max(tonumber(ARGV[5]), f * tonumber(ARGV[4]))
  d = now
end
local step = tonumber(ARGV[1]) / f
local hold = now + tonumber(ARGV[3]) + (tonumber(ARGV[2]) - 1) * step
local tat = math.max(tonumber(h[1]) or now, hold)
redis.call('HSET', KEYS[1], 't', tat, 'f', f, 'a', now, 'd', d)
redis.call('PEXPIRE', KEYS[1], math.ceil(tat - now + ARGV[7]))
return f * 1000
"""

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class _Bucket:
    __slots__ = ("decreased", "factor", "tat", "updated")

    def __init__(self, now: float) -> None:
        self.tat = now
        self.factor = 1.0
        self.updated = now
        self.decreased = -math.inf

    def recover(self, now: float) -> float:
        self.factor = min(1.0, self.factor + (now - self.updated) * RECOVERY_PER_SECOND / 1000)
        self.updated = now
        return self.factor


class RateLimiter:
    """In-process buckets (one worker); ``RedisRateLimiter`` shares them between workers."""

    def __init__(self, limits: Limits, metrics: WorkerMetrics | None = None) -> None:
        self.limits = limits
        self.metrics = metrics
        self._buckets: dict[str, _Bucket] = {}

    async def acquire(self, app: str, receiver: str) -> float:
        """Wait for this request's slot; the seconds waited. Raises ``RateLimited`` when the
        slot is further away than ``max_wait`` (nothing is reserved then)."""
        wait_ms = await self._reserve(app, receiver)
        if wait_ms < 0:
            raise RateLimited(-wait_ms / 1000)
        wait = wait_ms / 1000
        if self.metrics is not None:
            self.metrics.throttle_seconds.observe(wait)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    async def slow_down(self, app: str, pause: float | None) -> None:
        """A 429 came back: lower the app's rate and hold everyone back for ``pause``."""
        if self.limits.app_interval_ms:
            factor = await self._slow_down(app, min(pause or 0.0, MAX_PAUSE))
            log.info("reply API rate-limited us; app rate now %.0f%% of the limit",
                     factor * 100)

    async def close(self) -> None:
        self._buckets.clear()

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 100_000:  # keep memory bounded: drop idle buckets
                self._buckets = {k: b for k, b in self._buckets.items() if b.tat > now}
            bucket = self._buckets[key] = _Bucket(now)
        return bucket

    async def _reserve(self, app: str, receiver: str) -> float:
        limits = self.limits
        now = time.monotonic() * 1000
        allow = now
        app_b = rcv_b = None
        step = 0.0
        if limits.app_interval_ms:
            app_b = self._bucket(app, now)
            step = limits.app_interval_ms / app_b.recover(now)
            app_b.tat = max(app_b.tat, now)
            allow = max(allow, app_b.tat - (_burst(limits.app_interval_ms) - 1) * step)
        if limits.receiver_interval_ms:
            rcv_b = self._bucket(f"{app}:to:{receiver}", now)
            rcv_b.tat = max(rcv_b.tat, now)
            allow = max(allow, rcv_b.tat - (_burst(limits.receiver_interval_ms) - 1)
                        * limits.receiver_interval_ms)
        wait = allow - now
        if wait > limits.max_wait * 1000:
            return -math.ceil(wait)
        if app_b is not None:
            app_b.tat += step
        if rcv_b is not None:
            rcv_b.tat += limits.receiver_interval_ms
        return float(math.ceil(wait))

    async def _slow_down(self, app: str, pause: float) -> float:
        now = time.monotonic() * 1000
        bucket = self._bucket(app, now)
        factor = bucket.recover(now)
        if now - bucket.decreased >= 1000:
            bucket.factor = factor = max(MIN_FACTOR, factor * DECREASE)
            bucket.decreased = now
        step = self.limits.app_interval_ms / factor
        burst = _burst(self.limits.app_interval_ms)
        bucket.tat = max(bucket.tat, now + pause * 1000 + (burst - 1) * step)
        return factor


class RedisRateLimiter(RateLimiter):
    """Buckets in Redis, shared by every worker with the same prefix; one script call each."""

    def __init__(self, client: aioredis.Redis, prefix: str, limits: Limits,
                 metrics: WorkerMetrics | None = None, *, owns_client: bool = True) -> None:
        super().__init__(limits, metrics)
        self.client = client
        self.prefix = prefix
        self.owns_client = owns_client
        # One reservation per reply, pipelined with whatever else uses this client.
        self._batch = ScriptBatcher.of(client)
        self._acquire = self._batch.script(_ACQUIRE)
        self._slow = client.register_script(_SLOW_DOWN)
        self._warned = False

    @classmethod
    def from_settings(cls, settings: Settings, metrics: WorkerMetrics | None = None
                      ) -> RedisRateLimiter:
        client = make_redis(
            settings, socket_timeout=2.0, socket_connect_timeout=2.0,
            health_check_interval=15, max_connections=settings.concurrency * 2,
        )
        return cls(client, settings.prefix, Limits.from_settings(settings), metrics)

    def keys(self, app: str, receiver: str) -> list[str]:
        base = f"{self.prefix}:rl:{{{app}}}"
        return [base, f"{base}:to:{receiver}"]

    def _fallback(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("rate-limit store unreachable (%s); limiting in this worker only",
                        type(exc).__name__)

    async def _reserve(self, app: str, receiver: str) -> float:
        limits = self.limits
        app_iv, rcv_iv = limits.app_interval_ms, limits.receiver_interval_ms
        args = [app_iv, _burst(app_iv) if app_iv else 1, rcv_iv, _burst(rcv_iv) if rcv_iv else 1,
                limits.max_wait * 1000, RECOVERY_PER_SECOND / 1000, KEY_SLACK_MS]
        try:
            wait = await self._acquire(keys=self.keys(app, receiver), args=args)
        except _REDIS_ERRORS as exc:
            self._fallback(exc)
            return await super()._reserve(app, receiver)
        self._warned = False
        return float(wait)

    async def _slow_down(self, app: str, pause: float) -> float:
        app_iv = self.limits.app_interval_ms
        args = [app_iv, _burst(app_iv), pause * 1000, DECREASE, MIN_FACTOR,
                RECOVERY_PER_SECOND / 1000, KEY_SLACK_MS]
        try:
            permille = await self._slow(keys=self.keys(app, "")[:1], args=args)
        except _REDIS_ERRORS as exc:
            self._fallback(exc)
            return await super()._slow_down(app, pause)
        return float(permille) / 1000

    async def close(self) -> None:
        await super().close()
        if self.owns_client:
            await self._batch.close()
            await self.client.aclose()


def make_limiter(settings: Settings, metrics: WorkerMetrics | None = None,
                 client: aioredis.Redis | None = None) -> RateLimiter | None:
    """The limiter ``settings`` ask for: shared in Redis, in memory, or none (both limits 0).
    ``client``: a Redis client to share (the worker passes its dedup store's), else its own."""
    limits = Limits.from_settings(settings)
    if not limits.enabled:
        return None
    if settings.redis_enabled and client is not None:
        return RedisRateLimiter(client, settings.prefix, limits, metrics, owns_client=False)
    if settings.redis_enabled:
        return RedisRateLimiter.from_settings(settings, metrics)
    return RateLimiter(limits, metrics)
