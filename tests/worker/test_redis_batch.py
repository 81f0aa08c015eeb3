"""Auto-pipelined script calls: one pipeline per loop turn, each caller its own result."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from botrelay.worker.redis_batch import ScriptBatcher

pytestmark = pytest.mark.integration

_INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
_FAIL = "return redis.error_reply('NOPE ' .. ARGV[1])"


async def test_calls_in_one_turn_share_a_pipeline_and_get_their_own_results(redis_url, prefix):
    client = aioredis.Redis.from_url(redis_url)
    batcher = ScriptBatcher(client)
    # A script Redis has never seen: the first batch must load it itself (NOSCRIPT).
    incr, fail = batcher.script(f"{_INCR} -- {prefix}"), batcher.script(_FAIL)
    pipelines = 0
    write = batcher._write

    async def counting(calls, attempt):  # type: ignore[no-untyped-def]
        nonlocal pipelines
        pipelines += 1
        return await write(calls, attempt)

    batcher._write = counting  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(*(incr(keys=[f"{prefix}:n"], args=[1]) for _ in range(50)),
                                       fail(keys=[], args=["x"]), return_exceptions=True)
        assert sorted(results[:50]) == list(range(1, 51))  # type: ignore[type-var]
        assert isinstance(results[50], redis.exceptions.ResponseError)
        assert "NOPE x" in str(results[50])
        assert pipelines == 2  # the batch, then the calls that got NOSCRIPT, once loaded
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


async def test_batches_are_written_without_waiting_for_the_replies_before(redis_url, prefix):
    client = aioredis.Redis.from_url(redis_url)
    pauser = aioredis.Redis.from_url(redis_url)
    batcher = ScriptBatcher(client)
    incr = batcher.script(_INCR)
    try:
        await incr(keys=[f"{prefix}:n"], args=[0])  # loads the script, opens the connection
        await pauser.execute_command("CLIENT", "PAUSE", "300")  # Redis holds every answer
        first = asyncio.ensure_future(incr(keys=[f"{prefix}:n"], args=[1]))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(incr(keys=[f"{prefix}:n"], args=[1]))
        await asyncio.sleep(0.05)
        # Both batches are out, the second written while the first had no answer yet.
        assert len(batcher._in_flight) == 2
        assert sorted(await asyncio.wait_for(asyncio.gather(first, second), 5)) == [1, 2]
    finally:
        await client.delete(f"{prefix}:n")
        await batcher.close()
        await client.aclose()
        await pauser.aclose()


async def test_a_reply_that_never_comes_fails_the_batches_in_flight(prefix):
    """A server that accepts the connection and answers nothing: the deadline fails every
    caller, and nothing is retried on a timeout."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read(1 << 16)
        await asyncio.sleep(10)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3,
                                     socket_connect_timeout=0.3)
    batcher = ScriptBatcher(client)
    incr = batcher.script(_INCR)
    try:
        results = await asyncio.wait_for(asyncio.gather(
            *(incr(keys=[f"{prefix}:n"], args=[1]) for _ in range(3)),
            return_exceptions=True), 5)
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert len(accepted) == 1  # not retried
    finally:
        server.close()
        for writer in accepted:
            writer.close()
        await batcher.close()
        await client.aclose()


async def test_a_bad_argument_fails_only_its_own_call(redis_url, prefix):
    client = aioredis.Redis.from_url(redis_url)
    batcher = ScriptBatcher(client)
    incr = batcher.script(_INCR)
    try:
        await incr(keys=[f"{prefix}:n"], args=[0])  # loads the script, opens the connection
        connection = batcher._connection
        results = await asyncio.gather(
            incr(keys=[f"{prefix}:n"], args=[1]),
            incr(keys=[f"{prefix}:n"], args=[None]),  # not something Redis can be sent
            incr(keys=[f"{prefix}:n"], args=["\ud800"]),  # not Unicode text
            incr(keys=[f"{prefix}:n"], args=[1]),
            return_exceptions=True)
        assert sorted(results[::3]) == [1, 2]  # type: ignore[type-var]
        assert isinstance(results[1], TypeError)
        assert isinstance(results[2], UnicodeEncodeError)
        assert batcher._connection is connection  # the connection was never in doubt
        assert await incr(keys=[f"{prefix}:n"], args=[1]) == 3
    finally:
        await client.delete(f"{prefix}:n")
        await batcher.close()
        await client.aclose()


async def test_a_connection_lost_mid_batch_never_runs_a_script_twice_that_must_run_once(
        redis_url, prefix):
    """The batch reaches Redis and runs; the connection goes before its replies are read. The
    idempotent call is sent again on a new connection; the other (a reservation, counting)
    fails with the connection error instead of counting twice."""
    client = aioredis.Redis.from_url(redis_url)
    batcher = ScriptBatcher(client)
    reserve = batcher.script(_INCR)  # not idempotent: each run counts
    mark = batcher.script(f"redis.call('INCR', KEYS[2]) return redis.call('SET', KEYS[1], "
                          f"ARGV[1]) -- {prefix}", idempotent=True)
    base = batcher._connection_class
    cuts = [1]

    class CutAfterRedisRan(base):  # type: ignore[valid-type,misc]
        async def read_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            answer = await super().read_response(*args, **kwargs)  # the batch has run
            if cuts and not isinstance(answer, dict):  # a script's reply, not the handshake's
                cuts.pop()
                raise redis.exceptions.ConnectionError("connection lost")
            return answer

    try:
        await reserve(keys=[f"{prefix}:n"], args=[0])  # loads the scripts
        await mark(keys=[f"{prefix}:m", f"{prefix}:runs"], args=["x"])
        await client.delete(f"{prefix}:runs")
        batcher._broken(batcher._connection, RuntimeError("a new connection, of the class below"))
        batcher._connection_class = CutAfterRedisRan
        results = await asyncio.gather(
            reserve(keys=[f"{prefix}:n"], args=[1]),
            mark(keys=[f"{prefix}:m", f"{prefix}:runs"], args=["y"]),
            return_exceptions=True)
        assert not cuts
        assert isinstance(results[0], redis.exceptions.ConnectionError)
        assert results[1] in (b"OK", "OK", True)
        assert int(await client.get(f"{prefix}:n") or 0) == 1  # reserved once, not twice
        assert int(await client.get(f"{prefix}:runs") or 0) == 2  # the mark did go again
    finally:
        await client.delete(f"{prefix}:n", f"{prefix}:m", f"{prefix}:runs")
        await batcher.close()
        await client.aclose()


async def test_redis_answers_are_parsed_by_hiredis(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    batcher = ScriptBatcher(client)
    try:
        assert await batcher.script("return 1")() == 1
        assert type(batcher._connection._parser).__name__ == "_AsyncHiredisParser"
    finally:
        await batcher.close()
        await client.aclose()
