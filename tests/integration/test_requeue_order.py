"""What the broker does with a message a consumer hands back, on the real RabbitMQ.

A partition hand-over can leave a message handed to the old owner's consumer after its cancel;
the broker takes it back. The inbound queues' delivery limit makes it go back to the head of the
queue, in front of the conversation's later messages (``shared.topology``). Without the limit
RabbitMQ 3.x appends it to the tail, which is how a conversation's message came out after its
successor across a hand-over. The limit also bounds a crash loop: past it the broker
dead-letters the callback, and the DLQ tools show why and replay it.
"""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from botrelay.shared import topology
from botrelay.shared.broker import make_message
from botrelay.shared.settings import Settings
from botrelay.worker import dlq

pytestmark = pytest.mark.integration


async def _publish(channel: aio_pika.abc.AbstractChannel, settings: Settings, key: str,
                   bodies: list[bytes]) -> None:
    exchange = await channel.get_exchange(topology.exchange_name(settings.prefix))
    for n, body in enumerate(bodies):
        await exchange.publish(make_message(body, message_id=f"m{n}", headers={}), key,
                               mandatory=True)


async def _first(queue: AbstractQueue) -> AbstractIncomingMessage:
    """Subscribe with a prefetch of one, take the first delivery, cancel: like an owner that
    gives the partition up while holding one message."""
    got: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()

    async def take(message: AbstractIncomingMessage) -> None:
        if not got.done():
            got.set_result(message)

    tag = await queue.consume(take)
    message = await asyncio.wait_for(got, 10)
    await queue.cancel(tag)
    return message


async def _drain(queue: AbstractQueue, count: int) -> list[AbstractIncomingMessage]:
    seen: list[AbstractIncomingMessage] = []
    done = asyncio.Event()

    async def take(message: AbstractIncomingMessage) -> None:
        seen.append(message)
        await message.ack()
        if len(seen) == count:
            done.set()

    tag = await queue.consume(take)
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await queue.cancel(tag)
    return seen


async def test_a_message_handed_back_goes_to_the_head_of_its_partition(make_settings):
    settings = make_settings(partitions=2)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await topology.declare(channel, settings)
        await channel.set_qos(prefetch_count=1)
        await _publish(channel, settings, topology.partition_key(0),
                       [f"m{n}".encode() for n in range(5)])
        queue = await channel.get_queue(topology.partition_queue(settings.prefix, 0))

        held = await _first(queue)
        assert held.body == b"m0"
        # Its successors are in the queue now; the old owner hands m0 back.
        await held.nack(requeue=True)

        seen = await _drain(queue, 5)
    assert [m.body for m in seen] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert seen[0].redelivered and seen[0].headers.get("x-delivery-count") == 1


async def test_a_callback_handed_back_past_the_limit_is_dead_lettered_and_replays(
        make_settings):
    settings = make_settings(partitions=2, delivery_limit=2)
    partition = topology.partition_queue(settings.prefix, 1)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await topology.declare(channel, settings)
        await channel.set_qos(prefetch_count=1)
        await _publish(channel, settings, topology.partition_key(1), [b"{}"])
        queue = await channel.get_queue(partition)
        for _ in range(settings.delivery_limit + 1):  # a worker lost each time it takes it
            await (await _first(queue)).nack(requeue=True)

        letters: list[dlq.DeadLetter] = []
        for _ in range(50):
            letters = await dlq.list_letters(settings)
            if letters:
                break
            await asyncio.sleep(0.1)
        assert [(x.id, x.queue, x.error_kind) for x in letters] == [("m0", partition,
                                                                    "transient")]
        assert letters[0].error.startswith("delivery_limit")

        report = await dlq.replay(settings, dlq.Selection(everything=True))
        assert report.moved == 1
        back = await _drain(queue, 1)
    assert back[0].message_id == "m0"
    assert not any(k.startswith("x-first-death") for k in back[0].headers)
    assert await dlq.list_letters(settings) == []
