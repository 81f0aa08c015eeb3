"""``worker.http_client``: whole answers however they are framed, connections reused only when
that is safe, a request re-sent by the client only when it never reached the server, every
failure an ``HttpError``; on the default loop and on uvloop (what workers run)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop

from botrelay.worker.http_client import (
    RESENDS,
    HttpClient,
    HttpConnectionError,
    HttpProtocolError,
    HttpTimeoutError,
)

Reply = Callable[[bytes], Awaitable[bytes | None]]


class RawServer:
    """Reads one request at a time off each connection and answers with what ``reply`` gives
    (None: reset the connection without answering)."""

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
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = await self.reply(request)
                if answer is None:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    writer.transport.abort()
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer or b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v3/bots/b1/messages?x=1"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[None]], None]:
    runner = uvloop.run if request.param == "uvloop" else asyncio.run
    return lambda scenario: runner(scenario)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serve(reply: Reply, host: str = "127.0.0.1") -> AsyncIterator[RawServer]:
    raw = RawServer(reply)
    raw.server = await asyncio.start_server(raw.handle, host, 0)
    try:
        yield raw
    finally:
        raw.server.close()


def ok(body: bytes = b'{"data":{"id":"1"}}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


def answering(answer: bytes) -> Reply:
    async def reply(_: bytes) -> bytes:
        return answer

    return reply


def test_requests_reuse_one_kept_alive_connection(run):
    async def scenario() -> None:
        async with serve(answering(ok())) as raw:
            client = HttpClient(headers={"apikey": "k", "User-Agent": "botrelay-test"})
            for i in range(5):
                response = await client.post(raw.url, b'{"n":%d}' % i)
                assert (response.status, response.body) == (200, b'{"data":{"id":"1"}}')
            assert raw.connections == 1
            first = raw.requests[0].lower()
            assert first.startswith(b"post /v3/bots/b1/messages?x=1 http/1.1\r\n")
            assert f"\r\nhost: 127.0.0.1:{raw.port}\r\n".encode() in first
            assert b"\r\napikey: k\r\n" in first and b"\r\nuser-agent: botrelay-test\r\n" in first
            assert first.endswith(b'\r\n\r\n{"n":0}')
            await client.close()

    run(scenario())


@pytest.mark.parametrize("answer", [
    ok(b'{"data":{"id":"7"}}'),
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\n{\"dat\r\nb\r\na\":{\"id\":\"7\r\n3\r\n\"}}\r\n0\r\n\r\n",
    # No length, no chunks: the answer ends when the server closes the connection.
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" b'{"data":{"id":"7"}}',
    # An interim answer is not the final one.
    b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b'{"data":{"id":"7"}}'),
], ids=["content-length", "chunked", "close-delimited", "interim-1xx"])
def test_every_framing_arrives_whole(run, answer: bytes):
    async def scenario() -> None:
        async with serve(answering(answer)) as raw:
            client = HttpClient()
            for _ in range(3):
                response = await client.post(raw.url, b"{}")
                assert (response.status, response.body) == (200, b'{"data":{"id":"7"}}')
            assert len(raw.requests) == 3  # each sent once, whatever the framing
            await client.close()

    run(scenario())


def test_repeated_headers_are_kept_and_names_are_case_insensitive(run):
    answer = ok(extra=b"Retry-After: 3\r\nX-Tag: a\r\nX-Tag: b\r\n")

    async def scenario() -> None:
        async with serve(answering(answer)) as raw:
            client = HttpClient()
            response = await client.post(raw.url, b"{}")
            assert response.headers.get("retry-after") == "3"
            assert response.headers.getall("x-tag") == ["a", "b"]
            await client.close()

    run(scenario())


def test_a_non_latin1_path_is_percent_encoded(run):
    async def scenario() -> None:
        async with serve(answering(ok())) as raw:
            client = HttpClient()
            response = await client.post(f"http://127.0.0.1:{raw.port}/v3/bots/бот/messages",
                                         b"{}")
            assert response.status == 200
            assert raw.requests[0].startswith(
                b"POST /v3/bots/%D0%B1%D0%BE%D1%82/messages HTTP/1.1\r\n")
            await client.close()

    run(scenario())


def test_an_ipv6_host_header_is_bracketed(run):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")

    async def scenario() -> None:
        try:
            server = serve(answering(ok()), host="::1")
            raw = await server.__aenter__()
        except OSError as exc:
            pytest.skip(f"cannot listen on ::1: {exc}")
        try:
            client = HttpClient()
            assert (await client.post(f"http://[::1]:{raw.port}/x", b"{}")).status == 200
            assert f"\r\nhost: [::1]:{raw.port}\r\n".encode() in raw.requests[0].lower()
            await client.close()
        finally:
            await server.__aexit__(None, None, None)

    run(scenario())


def test_redirects_are_answers_not_followed(run):
    answer = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"

    async def scenario() -> None:
        async with serve(answering(answer)) as raw:
            client = HttpClient()
            response = await client.post(raw.url, b"{}")
            assert response.status == 307
            assert len(raw.requests) == 1
            await client.close()

    run(scenario())


def test_a_connection_the_server_closed_while_idle_is_not_used(run):
    """The server closes each connection after its answer, as a keep-alive timeout does: the
    next request goes on a new connection, sent once, with no error."""
    async def scenario() -> None:
        async with serve(answering(ok())) as raw:
            raw.close_after_answer = True
            client = HttpClient()
            for _ in range(4):
                assert (await client.post(raw.url, b"{}")).status == 200
                await asyncio.sleep(0.02)
            assert (raw.connections, len(raw.requests)) == (4, 4)
            assert client.resent_unprocessed == 0
            await client.close()

    run(scenario())


def test_a_reset_after_the_request_arrived_is_raised_not_resent(run):
    async def reply(_: bytes) -> None:
        return None

    async def scenario() -> None:
        async with serve(reply) as raw:
            client = HttpClient()
            with pytest.raises(HttpConnectionError):
                await client.post(raw.url, b"{}")
            assert len(raw.requests) == 1  # the server may have acted on it: never re-sent
            assert client.resent_unprocessed == 0
            await client.close()

    run(scenario())


def test_a_refused_connection_is_tried_again_a_few_times_then_raised(run):
    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        client = HttpClient(connect_timeout=1.0)
        with pytest.raises(HttpConnectionError, match="refused"):
            await client.post(f"http://127.0.0.1:{port}/x", b"{}")
        assert client.resent_unprocessed == RESENDS
        await client.close()

    run(scenario())


def test_an_answer_that_is_not_http_is_a_protocol_error(run):
    async def scenario() -> None:
        async with serve(answering(b"\x00\xffHTTP/9.9 OK?\r\n\r\n<html>")) as raw:
            raw.close_after_answer = True
            client = HttpClient()
            with pytest.raises(HttpProtocolError):
                await client.post(raw.url, b"{}")
            assert len(raw.requests) == 1
            await client.close()

    run(scenario())


def test_no_answer_within_the_read_timeout(run):
    async def reply(_: bytes) -> bytes:
        await asyncio.sleep(5)
        return ok()

    async def scenario() -> None:
        async with serve(reply) as raw:
            client = HttpClient(read_timeout=0.2)
            with pytest.raises(HttpTimeoutError):
                await client.post(raw.url, b"{}")
            await client.close()

    run(scenario())


def test_a_cancelled_request_never_hands_its_answer_to_another(run):
    """The answer to a request given up on may still arrive on its connection: it is read and
    dropped there (hyper pairs answers with requests), never taken as the next request's."""
    async def reply(request: bytes) -> bytes:
        if request.endswith(b'"first"'):
            await asyncio.sleep(0.3)
            return ok(b'"late"')
        return ok(b'"second"')

    async def scenario() -> None:
        async with serve(reply) as raw:
            client = HttpClient()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await client.post(raw.url, b'"first"')
            await asyncio.sleep(0.5)  # the late answer has come and gone
            assert (await client.post(raw.url, b'"second"')).body == b'"second"'
            assert len(raw.requests) == 2
            await client.close()

    run(scenario())


def test_get_reads_an_answer(run):
    async def scenario() -> None:
        async with serve(answering(ok(b'{"data":[]}'))) as raw:
            client = HttpClient()
            response = await client.get(raw.url)
            assert (response.status, response.body) == (200, b'{"data":[]}')
            assert raw.requests[0].startswith(b"GET /v3/bots/b1/messages?x=1 HTTP/1.1\r\n")
            await client.close()

    run(scenario())
