"""``worker.subscriptions``: consumers on the raw channel come back after the channel reopens
(the connection-level case is in the chaos suite: RabbitMQ cut)."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from botrelay.worker.subscriptions import AmqpDelivery, Subscriptions

pytestmark = pytest.mark.integration


async def test_subscriptions_consume_again_after_a_channel_error(amqp_url, prefix):
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    publisher = await connection.channel()
    name = f"{prefix}.subs"
    await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    got: list[AmqpDelivery] = []
    arrived = asyncio.Event()

    async def on_delivery(delivery):  # type: ignore[no-untyped-def]
        got.append(delivery)
        await delivery.ack()
        arrived.set()

    subscriptions = Subscriptions(channel, on_delivery)
    try:
        await subscriptions.add(name, prefetch=4)
        await publisher.default_exchange.publish(
            aio_pika.Message(b"one", message_id="m1", headers={"x-a": 1}), name)
        await asyncio.wait_for(arrived.wait(), 5)
        first = got[0]
        assert (first.body, first.message_id, first.headers["x-a"], first.routing_key) == (
            b"one", "m1", 1, name)

        # Acking a tag the broker never gave out is a channel error (406): the channel closes
        # and the robust channel reopens it; the subscription must follow.
        underlay = await channel.get_underlay_channel()
        await underlay.basic_ack(9999)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if await channel.get_underlay_channel() is not underlay:
                break
        assert await channel.get_underlay_channel() is not underlay, "the channel did not reopen"
        arrived.clear()
        await publisher.default_exchange.publish(aio_pika.Message(b"two"), name)
        await asyncio.wait_for(arrived.wait(), 10)
        assert got[-1].body == b"two"
    finally:
        await subscriptions.remove_all()
        subscriptions.close()
        await publisher.queue_delete(name)
        await connection.close()
