"""The worker's /healthz and /readyz: live while the process runs; ready only while it is
connected to the broker and not stopping (a worker finishing its deliveries after SIGTERM is
live and not ready)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from botrelay.worker.service import Worker
from tests.chaos.tcp_proxy import TCPProxy
from tests.helpers import post_all, text_callback, wait_for
from tests.integration.ops_bots import slow

pytestmark = pytest.mark.integration


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        await resp.read()
        return resp.status


async def test_worker_health_follows_the_broker_and_the_shutdown(make_settings, start_ingress,
                                                                 amqp_url, fake_api):
    host_port = amqp_url.rsplit("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    async with TCPProxy(host, int(port)) as proxy:
        proxied = amqp_url.replace(host_port, f"127.0.0.1:{proxy.port}")
        settings = make_settings(amqp_url=proxied, shutdown_grace=5.0, handler_timeout=5.0,
                                 dedup_lease=15.0)
        ingress = await start_ingress(make_settings(prefix=settings.prefix))
        worker = Worker(settings, slow)
        await worker.start()
        stopping: asyncio.Task[None] | None = None
        try:
            await worker.serve_metrics(0, "127.0.0.1")
            base = f"http://127.0.0.1:{worker.metrics_port}"
            async with aiohttp.ClientSession() as session:
                assert await _status(session, f"{base}/healthz") == 200
                assert await _status(session, f"{base}/readyz") == 200

                # The broker goes away: not ready, still live; back: ready again.
                await proxy.cut()
                assert await wait_for(lambda: not worker.broker.ready, timeout=10)
                assert await _status(session, f"{base}/readyz") == 503
                assert await _status(session, f"{base}/healthz") == 200
                proxy.heal()
                assert await wait_for(lambda: worker.broker.ready, timeout=20)
                assert await _status(session, f"{base}/readyz") == 200

                # Stopping with a delivery in flight: not ready while it finishes, still live.
                assert await post_all(f"{ingress.url}/callback",
                                      [text_callback("9101", "sleep 1.5 x")]) == [200]
                assert await wait_for(lambda: worker.consumer.in_flight > 0, timeout=10)
                stopping = asyncio.create_task(worker.stop())
                await asyncio.sleep(0.3)
                assert not stopping.done()
                assert await _status(session, f"{base}/readyz") == 503
                assert await _status(session, f"{base}/healthz") == 200
                await asyncio.wait_for(stopping, 10)
            assert len(fake_api.fake.replies) == 1  # the delivery in flight was finished
        finally:
            if stopping is None:
                await worker.stop()
