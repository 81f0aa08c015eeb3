"""RabbitMQ's connections cut in the middle of a stream of callbacks, then refused for a while,
then back: the worker reconnects and resumes consuming, and every accepted callback is answered
exactly once. Each test runs twice: without a spool the ingress answers 503 meanwhile (the
sender re-posts); with ``BOTRELAY_SPOOL_DIR`` it answers 200 "spooled" and nobody re-posts.
The long outage with a sender that never re-posts is in ``test_spool_outage.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from botrelay.ingress.state import STATE
from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.chaos.stream import Stream, queue_report, run_with_fault

pytestmark = pytest.mark.chaos

SPOOL = pytest.mark.parametrize("spool", [False, True], ids=["no-spool", "spool"])


def spool_dir(spool: bool, tmp_path: Path) -> str | None:
    return str(tmp_path / "spool") if spool else None


def check_reposts(stream: Stream, spool: bool, ingress: Any) -> None:
    """The fault hit the stream: re-posts after 503s without a spool; with one, callbacks
    spooled and no re-post."""
    if spool:
        assert stream.retries == 0 and set(stream.seen) == {200}, stream.seen
        registry = ingress.app[STATE].metrics.registry
        spooled = sum(registry.get_sample_value("botrelay_spool_spooled_total", {"reason": r})
                      or 0 for r in ("broker_down", "timeout", "backlog"))
        assert spooled > 0, "the fault did not reach the spool"
    else:
        assert stream.retries > 0, "the fault did not hit the stream"


async def readyz(base: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/readyz") as resp:
        return resp.status


@SPOOL
async def test_broker_connections_cut_during_a_stream(make_settings, start_ingress, fake_api,
                                                      amqp_proxy, amqp_url, redis_url, redis_client,
                                                      spool, tmp_path) -> None:
    proxy, proxied_url = amqp_proxy
    settings = make_settings(amqp_url=proxied_url, redis_url=redis_url, publish_timeout=1.0,
                             spool_dir=spool_dir(spool, tmp_path))
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
        figures = await run_with_fault(
            "rabbitmq: all connections cut, 3s refused" + (", spool" if spool else ""), stream,
            fake_api.fake, fault, note="ingress+worker via proxy")
        await asyncio.wait_for(worker.until_idle(), 30)
        ready.append(await readyz(ingress.url))
        queues = await queue_report(amqp_url, settings)
    # Without a spool readiness follows the broker connection; a spool with room takes
    # callbacks, so the ingress stays in the load balancer.
    assert ready == ([200, 200] if spool else [503, 200])
    check_reposts(stream, spool, ingress)
    assert figures.accepted == figures.sent
    assert figures.lost == 0, queues
    assert figures.duplicated == 0


@SPOOL
async def test_broker_cut_twice_in_quick_succession(make_settings, start_ingress, fake_api,
                                                    amqp_proxy, amqp_url, redis_url, redis_client,
                                                    spool, tmp_path) -> None:
    proxy, proxied_url = amqp_proxy
    settings = make_settings(amqp_url=proxied_url, redis_url=redis_url, publish_timeout=1.0,
                             spool_dir=spool_dir(spool, tmp_path))
    ingress = await start_ingress(settings)
    stream = Stream(f"{ingress.url}/callback", 300, interval=0.01)

    async def fault() -> None:
        for _ in range(2):
            await asyncio.sleep(1.0)
            await proxy.cut()
            await asyncio.sleep(0.5)
            proxy.heal()

    async with Worker(settings, bot) as worker:
        figures = await run_with_fault(
            "rabbitmq: cut twice, 0.5s refused each" + (", spool" if spool else ""), stream,
            fake_api.fake, fault, note="reconnect during recovery")
        await asyncio.wait_for(worker.until_idle(), 30)
        queues = await queue_report(amqp_url, settings)
    if spool:
        check_reposts(stream, spool, ingress)
    assert figures.lost == 0, queues
    assert figures.duplicated == 0


@SPOOL
async def test_broker_black_hole_during_a_stream(make_settings, start_ingress, fake_api,
                                                 amqp_proxy, amqp_url, redis_url, redis_client,
                                                 spool, tmp_path) -> None:
    """No reset, no answer for 4 s (shorter than the heartbeat): publishes get no confirm, so
    the ingress answers 503 and the sender re-posts, or spools them. What was held back arrives
    late: then a spooled callback was published too, and the worker's dedup answers it once."""
    proxy, proxied_url = amqp_proxy
    settings = make_settings(amqp_url=proxied_url, redis_url=redis_url, publish_timeout=1.0,
                             spool_dir=spool_dir(spool, tmp_path))
    ingress = await start_ingress(settings)
    stream = Stream(f"{ingress.url}/callback", 300, interval=0.01)

    async def fault() -> None:
        await asyncio.sleep(1.0)
        proxy.stall()
        await asyncio.sleep(4.0)
        proxy.heal()

    async with Worker(settings, bot) as worker:
        figures = await run_with_fault(
            "rabbitmq: black hole for 4s" + (", spool" if spool else ""), stream, fake_api.fake,
            fault, note="confirms time out: " + ("spooled" if spool else "503, re-posted"))
        await asyncio.wait_for(worker.until_idle(), 30)
        queues = await queue_report(amqp_url, settings)
    check_reposts(stream, spool, ingress)
    assert figures.lost == 0, queues
    assert figures.duplicated == 0
