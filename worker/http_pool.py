"""Keep-alive HTTP/1.1 connections for the one request a worker makes per reply: a POST of a
small JSON body whose whole answer is read.

aiohttp's client costs about 170-210 us of CPU per such request here (a ``ClientRequest`` and a
``ClientResponse`` object, header multidicts, the connector's bookkeeping, a timer and a task
per request); this pool costs a fraction of that: one prebuilt header block, one write, and the
answer parsed by httptools (the llhttp binding uvicorn uses) straight off the socket.

What it does: HTTP and HTTPS (the system's CAs, as aiohttp's default), ``Content-Length`` or
chunked answers, keep-alive with at most ``limit`` connections per origin (callers beyond that
wait for one), idle ones closed after ``KEEPALIVE`` seconds or past ``MAX_IDLE`` over all
origins, and a connection that answered ``Connection: close``, was cut, or was abandoned
mid-answer is never reused. What it does not: redirects, proxies, cookies, compression, which
the reply API does not use. Every failure is an ``HttpError``: ``HttpConnectionError`` (could
not connect, or the connection went before a whole answer came) or ``HttpProtocolError`` (the
answer was not HTTP); ``worker.reply_client`` retries both.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

# Idle connections are closed after this long (aiohttp's default too): servers and load balancers
# close theirs after a while, and a request sent just as they do fails and has to be retried.
KEEPALIVE = 15.0
# Idle connections kept over all origins: each app is an origin of its own.
MAX_IDLE = 256


class HttpError(Exception):
    """A reply request failed below HTTP status level."""


class HttpConnectionError(HttpError, ConnectionError):
    """Could not connect, or the connection closed before the whole answer arrived."""


class HttpProtocolError(HttpError):
    """The peer's answer was not valid HTTP."""


class Headers(dict[str, str]):
    """Answer headers; names are kept lower-cased and looked up in any case."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]  # scheme, host, port
    head: bytes  # "POST <path> HTTP/1.1\r\nHost: <host>\r\n"


class _Connection(asyncio.Protocol):
    """One socket; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[Response] | None = None
        self.closed = False
        self._headers = Headers()
        self._body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpProtocolError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(HttpProtocolError(f"not an HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HttpConnectionError(
            f"connection closed before the whole answer arrived ({exc or 'by the peer'})"))

    # httptools callbacks (it hands over each header whole, however the bytes arrived)
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer = self.answer
        if answer is not None and not answer.done():
            answer.set_result(Response(self.parser.get_status_code(), self._headers,
                                       b"".join(self._body)))
        if not self.parser.should_keep_alive():
            self.close()

    # the pool's side
    def send(self, request: bytes, answer: asyncio.Future[Response]) -> None:
        assert self.transport is not None
        self._headers, self._body, self.answer = Headers(), [], answer
        self.transport.write(request)

    def reusable(self) -> bool:
        return not self.closed and self.transport is not None and \
            not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: HttpError) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)
        self.close()


@dataclass
class _Origin:
    idle: deque[tuple[_Connection, float]] = field(default_factory=deque)  # (conn, idle since)
    slots: asyncio.Semaphore | None = None


class HttpPool:
    def __init__(self, *, limit: int = 100, connect_timeout: float = 5.0,
                 headers: dict[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 keepalive: float = KEEPALIVE, max_idle: int = MAX_IDLE) -> None:
        """``limit``: connections per origin. ``headers``: sent with every request (Host and
        Content-Length are the pool's own). An idle connection is closed after ``keepalive``
        seconds, and at most ``max_idle`` are kept over all origins (one per app adds up)."""
        self.limit = limit
        self.keepalive = keepalive
        self.max_idle = max_idle
        self._idle_count = 0
        self.connect_timeout = connect_timeout
        self._ssl = ssl_context
        self._fixed = b"".join(f"{k}: {v}\r\n".encode("latin-1")
                               for k, v in (headers or {}).items())
        self._targets: dict[str, _Target] = {}
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._open: set[_Connection] = set()

    async def post(self, url: str, body: bytes) -> Response:
        """POST ``body`` and read the whole answer; any status is returned, not raised. Use
        it under a deadline (``asyncio.timeout``): a cancelled request closes its connection."""
        target = self._targets.get(url) or self._target(url)
        origin = self._origins.get(target.origin)
        if origin is None:
            origin = self._origins[target.origin] = _Origin(slots=asyncio.Semaphore(self.limit))
        assert origin.slots is not None
        async with origin.slots:
            connection = None
            now = time.monotonic()
            while origin.idle:
                # The most recently used: the least likely to be closed by the server.
                candidate, since = origin.idle.pop()
                self._idle_count -= 1
                if candidate.reusable() and now - since < self.keepalive:
                    connection = candidate
                    break
                self._drop(candidate)
            if connection is None:
                connection = await self._connect(target.origin)
            answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
            try:
                connection.send(b"%sContent-Length: %d\r\n%s\r\n%b" % (
                    target.head, len(body), self._fixed, body), answer)
                response = await answer
            except BaseException:
                connection.close()  # an answer may still be on its way: never reuse it
                self._open.discard(connection)
                raise
            if connection.reusable():
                origin.idle.append((connection, time.monotonic()))
                self._idle_count += 1
                if self._idle_count > self.max_idle:
                    self._evict()
            else:
                self._open.discard(connection)
            return response

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    def _evict(self) -> None:
        """Over ``max_idle``: close the connection idle the longest, over all origins."""
        oldest: _Origin | None = None
        for origin in self._origins.values():
            if origin.idle and (oldest is None or origin.idle[0][1] < oldest.idle[0][1]):
                oldest = origin
        if oldest is not None:
            connection, _ = oldest.idle.popleft()
            self._idle_count -= 1
            self._drop(connection)

    def _target(self, url: str) -> _Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        default = (parts.scheme == "https" and port == 443) or (
            parts.scheme == "http" and port == 80)
        host = parts.hostname if default else f"{parts.hostname}:{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        target = _Target((parts.scheme, parts.hostname, port),
                         f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode("latin-1"))
        if len(self._targets) < 10_000:  # one per app and bot; bounded all the same
            self._targets[url] = target
        return target

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        context: Any = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection, host, port, ssl=context,
                    server_hostname=host if context else None)
        except TimeoutError:
            raise HttpConnectionError(f"could not connect to {host}:{port} within "
                                      f"{self.connect_timeout:g}s") from None
        except OSError as exc:
            raise HttpConnectionError(f"could not connect to {host}:{port}: {exc}") from exc
        self._open.add(connection)
        return connection

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._origins.clear()
        self._idle_count = 0
        await asyncio.sleep(0)  # let the transports finish closing
