"""The in-memory broker keeps the RabbitMQ semantics botrelay relies on."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from botrelay.ingress.app import make_app
from botrelay.shared.broker import PUBLISH_ERRORS, BrokerUnavailable, make_message
from botrelay.shared.settings import Settings
from botrelay.worker.memory_broker import MemoryBroker, MemoryDelivery, QueueFull
from tests.conftest import RunningIngress
from tests.helpers import text_callback, wait_for


def _settings(**overrides: object) -> Settings:
    return Settings(uvloop=False, retry_delays=(0.05, 0.1),
                    cometchat_app_id="2248348660ad9bd4", **overrides)  # type: ignore[arg-type]


def _message(n: int) -> object:
    return make_message(b"{}", message_id=f"m{n}", headers={"n": n})


async def test_publish_needs_an_open_broker_and_respects_the_queue_length() -> None:
    broker = MemoryBroker(_settings(inbound_max_length=2))
    with pytest.raises(BrokerUnavailable):
        await broker.publish(_message(0), "inbound")
    await broker.start()
    await broker.publish(_message(1), "inbound")
    await broker.publish(_message(2), "inbound")
    with pytest.raises(QueueFull):
        await broker.publish(_message(3), "inbound")
    assert isinstance(QueueFull("x"), PUBLISH_ERRORS)
    await broker.publish(_message(4), "dead")  # the DLQ is not the inbound queue
    assert [s.message.message_id for s in broker.inbound] == ["m1", "m2"]
    assert [s.message.message_id for s in broker.dead] == ["m4"]


async def test_settle_once_requeue_at_the_head_or_dead_letter() -> None:
    broker = MemoryBroker(_settings())
    await broker.start()
    for n in range(3):
        await broker.publish(_message(n), "inbound")
    first = broker.get()
    assert first is not None and first.message_id == "m0" and first.headers == {"n": 0}
    await first.nack(requeue=True)
    with pytest.raises(RuntimeError, match="already settled"):
        await first.ack()
    again = broker.get()
    assert again is not None and again.message_id == "m0" and again.redelivered
    await again.nack(requeue=False)
    assert [s.message.message_id for s in broker.dead] == ["m0"]
    second = broker.get()
    assert second is not None
    await second.ack()
    assert broker.acked == 1 and broker.unsettled == 0


async def test_delayed_messages_come_back_after_their_queue_delay() -> None:
    broker = MemoryBroker(_settings())
    await broker.start()
    with pytest.raises(ValueError, match="no retry queue for 3s"):
        await broker.publish_delayed(_message(0), 3, "inbound")
    await broker.publish_delayed(_message(1), 0.1, "inbound")
    await broker.publish_delayed(_message(2), 0.05, "inbound.7")
    assert [s.delay for s in broker.delayed] == [0.1, 0.05] and not broker.inbound
    await asyncio.sleep(0.2)
    assert [(s.message.message_id, s.routing_key) for s in broker.inbound] == [
        ("m2", "inbound.7"), ("m1", "inbound")]
    assert not broker.delayed
    await broker.publish_delayed(_message(3), 0.1, "inbound")
    assert broker.fast_forward() == 1 and broker.inbound[-1].message.message_id == "m3"
    await broker.close()


async def test_consume_keeps_at_most_prefetch_unsettled() -> None:
    broker = MemoryBroker(_settings())
    await broker.start()
    running, peak, release = 0, 0, asyncio.Event()
    done: list[str | None] = []

    async def handle(delivery: MemoryDelivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        done.append(delivery.message_id)
        await delivery.ack()

    tag = broker.consume(handle, prefetch=3)
    for n in range(10):
        await broker.publish(_message(n), "inbound")
    await asyncio.sleep(0.05)
    assert running == 3 and broker.unsettled == 3
    release.set()
    assert await wait_for(lambda: len(done) == 10, timeout=5)
    assert peak == 3 and broker.idle
    await broker.cancel(tag)
    await broker.close()


async def test_an_unsettled_delivery_goes_back_to_the_queue() -> None:
    broker = MemoryBroker(_settings())
    await broker.start()
    seen: list[bool] = []

    async def forgetful(delivery: MemoryDelivery) -> None:
        seen.append(delivery.redelivered)
        if len(seen) > 1:
            await delivery.ack()

    tag = broker.consume(forgetful, prefetch=1)
    await broker.publish(_message(0), "inbound")
    assert await wait_for(lambda: len(seen) == 2, timeout=5)
    assert seen == [False, True]
    await broker.cancel(tag)
    await broker.close()


async def test_the_ingress_answers_503_when_the_memory_queue_is_full_or_closed() -> None:
    settings = _settings(inbound_max_length=1)
    broker = MemoryBroker(settings)
    ingress = await RunningIngress(make_app(settings, broker=broker)).start()
    try:
        statuses = []
        async with aiohttp.ClientSession() as session:
            for n in range(2):
                async with session.post(f"{ingress.url}/callback",
                                        json=text_callback(str(n), "hi")) as resp:
                    statuses.append((resp.status, resp.headers.get("Retry-After")))
            await broker.close()
            async with session.post(f"{ingress.url}/callback",
                                    json=text_callback("9", "hi")) as resp:
                statuses.append((resp.status, resp.headers.get("Retry-After")))
            async with session.get(f"{ingress.url}/readyz") as resp:
                statuses.append((resp.status, None))
        assert statuses == [(200, None), (503, "2"), (503, "2"), (503, None)]
    finally:
        await ingress.stop()


async def test_moves_are_reported_and_described_for_dev() -> None:
    from botrelay.dev import describe_move
    from botrelay.shared.headers import ATTEMPT, ERROR, ERROR_KIND

    moved: list[str] = []
    broker = MemoryBroker(_settings(), on_move=lambda stored: moved.append(describe_move(stored)))
    await broker.start()
    await broker.publish_delayed(make_message(b"{}", message_id="k1", headers={ATTEMPT: 2}),
                                 0.1, "inbound")
    await broker.publish(make_message(b"{}", message_id="k2", headers={
        ATTEMPT: 3, ERROR: "RuntimeError: boom", ERROR_KIND: "transient"}), "dead")
    await broker.publish(_message(5), "inbound")
    assert moved == ["retry in 0.1s <- k1 (attempt 2)",
                     "dead letter <- k2: RuntimeError: boom (transient, attempt 3)"]
    await broker.close()
