"""Quorum queues keep callbacks across a broker node restart. On a RabbitMQ node of the test's
own (``tests/rabbit_node.py``; never the shared one on 5672): callbacks queued through the
ingress are all still there after the node stops and starts again; then, with a worker
consuming, the node restarts once more in the middle of the replies, and every callback is
still answered exactly once."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.helpers import generated, inbound_depth, muid_counts, post_all, wait_for
from tests.rabbit_node import rabbit_node

pytestmark = pytest.mark.integration

QUEUED = 300


async def _ready(url: str, timeout: float = 60.0) -> bool:
    """Whether the ingress's /readyz answers 200 within ``timeout`` (it reconnects on its own)."""
    stop_at = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < stop_at:
            async with session.get(f"{url}/readyz") as resp:
                if resp.status == 200:
                    return True
            await asyncio.sleep(0.2)
    return False


async def _restart(node) -> float:  # type: ignore[no-untyped-def]
    """Stop the node cleanly and start it again (same name, same data); seconds it was away."""
    started = time.monotonic()
    await asyncio.to_thread(node.stop)
    assert not node.alive
    node.start()
    await asyncio.to_thread(node.wait)
    return time.monotonic() - started


async def test_quorum_queues_keep_callbacks_across_a_node_restart(
        make_settings, start_ingress, fake_api, redis_url, redis_client):
    with rabbit_node() as node:
        settings = make_settings(amqp_url=node.url, redis_url=redis_url, dedup_lease=15.0)
        ingress = await start_ingress(settings)
        first = generated(QUEUED, start=700_000)
        assert set(await post_all(f"{ingress.url}/callback", first)) == {200}
        assert await inbound_depth(settings) == QUEUED

        away = await _restart(node)
        kept = await inbound_depth(settings)
        print(f"node restarted in {away:.1f}s; {kept} of {QUEUED} callbacks still queued")
        assert kept == QUEUED

        # The ingress reconnects by itself and takes callbacks again.
        assert await _ready(ingress.url)
        second = generated(QUEUED, start=800_000)
        fake_api.fake.config.latency = 0.02  # replies take a while: the restart hits them
        async with Worker(settings, bot) as worker:
            assert set(await post_all(f"{ingress.url}/callback", second)) == {200}
            assert await wait_for(lambda: len(fake_api.fake.replies) >= 50, timeout=30)
            during = len(fake_api.fake.replies)
            away = await _restart(node)
            assert await wait_for(lambda: len(muid_counts(fake_api.fake)) >= 2 * QUEUED,
                                  timeout=90, interval=0.2)
            await asyncio.wait_for(worker.until_idle(), 30)
            await asyncio.sleep(0.5)  # nothing more may arrive
        print(f"second restart after {during} replies, away {away:.1f}s; "
              f"{len(fake_api.fake.replies)} replies for {2 * QUEUED} callbacks")
    counts = muid_counts(fake_api.fake)
    assert len(counts) == 2 * QUEUED
    assert set(counts.values()) == {1}, [m for m, n in counts.items() if n > 1][:5]
