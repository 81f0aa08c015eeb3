"""The worker's HTTP client: pyreqwest (reqwest, hyper and rustls in Rust) behind the few calls
the worker makes, a POST of a small JSON reply and a GET to look one up.

Why a library: HTTP/1.1 has more legal answers than a reply client meets on a test bench
(answers delimited by closing the connection, interim 1xx answers, repeated headers, IPv6 hosts,
non-ASCII paths), and production networks add egress proxies and private CAs. hyper handles all
of these and is fast; pyreqwest runs it on its own Tokio thread, so a POST costs the event loop
little more than the hand-written client it replaces did.

What users get, as from any HTTP client:

- keep-alive connections per origin, at most ``limit`` requests in flight, idle ones closed
  after ``keepalive`` seconds (before most servers and load balancers close theirs);
- ``connect_timeout`` for the connect phase (TCP, TLS, proxy tunnel), ``read_timeout`` between
  reads of the answer;
- ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` (reqwest reads them);
- the platform's CAs plus ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` (a private CA; rustls-native-certs
  reads them), HTTP/2 when the server offers it in the TLS handshake, HTTP/1.1 otherwise;
- redirects never followed (a reply POST that a server redirects is an answer to report, not
  to send somewhere else), no cookies, no ``Referer``.

Re-sending: a request is sent again without the caller knowing only when it provably never
reached the server: hyper does it for a pooled connection found closed before the request was
written, this module (a few times, at once) for a connection that could not be opened (refused,
unreachable, TLS or proxy failure) and for an HTTP/2 stream the server turned away unprocessed.
Every other failure is raised as an ``HttpError`` for the caller's retry rules, which count it:
the request may have been processed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from pyreqwest import exceptions as rq
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.request import RequestBuilder

log = logging.getLogger("botrelay.http")

# Idle connections are closed after this long (aiohttp's default too): servers and load balancers
# close theirs after a while, and a request sent just as they do fails and has to be retried.
KEEPALIVE = 15.0
# Times a request that provably never reached the server is sent again at once. An HTTP/2
# server that ends a connection after a few streams (nginx's keepalive_requests) turns away
# the streams past its count on every connection, so one re-send is not always enough.
RESENDS = 4

# What hyper, h2 and reqwest say (innermost causes) when the server provably did not act on a
# request: no connection was made (refused, unreachable, TLS or proxy refused), or HTTP/2 said
# so itself (RFC 9113 8.7: GOAWAY's graceful close for the streams past its last stream id, and
# REFUSED_STREAM). A stream cut by the connection's end reads differently ("broken pipe") and is
# not among these: the server may have acted on it.
_UNPROCESSED = (
    "client error (Connect)",
    "connection error received: not a result of an error",
    "stream error received: refused stream before processing any application logic",
)


class HttpError(Exception):
    """A request failed below HTTP status level; it may or may not have reached the server."""


class HttpConnectionError(HttpError, ConnectionError):
    """Could not connect, or the connection failed before the whole answer arrived."""


class HttpProtocolError(HttpError):
    """The peer's answer was not valid HTTP."""


class HttpTimeoutError(HttpError, TimeoutError):
    """No connection or no answer within the client's timeouts."""


class Headers(Protocol):
    """Answer headers: names in any case; ``getall`` for a header sent more than once."""

    def get(self, key: str, /) -> str | None: ...

    def getall(self, key: str) -> list[str]: ...


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers
    body: bytes
    version: str  # "HTTP/1.1", "HTTP/2.0"


class HttpClient:
    def __init__(self, *, limit: int = 100, connect_timeout: float = 5.0,
                 read_timeout: float | None = None, headers: Mapping[str, str] | None = None,
                 keepalive: float = KEEPALIVE) -> None:
        """``limit``: requests in flight over all origins (callers beyond it wait for a slot),
        and idle connections kept per origin (each app is an origin of its own; idle ones go
        after ``keepalive`` seconds). ``headers``: sent with every request; ``User-Agent``
        among them names the client."""
        fixed = dict(headers or {})
        agent = fixed.pop("User-Agent", None)
        builder = (ClientBuilder()
                   .max_connections(limit)
                   .connect_timeout(timedelta(seconds=connect_timeout))
                   .pool_idle_timeout(timedelta(seconds=keepalive))
                   .pool_max_idle_per_host(limit)
                   .follow_redirects(False)
                   .referer(False)
                   .http2(True)
                   .default_headers(fixed))
        if read_timeout is not None:
            builder = builder.read_timeout(timedelta(seconds=read_timeout))
        if agent is not None:
            builder = builder.user_agent(agent)
        self._client: Client = builder.build()
        self.resent_unprocessed = 0  # requests sent again because they never reached the server

    async def post(self, url: str, body: bytes) -> Response:
        """POST ``body`` and read the whole answer; any status is returned, not raised. Under a
        deadline (``asyncio.timeout``), the answer to a cancelled request, if it comes, is read
        and dropped by its connection, never handed to another request."""
        return await self._send(lambda: self._client.post(url).body_bytes(body))

    async def get(self, url: str) -> Response:
        """GET ``url`` and read the whole answer; any status is returned, not raised."""
        return await self._send(lambda: self._client.get(url))

    async def _send(self, request: _Build) -> Response:
        for _ in range(RESENDS):
            try:
                return await _once(request())
            except HttpError as exc:
                if not _never_reached_server(exc):
                    raise
                # Nothing reached the server: again at once, on another connection; past
                # RESENDS, the caller's retry rules decide (with backoff, counted).
                self.resent_unprocessed += 1
                log.debug("sending again a request that never reached the server: %s", exc)
        return await _once(request())

    async def close(self) -> None:
        await self._client.close()


class _Build(Protocol):
    def __call__(self) -> RequestBuilder: ...


async def _once(builder: RequestBuilder) -> Response:
    try:
        answer = await builder.build().send()
        body = await answer.bytes()
    except rq.RequestTimeoutError as exc:
        raise HttpTimeoutError(_describe(exc)) from exc
    except rq.NetworkError as exc:
        raise HttpConnectionError(_describe(exc)) from exc
    except rq.BuilderError:
        raise  # a URL that is not http(s): a bug, not a transient fault
    except rq.RequestError as exc:
        # Decode errors (an answer that is not HTTP), a client closed meanwhile, the rest.
        raise HttpProtocolError(_describe(exc)) from exc
    return Response(answer.status, answer.headers, body.to_bytes(), answer.version)


def _never_reached_server(exc: HttpError) -> bool:
    details = getattr(exc.__cause__, "details", None) or {}
    return any(c.get("message", "").endswith(_UNPROCESSED) for c in details.get("causes") or ())


def _describe(exc: rq.RequestError) -> str:
    """The innermost causes (``Connection refused (os error 111)``), not the URL: it may carry
    an app's identifiers, and the caller names the request already."""
    causes = [c["message"] for c in (exc.details.get("causes") or ())
              if not c["message"].startswith("error sending request")]
    return ": ".join([exc.message, *causes[-2:]]) if causes else exc.message
