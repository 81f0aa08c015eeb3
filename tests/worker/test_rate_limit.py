"""The outbound rate limiter: spacing, burst, waits bounded, adaptive slow-down, shared state."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from botrelay.shared.settings import Settings
from botrelay.worker.rate_limit import (
    Limits,
    RateLimited,
    RateLimiter,
    RedisRateLimiter,
    make_limiter,
)


def limits(app_per_s: float = 0, receiver_per_s: float = 0, max_wait: float = 10.0) -> Limits:
    def interval(rate: float) -> float:
        return 1000.0 / rate if rate else 0.0
    return Limits(interval(app_per_s), interval(receiver_per_s), max_wait)


async def reserve_times(limiter: RateLimiter, n: int, receiver: str = "r") -> list[float]:
    """The waits ``n`` back-to-back reservations get (in seconds), without sleeping."""
    return [await limiter._reserve("app", receiver) / 1000 for _ in range(n)]


async def test_reservations_are_spaced_at_the_rate_after_a_short_burst():
    limiter = RateLimiter(limits(app_per_s=50))  # burst: 0.2 s worth = 10
    waits = await reserve_times(limiter, 30)
    assert waits[:10] == [0.0] * 10
    # After the burst each request gets the next 20 ms slot.
    assert waits[29] == pytest.approx(20 * 0.02, abs=0.01)
    assert waits == sorted(waits)


async def test_receiver_limit_is_per_receiver():
    limiter = RateLimiter(limits(receiver_per_s=2))  # burst 1 per receiver
    a = await reserve_times(limiter, 3, receiver="alice")
    b = await reserve_times(limiter, 1, receiver="bob")
    assert a[0] == 0 and a[1] == pytest.approx(0.5, abs=0.01) and a[2] == pytest.approx(1.0,
                                                                                        abs=0.01)
    assert b == [0.0]


async def test_a_wait_longer_than_allowed_raises_and_reserves_nothing():
    limiter = RateLimiter(limits(app_per_s=10, max_wait=0.3))  # burst 2, then 100 ms apart
    for _ in range(5):
        await limiter._reserve("app", "r")
    with pytest.raises(RateLimited) as info:
        await limiter.acquire("app", "r")
    assert info.value.delay == pytest.approx(0.4, abs=0.015)
    # Nothing was reserved: the next slot is still the same distance away.
    assert await limiter._reserve("app", "r") == pytest.approx(-400, abs=15)


async def test_acquire_sleeps_until_the_slot():
    limiter = RateLimiter(limits(app_per_s=20))  # burst 4, then 50 ms apart
    started = time.monotonic()
    for _ in range(8):
        await limiter.acquire("app", "r")
    assert 0.17 <= time.monotonic() - started < 0.6


async def test_a_429_pauses_the_app_and_halves_its_rate_once_a_second():
    limiter = RateLimiter(limits(app_per_s=100))
    await limiter.slow_down("app", 0.5)
    await limiter.slow_down("app", 0.5)  # within the same second: no second decrease
    first, second = await reserve_times(limiter, 2)
    assert first == pytest.approx(0.5, abs=0.02)
    assert second - first == pytest.approx(0.02, abs=0.003)  # 50 % of 100/s
    assert await limiter._reserve("other-app", "r") == 0


def test_limits_come_from_settings():
    settings = Settings(rate_limit_app=1200, rate_limit_receiver=30)
    got = Limits.from_settings(settings)
    assert got.app_interval_ms == 50 and got.receiver_interval_ms == 2000
    assert got.max_wait == settings.dedup_lease - settings.handler_timeout - settings.reply_budget
    assert make_limiter(Settings(rate_limit_app=0, rate_limit_receiver=0)) is None
    assert type(make_limiter(Settings())) is RateLimiter


@pytest.mark.integration
async def test_redis_buckets_are_shared_between_workers(redis_url, prefix, redis_client):
    workers = [RedisRateLimiter(aioredis.Redis.from_url(redis_url), prefix, limits(app_per_s=50))
               for _ in range(3)]
    try:
        waits = await asyncio.gather(*(w._reserve("app", "r") for w in workers for _ in range(10)))
        # 30 reservations across three limiters: one schedule, 10 at once then 20 ms apart.
        assert sorted(waits)[:10] == [0.0] * 10
        assert max(waits) == pytest.approx(20 * 20, abs=30)
        await workers[0].slow_down("app", 1.0)
        wait = await workers[1]._reserve("app", "r")
        assert wait >= 950  # the 1 s hold, less the milliseconds between the two calls
        assert await redis_client.exists(f"{prefix}:rl:{{app}}")
    finally:
        for w in workers:
            await w.close()


@pytest.mark.integration
async def test_redis_limiter_falls_back_to_memory_when_redis_is_down(prefix):
    limiter = RedisRateLimiter(
        aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2),
        prefix, limits(app_per_s=50))
    try:
        assert await limiter.acquire("app", "r") == 0
        await limiter.slow_down("app", 0.1)
    finally:
        await limiter.close()


def test_waiting_for_our_own_limit_is_not_a_retry():
    # A Retry spends an attempt; waiting for our own budget must never dead-letter a message.
    from botrelay.shared.errors import Retry, TransientError
    assert not issubclass(RateLimited, Retry)
    assert issubclass(RateLimited, TransientError)
    assert RateLimited(2.5).delay == 2.5
