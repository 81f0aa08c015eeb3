"""RabbitMQ's connections cut in the middle of a stream of callbacks, then refused for a while,
then back: the ingress answers 503 meanwhile (the sender re-posts), the worker reconnects and
resumes consuming, and every accepted callback is answered exactly once."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.chaos.stream import Stream, queue_report, run_with_fault

pytestmark = pytest.mark.chaos


async def readyz(base: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/readyz") as resp:
        return resp.status


async def test_broker_connections_cut_during_a_stream(make_settings, start_ingress, fake_api,
                                                      amqp_proxy, amqp_url, redis_url, redis_client
                                                      ) -> None:
    proxy, proxied_url = amqp_proxy
    settings = make_settings(amqp_url=proxied_url, redis_url=redis_url, publish_timeout=1.0)
    ingress = await start_ingress(settings)
    stream = Stream(f"{ingress.url}/callback", 400, interval=0.01)

    ready: list[int] = []

    async def fault() -> None:
        await asyncio.sleep(1.5)
        cut = await proxy.cut()
        print(f"cut {cut} broker connections; refusing for 3s")
        await asyncio.sleep(1.0)
        ready.append(await readyz(ingress.url))
        await asyncio.sleep(2.0)
        proxy.heal()

    async with Worker(settings, bot) as worker:
        figures = await run_with_fault("rabbitmq: all connections cut, 3s refused", stream,
                                       fake_api.fake, fault, note="ingress+worker via proxy")
        await asyncio.wait_for(worker.until_idle(), 30)
        ready.append(await readyz(ingress.url))
        queues = await queue_report(amqp_url, settings)
    assert ready == [503, 200], "readiness must follow the broker connection"
    assert stream.retries > 0, "the fault did not hit the stream"
    assert figures.accepted == figures.sent
    assert figures.lost == 0, queues
    assert figures.duplicated == 0


async def test_broker_cut_twice_in_quick_succession(make_settings, start_ingress, fake_api,
                                                    amqp_proxy, amqp_url, redis_url, redis_client
                                                    ) -> None:
    proxy, proxied_url = amqp_proxy
    settings = make_settings(amqp_url=proxied_url, redis_url=redis_url, publish_timeout=1.0)
    ingress = await start_ingress(settings)
    stream = Stream(f"{ingress.url}/callback", 300, interval=0.01)

    async def fault() -> None:
        for _ in range(2):
            await asyncio.sleep(1.0)
            await proxy.cut()
            await asyncio.sleep(0.5)
            proxy.heal()

    async with Worker(settings, bot) as worker:
        figures = await run_with_fault("rabbitmq: cut twice, 0.5s refused each", stream,
                                       fake_api.fake, fault, note="reconnect during recovery")
        await asyncio.wait_for(worker.until_idle(), 30)
        queues = await queue_report(amqp_url, settings)
    assert figures.lost == 0, queues
    assert figures.duplicated == 0


async def test_broker_black_hole_during_a_stream(make_settings, start_ingress, fake_api,
                                                 amqp_proxy, amqp_url, redis_url, redis_client
                                                 ) -> None:
    """No reset, no answer for 4 s (shorter than the heartbeat): publishes get no confirm, so
    the ingress answers 503 and the sender re-posts; what was held back arrives late."""
    proxy, proxied_url = amqp_proxy
    settings = make_settings(amqp_url=proxied_url, redis_url=redis_url, publish_timeout=1.0)
    ingress = await start_ingress(settings)
    stream = Stream(f"{ingress.url}/callback", 300, interval=0.01)

    async def fault() -> None:
        await asyncio.sleep(1.0)
        proxy.stall()
        await asyncio.sleep(4.0)
        proxy.heal()

    async with Worker(settings, bot) as worker:
        figures = await run_with_fault("rabbitmq: black hole for 4s", stream, fake_api.fake,
                                       fault, note="confirms time out: 503, re-posted")
        await asyncio.wait_for(worker.until_idle(), 30)
        queues = await queue_report(amqp_url, settings)
    assert stream.retries > 0
    assert figures.lost == 0, queues
    assert figures.duplicated == 0
