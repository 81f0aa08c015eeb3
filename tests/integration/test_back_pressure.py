"""Back-pressure: a full inbound queue rejects publishes, and the ingress answers 503 with
Retry-After (the sender keeps the callback) instead of letting the backlog grow without bound."""

from __future__ import annotations

import asyncio

import aio_pika
import aiohttp
import orjson
import pytest

from botrelay.ingress.state import STATE
from botrelay.shared import topology
from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.helpers import generated, muid_counts, post_all, wait_for

pytestmark = pytest.mark.integration


async def inbound_depth(amqp_url: str, settings) -> int:  # type: ignore[no-untyped-def]
    side = {topology.dead_queue(settings.prefix)} | {
        topology.retry_queue(settings.prefix, d) for d in settings.retry_delays}
    total = 0
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in topology.all_queue_names(settings):
            if name not in side:
                queue = await channel.declare_queue(name, passive=True)
                total += queue.declaration_result.message_count or 0
    return total


async def test_a_full_inbound_queue_makes_the_ingress_answer_503(
        make_settings, start_ingress, fake_api, amqp_url):
    settings = make_settings(inbound_max_length=3)
    ingress = await start_ingress(settings)
    docs = generated(60, users=60)
    answers: list[tuple[int, str | None]] = []
    async with aiohttp.ClientSession() as session:
        for doc in docs:  # one at a time: the order in which the queue fills is the send order
            async with session.post(f"{ingress.url}/callback", data=orjson.dumps(doc),
                                    headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                answers.append((resp.status, resp.headers.get("Retry-After")))

    accepted = [i for i, (status, _) in enumerate(answers) if status == 200]
    refused = [i for i, (status, _) in enumerate(answers) if status == 503]
    assert accepted and refused and len(accepted) + len(refused) == len(docs)
    assert all(answers[i][1] and float(answers[i][1]) > 0 for i in refused)  # type: ignore[arg-type]
    # Nothing beyond the limit was kept: what the broker holds is exactly what was accepted.
    assert await inbound_depth(amqp_url, settings) == len(accepted)
    callbacks = ingress.app[STATE].metrics.callbacks
    assert callbacks.labels("unavailable", "queue_full")._value.get() == len(refused)

    # Once a worker drains the queue, the sender's retries get through: all answered, once.
    async with Worker(settings, bot) as worker:
        statuses = await post_all(f"{ingress.url}/callback", [docs[i] for i in refused],
                                  concurrency=1, deadline=45)
        assert set(statuses) == {200}
        assert await wait_for(lambda: len(fake_api.fake.replies) >= len(docs), timeout=30)
        await asyncio.wait_for(worker.until_idle(), 20)
    counts = muid_counts(fake_api.fake)
    assert len(counts) == len(docs) and set(counts.values()) == {1}
