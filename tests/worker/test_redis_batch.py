"""Auto-pipelined script calls: one pipeline per loop turn, each caller its own result."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from worker.redis_batch import ScriptBatcher

pytestmark = pytest.mark.integration

_INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
_FAIL = "return redis.error_reply('NOPE ' .. ARGV[1])"


async def test_calls_in_one_turn_share_a_pipeline_and_get_their_own_results(redis_url, prefix):
    client = aioredis.Redis.from_url(redis_url)
    batcher = ScriptBatcher(client)
    # A script Redis has never seen: the first batch must load it itself (NOSCRIPT).
    incr, fail = batcher.script(f"{_INCR} -- {prefix}"), batcher.script(_FAIL)
    pipelines = 0
    run = batcher._run

    async def counting(calls):  # type: ignore[no-untyped-def]
        nonlocal pipelines
        pipelines += 1
        return await run(calls)

    batcher._run = counting  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(*(incr(keys=[f"{prefix}:n"], args=[1]) for _ in range(50)),
                                       fail(keys=[], args=["x"]), return_exceptions=True)
        assert sorted(results[:50]) == list(range(1, 51))  # type: ignore[type-var]
        assert isinstance(results[50], redis.exceptions.ResponseError)
        assert "NOPE x" in str(results[50])
        assert pipelines == 2  # the batch, then its retry after loading the scripts
        assert await incr(keys=[f"{prefix}:n"], args=[5]) == 55
    finally:
        await client.delete(f"{prefix}:n")
        await batcher.close()
        await client.aclose()


async def test_a_connection_error_reaches_every_caller(prefix):
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    batcher = ScriptBatcher(client)
    incr = batcher.script(_INCR)
    try:
        results = await asyncio.gather(*(incr(keys=[f"{prefix}:n"], args=[1]) for _ in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, redis.exceptions.ConnectionError | OSError) for r in results)
    finally:
        await client.aclose()
