"""The node list's rotation: every lost connection or failed attempt moves to the next node,
round robin, each node keeping its own scheme (``amqps://`` for TLS)."""

from __future__ import annotations

import asyncio

import pytest
from aiormq.exceptions import AMQPConnectionError
from redis.asyncio.sentinel import SentinelManagedSSLConnection

from botrelay.shared.amqp_nodes import NodeListConnection, connect_nodes
from botrelay.shared.redis_connect import make_redis
from botrelay.shared.settings import Settings
from tests.integration.processes import free_port


async def _lost(connection: NodeListConnection) -> None:
    closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    closing.set_exception(ConnectionError("node died"))
    await connection._on_connection_close(closing)


async def test_each_loss_moves_to_the_next_node() -> None:
    connection = NodeListConnection(["amqp://u:p@a:5672/", "amqps://u:p@b:5671/",
                                     "amqp://u:p@c:5672/"])
    seen = [connection.url]
    for _ in range(3):
        await _lost(connection)
        seen.append(connection.url)
    assert [(u.scheme, u.host) for u in seen] == [
        ("amqp", "a"), ("amqps", "b"), ("amqp", "c"), ("amqp", "a")]


async def test_no_rotation_once_closed() -> None:
    connection = NodeListConnection(["amqp://a/", "amqp://b/"])
    await connection.close()
    await _lost(connection)
    assert connection.url.host == "a"


async def test_no_node_answers_raises_the_last_error() -> None:
    urls = [f"amqp://guest:guest@127.0.0.1:{free_port()}/" for _ in range(2)]
    with pytest.raises((OSError, AMQPConnectionError)):  # refused, as aiormq or the OS says
        await connect_nodes(urls, timeout=1.0)


def test_sentinel_with_rediss_speaks_tls_to_the_primary() -> None:
    settings = Settings(redis_sentinels=(("127.0.0.1", 26379),), redis_sentinel_master="m",
                        redis_url="rediss://:pw@ignored/0")
    client = make_redis(settings)
    assert client.connection_pool.connection_class is SentinelManagedSSLConnection
