"""Moving every message out of a queue: consume, publish a copy with confirm, then ack.

``botrelay drain`` and ``botrelay migrate`` both empty queues this way. A message is acked at
its source only after the broker confirmed its copy, so a crash in between leaves a copy in both
places, which the workers' dedup absorbs. Consumed, not fetched: a partition queue has single
active consumer, which rules out basic.get.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from botrelay.shared.broker import make_message

# Publishes the copy (the first argument) of a message (the second) where it must go, confirmed.
Forward = Callable[[aio_pika.Message, AbstractIncomingMessage], Awaitable[object]]


def copy_of(message: AbstractIncomingMessage) -> aio_pika.Message:
    return make_message(message.body, message_id=message.message_id or "",
                        headers=dict(message.headers or {}),
                        timestamp=message.timestamp.timestamp() if message.timestamp else None)


async def move_all(channel: AbstractChannel, source: str, forward: Forward, idle: float,
                   prefetch: int = 100) -> int:
    """Forward every message of ``source``; done once it gave nothing for ``idle`` seconds.
    What was delivered but not forwarded when it stops goes back to ``source``, so a queue
    deleted next holds nothing unacked."""
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.get_queue(source, ensure=False)
    tag = await queue.consume(inbox.put)
    moved = 0
    try:
        while True:
            try:
                message = await asyncio.wait_for(inbox.get(), idle)
            except TimeoutError:
                return moved
            await forward(copy_of(message), message)
            await message.ack()
            moved += 1
    finally:
        await queue.cancel(tag)
        while not inbox.empty():
            await inbox.get_nowait().nack(requeue=True)
