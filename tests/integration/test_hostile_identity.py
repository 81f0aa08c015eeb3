"""A callback's identity fields never decide where a reply or a key goes.

Hostile ``appId``, ``region`` and ``bot`` values (a host, a port, userinfo, a path, a query, a
fragment, spaces, non-ASCII, empty, 300 characters, another app) are answered 4xx by the ingress
with nothing published. The same callbacks published straight to the inbound queue (a replay, an
old queue, another publisher) are dead-lettered by the worker as permanent, and a listener on
127.0.0.1, which the old URL formatting would have reached, sees no connection at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest

from botrelay.shared import topology
from botrelay.shared.broker import make_message
from botrelay.shared.headers import ATTEMPT, CONVERSATION, ERROR_KIND
from botrelay.shared.settings import DEFAULT_API_BASE
from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.helpers import text_callback, wait_for

pytestmark = pytest.mark.integration

APP = "2248348660ad9bd4"


class Listener:
    """A TCP server on 127.0.0.1 that counts the connections it gets (and answers none)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.sock.close()


def hostile_values(port: int) -> list[tuple[str, str]]:
    """(field, value) pairs; each would, formatted into the default reply base, send the
    request (and the key) to the listener or somewhere else that is not the app's API."""
    here = f"127.0.0.1:{port}"
    values = [
        ("appId", f"{here}/x?"),
        ("appId", "evil.example/x?"),
        ("appId", f"user:pw@{here}#"),
        ("appId", "a b"),
        ("appId", "äpp"),
        ("appId", ""),
        ("appId", "a" * 300),
        ("appId", "a#frag"),
        ("appId", "a?q=1"),
        ("appId", "0ther4pp"),  # well-formed, but not an app this deployment serves
        ("region", f"x@{here}/"),
        ("region", "us/../../x"),
        ("region", "us "),
        ("region", "ü"),
        ("region", "r" * 300),
        ("bot", f"../../{here}"),
        ("bot", "bot?x=1"),
        ("bot", "bot#x"),
        ("bot", "b o t"),
        ("bot", "bøt"),
        ("bot", "b" * 300),
        ("bot", ""),
    ]
    return values


def hostile_callbacks(port: int) -> list[dict[str, Any]]:
    docs = []
    for i, (field, value) in enumerate(hostile_values(port)):
        doc = text_callback(f"{900 + i}", "hi")
        doc[field] = value
        docs.append(doc)
    return docs


async def inbound_total(settings: Any) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        total = 0
        for name in topology.inbound_queues(settings):
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                queue = await channel.declare_queue(name, passive=True)
                total += queue.declaration_result.message_count or 0
        return total


async def test_the_ingress_refuses_hostile_identities_and_publishes_nothing(
        make_settings, start_ingress, listener) -> None:
    settings = make_settings(cometchat_api_base=DEFAULT_API_BASE)
    ingress = await start_ingress(settings)
    answers = []
    async with aiohttp.ClientSession() as session:
        for doc in hostile_callbacks(listener.port):
            async with session.post(f"{ingress.url}/callback", data=orjson.dumps(doc),
                                    headers={"Content-Type": "application/json"}) as resp:
                body = await resp.json()
                answers.append((resp.status, body))
    for (status, body), (field, value) in zip(answers, hostile_values(listener.port),
                                              strict=True):
        expected = 403 if value == "0ther4pp" else 400
        assert status == expected, (field, value, status, body)
        assert body["error"] and body["detail"], body
        if status == 400:
            assert field in body["detail"], body
    assert await inbound_total(settings) == 0
    assert listener.connections() == 0


async def test_the_worker_dead_letters_them_and_connects_nowhere(make_settings, fake_api,
                                                                  listener) -> None:
    settings = make_settings(cometchat_api_base=DEFAULT_API_BASE, max_attempts=2)
    docs = hostile_callbacks(listener.port)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection, Worker(settings, bot):
        channel = await connection.channel(publisher_confirms=True)
        exchange = await topology.declare(channel, settings)
        for i, doc in enumerate(docs):
            message = make_message(orjson.dumps(doc), message_id=f"hostile-{i}",
                                   headers={ATTEMPT: 1, CONVERSATION: f"c{i}"})
            await exchange.publish(message, topology.INBOUND_KEY)
        dead = await channel.declare_queue(topology.dead_queue(settings.prefix), passive=True)
        letters: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def collect() -> bool:
            message = await dead.get(fail=False)
            if message is not None:
                await message.ack()
                letters.append(message)
            return len(letters) == len(docs)

        for _ in range(400):  # 20 s at most
            if await collect():
                break
            await asyncio.sleep(0.05)
    assert len(letters) == len(docs)
    assert {m.headers.get(ERROR_KIND) for m in letters} == {"permanent"}
    assert listener.connections() == 0
    assert fake_api.fake.requests == 0


async def test_a_reply_goes_to_the_configured_app_only(make_settings, fake_api, start_ingress
                                                       ) -> None:
    """The positive side: the configured app's callbacks are answered through its own base,
    with its key, whatever the callback's region says."""
    settings = make_settings()
    ingress = await start_ingress(settings)
    doc = text_callback("777", "hi")
    doc["region"] = "eu"
    async with Worker(settings, bot), aiohttp.ClientSession() as session:
        async with session.post(f"{ingress.url}/callback", data=orjson.dumps(doc),
                                headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200, await resp.text()
        await wait_for(lambda: len(fake_api.fake.replies) == 1, timeout=10)
    [reply] = fake_api.fake.replies
    assert reply.apikey == "test-api-key"
    assert reply.path == f"/{APP}/v3/bots/demo_bot/messages"
