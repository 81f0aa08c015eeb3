"""Auto-pipelining of Redis script calls: the calls made while the previous batch was on its way
go out together, in one write and one round trip, instead of one round trip each (what ioredis and
node-redis call auto-pipelining).

A worker holding 64 deliveries makes its dedup claims, rate-limit reservations and done marks in
bursts. One ``ScriptBatcher`` per Redis client (``ScriptBatcher.of``) serves them all, so the
dedup store and the rate limiter share batches. It owns one connection and one flusher task:
per batch that is one write, one read per reply and one deadline (the client's
``socket_timeout``), where a pooled ``Pipeline`` would also take and return a pool connection,
start a task for the write and a timer for each read.

Each caller still gets its own result or its own exception, exactly as from a direct call: a
connection error or the deadline reaches every caller of that batch, so ``DedupUnavailable`` and
the rate limiter's fallback behave as before. A connection found dead is replaced and the batch
sent once more, as the client's own retry would. Scripts run by SHA (``EVALSHA``); after a Redis
restart has emptied its script cache, the batch loads them again and retries once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import weakref
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

_NO_SCRIPT = redis.exceptions.NoScriptError
_RETRY_ONCE = (redis.exceptions.ConnectionError, ConnectionError)

# Commands per pipeline: a burst larger than this goes out as several pipelines.
MAX_BATCH = 256

# A batch's deadline when the client sets no socket_timeout.
DEFAULT_TIMEOUT = 5.0

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
    _shared: weakref.WeakKeyDictionary[aioredis.Redis, ScriptBatcher] = (
        weakref.WeakKeyDictionary())

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        self.timeout = float(kwargs.get("socket_timeout") or DEFAULT_TIMEOUT)
        kwargs["socket_timeout"] = None  # the batch's one deadline replaces per-call timers
        self._connect_kwargs = kwargs
        self._connection_class = pool.connection_class
        self._connection: Any = None
        self._pending: list[_Call] = []
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set while the flusher has nothing to do

    @classmethod
    def of(cls, client: aioredis.Redis) -> ScriptBatcher:
        """The batcher of ``client``, made on first use: every user of one client shares it."""
        batcher = cls._shared.get(client)
        if batcher is None:
            batcher = cls._shared[client] = cls(client)
        return batcher

    def script(self, source: str) -> BatchedScript:
        return BatchedScript(self, source)

    def call(self, script: BatchedScript, keys: Sequence[Any], args: Sequence[Any]
             ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        self._idle.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._flush_forever())
        elif self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        return future

    async def _flush_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._idle.set()
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            await self._execute(batch)

    async def _run(self, calls: Sequence[_Call]) -> list[Any]:
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
        connection = self._connection
        try:
            async with asyncio.timeout(self.timeout):
                if connection is None:
                    connection = self._connection_class(**self._connect_kwargs)
                    await connection.connect()  # type: ignore[no-untyped-call]
                    self._connection = connection
                await connection.send_packed_command(_pack(commands), check_health=False)
                results: list[Any] = []
                for _ in commands:
                    try:
                        results.append(await connection.read_response())
                    except redis.exceptions.ResponseError as exc:  # this call's own error
                        results.append(exc)
                return results
        except BaseException:
            # Replies may be left unread on it: never use this connection again.
            self._connection = None
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.disconnect(nowait=True)
            raise

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
        """Let the calls already made finish (their callers are waiting), then disconnect."""
        if self._task is not None:
            if not self._task.done():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), self.timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.disconnect()
            self._connection = None
        self._shared.pop(self.client, None)


def _pack(commands: list[tuple[Any, ...]]) -> bytes:
    """RESP for these commands (``Connection.pack_commands`` does the same, at several times the
    cost per argument). Arguments are str, bytes, int or float, as the scripts here pass."""
    out: list[bytes] = []
    append = out.append
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for arg in command:
            kind = type(arg)
            if kind is str:
                raw = arg.encode()
            elif kind is int:
                raw = b"%d" % arg
            elif kind is bytes:
                raw = arg
            elif kind is float:
                raw = repr(arg).encode()
            else:
                raise TypeError(f"cannot send a {kind.__name__} to Redis")
            append(b"$%d\r\n" % len(raw))
            append(raw)
            append(b"\r\n")
    return b"".join(out)
