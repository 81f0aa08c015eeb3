"""Auto-pipelining of Redis script calls: the calls made in one turn of the event loop go out
together as one pipeline, in one write and one round trip, instead of one round trip each (what
ioredis and node-redis call auto-pipelining).

A worker holding 64 deliveries makes its dedup claims, rate-limit reservations and done marks in
bursts; batching them cuts the per-command cost (a pooled connection, a write, a read each) to a
share of one. Each caller still gets its own result or its own exception, exactly as from a
direct call: a connection error reaches every caller of that batch, so ``DedupUnavailable`` and
the rate limiter's fallback behave as before. Scripts run by SHA (``EVALSHA``); after a Redis
restart has emptied its script cache, the batch loads them again and retries once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

_NO_SCRIPT = redis.exceptions.NoScriptError
_RETRY_ONCE = (redis.exceptions.ConnectionError, ConnectionError)

# Commands per pipeline: a burst larger than this goes out as several pipelines.
MAX_BATCH = 256

_Call = tuple["BatchedScript", Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class BatchedScript:
    """A Lua script called like ``redis.asyncio`` ``AsyncScript``: ``await s(keys=, args=)``."""

    def __init__(self, batcher: ScriptBatcher, source: str) -> None:
        self.batcher = batcher
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        return await self.batcher.call(self, keys, args)


class ScriptBatcher:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._pending: list[_Call] = []
        self._scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()

    def script(self, source: str) -> BatchedScript:
        return BatchedScript(self, source)

    def call(self, script: BatchedScript, keys: Sequence[Any], args: Sequence[Any]
             ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), MAX_BATCH):
            task = asyncio.ensure_future(self._execute(pending[start:start + MAX_BATCH]))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _run(self, calls: Sequence[_Call]) -> list[Any]:
        """One write of every ``EVALSHA``, then one reply each, on one pooled connection: the
        client's own ``Pipeline`` adds a command stack, response callbacks and bookkeeping per
        call that this hot path does not need. A pooled connection found dead is replaced and
        the batch sent once more, as the client's retry would."""
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args)
                    for script, keys, args, _ in calls]
        for attempt in (1, 2):
            try:
                return await self._round_trip(commands)
            except _RETRY_ONCE:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pool = self.client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(connection.pack_commands(commands))
            results: list[Any] = []
            for _ in commands:
                try:
                    results.append(await connection.read_response())
                except redis.exceptions.ResponseError as exc:  # this call's error, not the batch's
                    results.append(exc)
            return results
        except BaseException:
            # Replies may be left unread on it: never hand this connection out again.
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _execute(self, calls: list[_Call]) -> None:
        try:
            results = await self._run(calls)
            missing = [i for i, r in enumerate(results) if isinstance(r, _NO_SCRIPT)]
            if missing:
                for source in {calls[i][0].source for i in missing}:
                    await self.client.script_load(source)
                again = await self._run([calls[i] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except BaseException as exc:
            for *_, future in calls:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), result in zip(calls, results, strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Let the batches in flight finish (their callers are waiting for them)."""
        if self._flushes:
            with contextlib.suppress(Exception):
                await asyncio.wait(set(self._flushes), timeout=5)
