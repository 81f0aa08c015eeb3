"""Auto-pipelining of Redis script calls: the calls made in one turn of the event loop go out
together, in one write, instead of one round trip each (what ioredis and node-redis call
auto-pipelining).

A worker holding 64 deliveries makes its dedup claims, rate-limit reservations and done marks in
bursts. One ``ScriptBatcher`` per Redis client (``ScriptBatcher.of``) serves them all, so the
dedup store and the rate limiter share batches. It owns one connection, a writer and a reader:
a batch is written as soon as it is made, without waiting for the replies of the one before
(they come back in order, and the reader hands each caller its own). Per batch that is one
write, one read per reply and one deadline (the client's ``socket_timeout``), where a pooled
``Pipeline`` would also take and return a pool connection, start a task for the write and a
timer for each read.

Each caller still gets its own result or its own exception, exactly as from a direct call: a
call whose arguments cannot be sent, or that Redis answers with an error, fails alone (the
connection and the rest of its batch carry on); a connection error or the deadline reaches
every caller of the batches in flight, so ``DedupUnavailable`` and the rate limiter's fallback
behave as before.

Sending again: a batch whose connection could not be opened never reached Redis and is sent
once more on a new one. Once a batch has been written, Redis may have run it even if the
connection went before the replies came: only the calls of scripts declared ``idempotent``
(running twice leaves what running once does) are sent again; the others fail with the
connection error, so that a rate-limit reservation is never made twice. Scripts run by SHA
(``EVALSHA``); after a Redis restart has emptied its script cache, the calls that got NOSCRIPT
(never run) load their script and go again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from botrelay.shared.wakeup import Wakeup

_NO_SCRIPT = redis.exceptions.NoScriptError
_RETRY_ONCE = (redis.exceptions.ConnectionError, ConnectionError)

# Commands per pipeline: a burst larger than this goes out as several pipelines.
MAX_BATCH = 256

# Batches written and not yet answered, at most: past this, new calls wait and batch up.
MAX_IN_FLIGHT = 16

# A batch's deadline when the client sets no socket_timeout.
DEFAULT_TIMEOUT = 5.0

_Call = tuple["BatchedScript", Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]

class BatchedScript:
    """A Lua script called like ``redis.asyncio`` ``AsyncScript``: ``await s(keys=, args=)``."""

    def __init__(self, batcher: ScriptBatcher, source: str, *, idempotent: bool = False) -> None:
        self.batcher = batcher
        self.source = source
        self.idempotent = idempotent
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        return await self.batcher.call(self, keys, args)


@dataclass(slots=True, eq=False)  # compared by identity
class _Batch:
    calls: list[_Call]
    connection: Any  # the connection it was written to
    attempt: int


class ScriptBatcher:
    _shared: weakref.WeakKeyDictionary[aioredis.Redis, ScriptBatcher] = (
        weakref.WeakKeyDictionary())

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        self.timeout = float(kwargs.get("socket_timeout") or DEFAULT_TIMEOUT)
        kwargs["socket_timeout"] = None  # one deadline per batch replaces per-call timers
        # A client built to ride out a failover (Sentinel: ``shared.redis_connect``) retries a
        # call several times; a batch gets as many attempts, paced here, so the connection
        # itself must not retry inside a batch's deadline.
        retry = kwargs.get("retry")
        self.attempts = max(2, 1 + retry.get_retries()) if retry is not None else 2
        kwargs["retry"] = Retry(NoBackoff(), 0)
        self._connect_kwargs = kwargs
        self._connection_class = pool.connection_class
        self._connection: Any = None
        self._pending: list[tuple[_Call, int]] = []  # (call, attempt)
        self._in_flight: deque[_Batch] = deque()
        self._writer_wakeup = Wakeup()
        self._reader_wakeup = Wakeup()
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        # Script reloads and disconnects of broken connections, running beside the loops.
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._quiet = asyncio.Event()  # nothing pending, nothing in flight
        self._closed = False

    @classmethod
    def of(cls, client: aioredis.Redis) -> ScriptBatcher:
        """The batcher of ``client``, made on first use: every user of one client shares it."""
        batcher = cls._shared.get(client)
        if batcher is None:
            batcher = cls._shared[client] = cls(client)
        return batcher

    def script(self, source: str, *, idempotent: bool = False) -> BatchedScript:
        """``idempotent``: running the script twice with the same keys and arguments leaves
        what running it once does, so a call lost with its connection may be sent again."""
        return BatchedScript(self, source, idempotent=idempotent)

    def call(self, script: BatchedScript, keys: Sequence[Any], args: Sequence[Any]
             ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue([((script, keys, args, future), 1)])
        return future

    def _queue(self, calls: list[tuple[_Call, int]]) -> None:
        self._pending += calls
        self._quiet.clear()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_forever())
        else:
            self._writer_wakeup.set()

    async def _write_forever(self) -> None:
        while True:
            if not self._pending or len(self._in_flight) >= MAX_IN_FLIGHT:
                self._check_quiet()
                await self._writer_wakeup.wait()
                continue
            head, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            by_attempt: dict[int, list[_Call]] = {}
            for call, attempt in head:
                if not call[3].done():  # its caller may have given up meanwhile
                    by_attempt.setdefault(attempt, []).append(call)
            for attempt, calls in by_attempt.items():
                await self._write(calls, attempt)

    async def _write(self, calls: list[_Call], attempt: int) -> None:
        packed: list[bytes] = []
        sendable: list[_Call] = []
        for call in calls:
            script, keys, args, future = call
            try:
                packed.append(_pack(("EVALSHA", script.sha, len(keys), *keys, *args)))
            except (TypeError, ValueError) as exc:  # its own bad argument: it alone fails
                if not future.done():
                    future.set_exception(exc)
                continue
            sendable.append(call)
        if not sendable:
            return
        calls = sendable
        connection = self._connection
        written = False
        try:
            async with asyncio.timeout(self.timeout):
                if connection is None:
                    connection = self._connection_class(**self._connect_kwargs)
                    await connection.connect()  # type: ignore[no-untyped-call]
                    self._connection = connection
                # From here on some of the batch may have reached Redis.
                written = True
                await connection.send_packed_command(b"".join(packed), check_health=False)
        except Exception as exc:
            self._broken(connection, exc)
            self._retry_or_fail(calls, attempt, exc, written=written)
            return
        self._in_flight.append(_Batch(calls, connection, attempt))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read_forever())
        else:
            self._reader_wakeup.set()

    async def _read_forever(self) -> None:
        while True:
            if not self._in_flight:
                await self._reader_wakeup.wait()
                continue
            batch = self._in_flight[0]
            if batch.connection is not self._connection:  # written to one that broke since
                self._in_flight.popleft()
                self._retry_or_fail(batch.calls, batch.attempt,
                                    redis.exceptions.ConnectionError("connection lost"),
                                    written=True)
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    results: list[Any] = []
                    for _ in batch.calls:
                        try:
                            results.append(await batch.connection.read_response())
                        except redis.exceptions.ResponseError as exc:  # this call's own error
                            results.append(exc)
            except Exception as exc:
                # Every batch written to this connection goes with it, with this error.
                self._broken(batch.connection, exc)
                for lost in [b for b in self._in_flight if b.connection is batch.connection]:
                    self._in_flight.remove(lost)
                    self._retry_or_fail(lost.calls, lost.attempt, exc, written=True)
                self._writer_wakeup.set()
                continue
            self._in_flight.popleft()
            self._writer_wakeup.set()  # room for another batch in flight
            self._settle(batch.calls, results)
            self._check_quiet()

    def _settle(self, calls: list[_Call], results: list[Any]) -> None:
        missing: list[_Call] = []
        for call, result in zip(calls, results, strict=True):
            future = call[3]
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(result, _NO_SCRIPT):
                missing.append(call)
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        if missing:
            task = asyncio.ensure_future(self._reload(missing))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_task_done)

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        self._side_tasks.discard(task)
        self._check_quiet()

    async def _reload(self, calls: list[_Call]) -> None:
        """Redis lost its script cache (a restart): load the scripts, then send the calls
        again, once."""
        try:
            for source in {script.source for script, *_ in calls}:
                await self.client.script_load(source)
        except Exception as exc:
            _fail(calls, exc)
            return
        self._queue([(call, 2) for call in calls])

    def _check_quiet(self) -> None:
        if not self._pending and not self._in_flight and not self._side_tasks:
            self._quiet.set()

    def _broken(self, connection: Any, exc: BaseException) -> None:
        """``connection`` failed: never use it again (replies may be left unread on it)."""
        if connection is not None and connection is self._connection:
            self._connection = None
            task = asyncio.ensure_future(_disconnect(connection))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_task_done)

    def _retry_or_fail(self, calls: list[_Call], attempt: int, exc: BaseException, *,
                       written: bool) -> None:
        """Send again what a lost connection took, where that cannot run a script twice that
        must run once: all of a batch never written, the idempotent calls of one written."""
        if attempt >= self.attempts or not isinstance(exc, _RETRY_ONCE):
            _fail(calls, exc)
            return
        again = [(call, attempt + 1) for call in calls if not written or call[0].idempotent]
        if again:
            if attempt == 1:
                self._queue(again)  # at once: a dead pooled connection, most often
            else:  # the server itself is away (a failover): back off a little each time
                pause = min(0.05 * 2 ** (attempt - 2), 0.5)
                asyncio.get_running_loop().call_later(pause, self._requeue, again)
        if len(again) < len(calls):
            _fail([call for call in calls if written and not call[0].idempotent], exc)

    def _requeue(self, calls: list[tuple[_Call, int]]) -> None:
        if self._closed:
            _fail([call for call, _ in calls], ConnectionError("batcher closed"))
        else:
            self._queue(calls)

    async def close(self) -> None:
        """Let the calls already made finish (their callers are waiting), then disconnect."""
        self._closed = True
        if self._pending or self._in_flight or self._side_tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), self.timeout)
        for task in (self._writer, self._reader, *self._side_tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._writer = self._reader = None
        _fail([call for call, _ in self._pending], ConnectionError("batcher closed"))
        for batch in self._in_flight:
            _fail(batch.calls, ConnectionError("batcher closed"))
        self._pending, self._in_flight = [], deque()
        if self._connection is not None:
            await _disconnect(self._connection)
            self._connection = None
        self._shared.pop(self.client, None)


def _fail(calls: list[_Call], exc: BaseException) -> None:
    for *_, future in calls:
        if not future.done():
            future.set_exception(exc)


async def _disconnect(connection: Any) -> None:
    with contextlib.suppress(Exception):
        await connection.disconnect(nowait=True)


def _pack(command: tuple[Any, ...]) -> bytes:
    """RESP for one command (``Connection.pack_commands`` does the same, at several times the
    cost per argument). Arguments are str, bytes, int or float, as the scripts here pass;
    anything else is a ``TypeError``, a str that is not Unicode text a ``UnicodeEncodeError``."""
    out: list[bytes] = []
    append = out.append
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
