"""``worker.http_pool``: answers whole however they are framed, connections reused only when
that is safe, every failure an ``HttpError``; on the default loop and on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop

from botrelay.worker.http_pool import HttpConnectionError, HttpPool, HttpProtocolError

Reply = Callable[[bytes], Awaitable[bytes | None]]


class RawServer:
    """Reads one request at a time off each connection and answers with what ``reply`` gives
    (None: close without answering)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[bytes] = []
        self.close_after_answer = False
        self.server: asyncio.AbstractServer | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = await self.reply(request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v3/bots/b1/messages?x=1"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[None]], None]:
    """Runs a scenario on the default event loop, then on uvloop (what workers run)."""
    runner = uvloop.run if request.param == "uvloop" else asyncio.run
    return lambda scenario: runner(scenario)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serve(reply: Reply) -> AsyncIterator[RawServer]:
    raw = RawServer(reply)
    raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    try:
        yield raw
    finally:
        raw.server.close()


def ok(body: bytes = b'{"data":{"id":"1"}}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


def test_requests_reuse_one_kept_alive_connection(run):
    async def scenario() -> None:
        async def reply(_: bytes) -> bytes:
            return ok()

        async with serve(reply) as raw:
            pool = HttpPool(headers={"apikey": "k", "Content-Type": "application/json"})
            for i in range(5):
                response = await pool.post(raw.url, b'{"n":%d}' % i)
                assert (response.status, response.body) == (200, b'{"data":{"id":"1"}}')
            assert raw.connections == 1
            first = raw.requests[0]
            assert first.startswith(b"POST /v3/bots/b1/messages?x=1 HTTP/1.1\r\n")
            assert b"\r\nHost: 127.0.0.1:" in first and b"\r\napikey: k\r\n" in first
            assert first.endswith(b'\r\n\r\n{"n":0}')
            await pool.close()

    run(scenario())


def test_concurrent_requests_open_connections_up_to_the_limit(run):
    async def scenario() -> None:
        async def reply(_: bytes) -> bytes:
            await asyncio.sleep(0.05)
            return ok()

        async with serve(reply) as raw:
            pool = HttpPool(limit=3)
            answers = await asyncio.gather(*(pool.post(raw.url, b"{}") for _ in range(9)))
            assert [a.status for a in answers] == [200] * 9
            assert raw.connections == 3
            await pool.close()

    run(scenario())


def test_a_chunked_answer_and_its_headers_arrive_whole(run):
    async def scenario() -> None:
        async def reply(_: bytes) -> bytes:
            return (b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\n"
                    b"Retry-After: 7\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n")

        async with serve(reply) as raw:
            pool = HttpPool()
            response = await pool.post(raw.url, b"{}")
            assert (response.status, response.body) == (429, b'{"a":1}')
            assert response.headers.get("Retry-After") == "7" == response.headers.get("retry-after")
            await pool.close()

    run(scenario())


def test_connection_close_is_honoured(run):
    async def scenario() -> None:
        async def reply(_: bytes) -> bytes:
            return ok(extra=b"Connection: close\r\n")

        async with serve(reply) as raw:
            pool = HttpPool()
            for _ in range(3):
                assert (await pool.post(raw.url, b"{}")).status == 200
            assert raw.connections == 3
            await pool.close()

    run(scenario())


def test_a_connection_cut_before_the_answer_is_a_connection_error(run):
    async def scenario() -> None:
        async def reply(_: bytes) -> None:
            return None

        async with serve(reply) as raw:
            pool = HttpPool()
            with pytest.raises(HttpConnectionError):
                await pool.post(raw.url, b"{}")
            await pool.close()

    run(scenario())


def test_an_answer_that_is_not_http_is_a_protocol_error(run):
    async def scenario() -> None:
        async def reply(_: bytes) -> bytes:
            return b"\x00\x01 garbage garbage\r\n\r\n"

        async with serve(reply) as raw:
            pool = HttpPool()
            with pytest.raises(HttpProtocolError):
                await pool.post(raw.url, b"{}")
            await pool.close()

    run(scenario())


def test_nobody_listening_is_a_connection_error(run):
    async def scenario() -> None:
        pool = HttpPool(connect_timeout=1.0)
        with pytest.raises(HttpConnectionError):
            await pool.post("http://127.0.0.1:1/x", b"{}")
        await pool.close()

    run(scenario())


def test_a_request_given_up_on_never_lends_its_connection_again(run):
    async def scenario() -> None:
        calls = 0

        async def reply(_: bytes) -> bytes:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.sleep(0.5)  # answers after the caller gave up
            return ok(body=b'{"n":%d}' % calls)

        async with serve(reply) as raw:
            pool = HttpPool()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await pool.post(raw.url, b"{}")
            response = await pool.post(raw.url, b"{}")
            assert response.body == b'{"n":2}'  # not the late answer to the first request
            assert raw.connections == 2
            await pool.close()

    run(scenario())


def test_an_idle_connection_the_server_closed_is_not_reused(run):
    async def scenario() -> None:
        async def reply(_: bytes) -> bytes:
            return ok()

        async with serve(reply) as raw:
            raw.close_after_answer = True  # keep-alive promised, then closed while idle
            pool = HttpPool()
            for _ in range(3):
                assert (await pool.post(raw.url, b"{}")).status == 200
                await asyncio.sleep(0.05)  # the close reaches the pool while the connection is idle
            assert raw.connections == 3
            await pool.close()

    run(scenario())


def test_https_with_a_verified_certificate(run, tmp_path):
    """The reply API is HTTPS in production: the server's certificate is checked against the
    context's CAs (the system's by default) and the host name."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)

    async def scenario() -> None:
        server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_side.load_cert_chain(cert, key)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(ok())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_side)
        port = server.sockets[0].getsockname()[1]
        try:
            trusted = ssl.create_default_context(cafile=str(cert))
            pool = HttpPool(ssl_context=trusted)
            response = await pool.post(f"https://localhost:{port}/v3/bots/b/messages", b"{}")
            assert response.status == 200
            await pool.close()
            # The system's CAs do not know this certificate: refused, as a connection error.
            strict = HttpPool()
            with pytest.raises(HttpConnectionError):
                await strict.post(f"https://localhost:{port}/v3/bots/b/messages", b"{}")
            await strict.close()
        finally:
            server.close()

    run(scenario())


def test_idle_connections_expire_and_are_capped_over_all_origins(run):
    async def scenario() -> None:
        async def reply(_: bytes) -> bytes:
            return ok()

        async with serve(reply) as first, serve(reply) as second:
            # Past the keep-alive time an idle connection is closed, not reused.
            pool = HttpPool(keepalive=0.05)
            await pool.post(first.url, b"{}")
            await asyncio.sleep(0.1)
            await pool.post(first.url, b"{}")
            assert first.connections == 2
            await pool.close()
            # One idle connection at most, over both origins: the older one goes.
            pool = HttpPool(max_idle=1)
            await pool.post(first.url, b"{}")
            await pool.post(second.url, b"{}")
            await pool.post(second.url, b"{}")  # reuses its own
            await pool.post(first.url, b"{}")  # its idle one was closed to make room
            assert (first.connections, second.connections) == (4, 1)
            await pool.close()

    run(scenario())
