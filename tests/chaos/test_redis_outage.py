"""Redis (the dedup store) unreachable for a while. The worker must not send a reply it cannot
record: it delays the message instead, says so in its log and in
``botrelay_dedup_unavailable_total``, and once Redis is back every accepted callback is answered
exactly once, including the one whose reply went out just as Redis vanished."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from botrelay.shared.model import Message
from botrelay.worker import Bot
from botrelay.worker.service import Worker
from examples.echo_bot import bot as echo_bot
from tests.chaos.report import Figures, record
from tests.chaos.stream import Stream, queue_report, run_with_fault
from tests.helpers import post_all, text_callback, wait_for

pytestmark = pytest.mark.chaos


def dedup_unavailable(worker: Worker) -> float:
    value = worker.metrics.registry.get_sample_value("botrelay_dedup_unavailable_total")
    return value or 0.0


async def test_redis_unreachable_during_a_stream(make_settings, start_ingress, fake_api,
                                                 redis_proxy, redis_client, amqp_url, caplog
                                                 ) -> None:
    caplog.set_level(logging.WARNING, logger="botrelay")
    proxy, proxied_url = redis_proxy
    settings = make_settings(redis_url=proxied_url)
    ingress = await start_ingress(settings)
    stream = Stream(f"{ingress.url}/callback", 300, interval=0.012)

    async def fault() -> None:
        await asyncio.sleep(1.0)
        await proxy.cut()
        await asyncio.sleep(4.0)
        proxy.heal()

    async with Worker(settings, echo_bot) as worker:
        figures = await run_with_fault("redis: unreachable for 4s", stream, fake_api.fake,
                                       fault, note="worker's dedup via proxy")
        await asyncio.wait_for(worker.until_idle(), 30)
        delayed = dedup_unavailable(worker)
        queues = await queue_report(amqp_url, settings)
    figures.note += f"; {delayed:g} deliveries delayed"
    assert figures.lost == 0, queues
    assert figures.duplicated == 0
    assert delayed > 0, "the outage delayed nothing: the fault missed the stream"
    assert any("dedup store unavailable" in r.getMessage() for r in caplog.records)


async def test_redis_black_hole_during_a_stream(make_settings, start_ingress, fake_api,
                                                redis_proxy, redis_client, amqp_url) -> None:
    """No reset, no answer: every Redis call waits for its socket timeout (2 s), and what was
    held back is delivered late when the network returns."""
    proxy, proxied_url = redis_proxy
    settings = make_settings(redis_url=proxied_url)
    ingress = await start_ingress(settings)
    stream = Stream(f"{ingress.url}/callback", 200, interval=0.015)

    async def fault() -> None:
        await asyncio.sleep(1.0)
        proxy.stall()
        await asyncio.sleep(4.0)
        proxy.heal()

    async with Worker(settings, echo_bot) as worker:
        figures = await run_with_fault("redis: black hole for 4s", stream, fake_api.fake, fault,
                                       note="no answers, no resets")
        await asyncio.wait_for(worker.until_idle(), 30)
        delayed = dedup_unavailable(worker)
        queues = await queue_report(amqp_url, settings)
    figures.note += f"; {delayed:g} deliveries delayed"
    assert figures.lost == 0, queues
    assert figures.duplicated == 0
    assert delayed > 0


async def test_reply_sent_just_before_redis_vanishes_is_not_sent_again(
        make_settings, start_ingress, fake_api, redis_proxy, redis_client) -> None:
    """The worst moment: the reply is accepted, then recording it fails. A later attempt must
    not send it again, even once the claim's lease has run out."""
    proxy, proxied_url = redis_proxy
    settings = make_settings(redis_url=proxied_url)
    bot = Bot()
    cut_done = asyncio.Event()

    @bot.on_text()
    async def handler(msg: Message) -> str:
        if msg.text == "vanish" and not cut_done.is_set():
            cut_done.set()
            await proxy.cut()  # the claim is taken; the reply goes out; done() cannot follow
        return f"echo: {msg.text}"

    started = time.monotonic()
    ingress = await start_ingress(settings)
    async with Worker(settings, bot) as worker:
        docs = [text_callback(f"v-{uuid.uuid4().hex[:8]}", "vanish")]
        assert await post_all(f"{ingress.url}/callback", docs) == [200]
        assert await wait_for(cut_done.is_set, 10)
        # Down for longer than the inline retries of done() and than the claim's lease.
        await asyncio.sleep(settings.dedup_lease + 1.0)
        proxy.heal()
        await wait_for(lambda: dedup_unavailable(worker) > 0, 10)
        await asyncio.sleep(settings.retry_delays[-1] * 4 + 2.0)
        await asyncio.wait_for(worker.until_idle(), 30)
    texts = [r.body["data"]["text"] for r in fake_api.fake.replies]
    figures = Figures("redis: vanishes right after a reply is sent", sent=1,
                      seconds=time.monotonic() - started,
                      note=f"down {settings.dedup_lease + 1:g}s, longer than the lease")
    figures.count_replies(["echo: vanish"], texts)
    record(figures)
    assert texts.count("echo: vanish") == 1, texts
