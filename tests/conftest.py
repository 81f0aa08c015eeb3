"""Shared fixtures. Integration tests get a fresh prefix each, and everything made under it
(queues, exchanges, Redis keys) is deleted afterwards, so tests never see each other."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aio_pika
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from botrelay.ingress.app import make_app, make_metrics_app
from botrelay.shared import topology
from botrelay.shared.fake_cometchat import RunningFake
from botrelay.shared.settings import Settings
from tests import services


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    try:
        yield services.amqp_url()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    finally:
        services.stop_containers()


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        return services.redis_url()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def fake_api() -> AsyncIterator[RunningFake]:
    async with RunningFake() as fake:
        yield fake


@pytest.fixture
async def make_settings(amqp_url: str, prefix: str, fake_api: RunningFake
                        ) -> AsyncIterator[Callable[..., Settings]]:
    """Settings for this test's prefix and fake API; every topology made is deleted after."""
    made: list[Settings] = []

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "amqp_url": amqp_url,
            "prefix": prefix,
            "cometchat_api_base": fake_api.base,
            "cometchat_api_key": "test-api-key",
            # The app of every fixture payload (tests/fixtures/cometchat).
            "cometchat_app_id": "2248348660ad9bd4",
            # Open on purpose, as `botrelay dev` is; tests of the auth set their own pairs.
            "callback_auth": "none",
            "retry_delays": (0.2, 0.5),
            "max_attempts": 3,
            "reply_timeout": 1.0,
            "reply_budget": 2.0,
            "handler_timeout": 2.0,
            "dedup_lease": 5.0,
            "shutdown_grace": 5.0,
            "uvloop": False,
            "partitions": 4,  # fewer queues to declare and delete per test
        }
        values.update(overrides)
        if values.get("callback_username") and "callback_auth" not in overrides:
            values["callback_auth"] = "basic"
        settings = Settings(**values)
        settings.check()
        made.append(settings)
        return settings

    yield build
    if made:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            for settings in made:
                channel = await connection.channel()
                with contextlib.suppress(Exception):
                    await topology.delete(channel, settings)
                with contextlib.suppress(Exception):
                    await channel.close()


@pytest.fixture
async def redis_client(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


class RunningIngress:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.runner = web.AppRunner(app, access_log=None)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RunningIngress:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def start_ingress() -> AsyncIterator[Callable[..., Any]]:
    """``await start_ingress(settings)``: an ingress on a free port, connected to the broker."""
    running: list[RunningIngress] = []

    async def start(settings: Settings, wait_for_broker: bool = True) -> RunningIngress:
        ingress = await RunningIngress(make_app(settings, wait_for_broker=wait_for_broker)
                                       ).start()
        running.append(ingress)
        return ingress

    yield start
    for ingress in running:
        await ingress.stop()


@pytest.fixture
async def ingress_metrics_url() -> AsyncIterator[Callable[..., Any]]:
    """``await ingress_metrics_url(ingress)``: the URL of ``GET /metrics`` for a running ingress,
    served apart from its callback port as ``botrelay ingress`` does."""
    running: list[RunningIngress] = []

    async def start(ingress: RunningIngress) -> str:
        server = await RunningIngress(make_metrics_app(ingress.app)).start()
        running.append(server)
        return f"{server.url}/metrics"

    yield start
    for server in running:
        await server.stop()
