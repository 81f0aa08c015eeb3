"""The worker's consumers, made directly on the aiormq channel under its robust aio-pika channel.

aio-pika's ``Queue.consume`` wraps every delivery in an ``IncomingMessage`` (a dozen properties
decoded whether used or not) and runs the callback in a second task next to aiormq's; both cost
about 35 us of CPU per delivery here. ``Subscriptions`` hands aiormq's ``DeliveredMessage`` to
the consumer as a slim ``AmqpDelivery`` in aiormq's own task, and the acks of one event-loop
turn go out in one write (``_Acks``).

What the robust queue did is kept: after the channel reopens (a lost connection, or a channel
error), every subscription is made again with its own prefetch, on the new channel. Deliveries
of the old channel can no longer be settled; the broker hands them out again, and the dedup
store makes sure nothing is answered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import aiormq
import pamqp.frame
from aio_pika.abc import AbstractRobustChannel
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp import commands as spec

from botrelay.shared.transport import Delivery

log = logging.getLogger("botrelay.worker")

OnDelivery = Callable[[Delivery], Awaitable[None]]


class AmqpDelivery:
    """A ``shared.transport.Delivery`` over aiormq's message: just the fields the worker uses."""

    __slots__ = ("_channel", "_tag", "body", "headers", "message_id", "routing_key",
                 "timestamp")

    def __init__(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        self._channel = message.channel
        self._tag = cast(int, message.delivery_tag)  # always set on a Basic.Deliver
        self.body: bytes = message.body
        self.headers: Mapping[str, Any] = properties.headers or {}
        self.message_id: str | None = properties.message_id
        self.routing_key: str | None = message.routing_key
        stamp = properties.timestamp
        if isinstance(stamp, int | float):
            stamp = datetime.fromtimestamp(stamp, UTC)
        self.timestamp: datetime | None = stamp

    async def ack(self, multiple: bool = False) -> None:
        if multiple:
            await self._channel.basic_ack(self._tag, multiple=True, wait=False)
        else:
            _Acks.of(cast(aiormq.Channel, self._channel)).add(self._tag)

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        await self._channel.basic_nack(self._tag, multiple=multiple, requeue=requeue,
                                       wait=False)


class _Acks:
    """The acks of one event-loop turn on one channel, written as one frame: aiormq writes
    each ``basic_ack`` to the socket on its own, a system call per delivery.

    Nothing waits for them: the broker does not confirm acks either, and one lost with its
    channel only means a redelivery, which the dedup store answers as a duplicate."""

    _of: weakref.WeakKeyDictionary[aiormq.Channel, _Acks] = weakref.WeakKeyDictionary()

    def __init__(self, channel: aiormq.Channel) -> None:
        self.channel = channel
        self.tags: list[int] = []
        self._writes: set[asyncio.Task[None]] = set()

    @classmethod
    def of(cls, channel: aiormq.Channel) -> _Acks:
        acks = cls._of.get(channel)
        if acks is None:
            acks = cls._of[channel] = cls(channel)
        return acks

    def add(self, tag: int) -> None:
        if not self.tags:
            asyncio.get_running_loop().call_soon(self._flush)
        self.tags.append(tag)

    def _flush(self) -> None:
        tags, self.tags = self.tags, []
        channel = self.channel
        if channel.is_closed:
            return  # unacked deliveries of a closed channel go back to the queue anyway
        number = channel.number
        frame = ChannelFrame(payload=b"".join(
            pamqp.frame.marshal(spec.Basic.Ack(delivery_tag=tag), number) for tag in tags),
            should_close=False)
        try:
            channel.write_queue.put_nowait(frame)
        except asyncio.QueueFull:  # the writer is behind: queue it as soon as there is room
            task = asyncio.ensure_future(channel.write_queue.put(frame))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)


class Subscriptions:
    def __init__(self, channel: AbstractRobustChannel, on_delivery: OnDelivery) -> None:
        self.channel = channel
        self.on_delivery = on_delivery
        # queue -> (prefetch, callback, consumer tag on the current channel)
        self._wanted: dict[str, tuple[int, OnDelivery, str | None]] = {}
        channel.reopen_callbacks.add(self._restore)

    async def add(self, queue: str, prefetch: int, callback: OnDelivery | None = None) -> str:
        """Consume ``queue`` with its own prefetch; returns ``queue``, the handle for
        ``remove``."""
        handler = callback or self.on_delivery
        self._wanted[queue] = (prefetch, handler, None)
        tag = await self._consume(queue, prefetch, handler)
        self._wanted[queue] = (prefetch, handler, tag)
        return queue

    async def remove(self, queue: str) -> None:
        """Stop consuming ``queue``; deliveries already handed out still settle."""
        wanted = self._wanted.pop(queue, None)
        if wanted is not None and wanted[2] is not None:
            with contextlib.suppress(Exception):
                underlay = await self.channel.get_underlay_channel()
                await underlay.basic_cancel(wanted[2])

    async def remove_all(self) -> None:
        for queue in list(self._wanted):
            await self.remove(queue)

    def close(self) -> None:
        self.channel.reopen_callbacks.discard(self._restore)

    async def _consume(self, queue: str, prefetch: int, handler: OnDelivery) -> str:
        underlay = cast(aiormq.Channel, await self.channel.get_underlay_channel())
        # Quorum queues apply prefetch per consumer: set it right before each subscription.
        await underlay.basic_qos(prefetch_count=prefetch)

        async def deliver(message: DeliveredMessage) -> None:
            await handler(AmqpDelivery(message))

        result = await underlay.basic_consume(queue, deliver)
        return cast(str, result.consumer_tag)

    async def _restore(self, *_: Any) -> None:
        for queue, (prefetch, handler, _tag) in list(self._wanted.items()):
            try:
                tag = await self._consume(queue, prefetch, handler)
            except Exception:
                log.exception("could not consume %s again after the channel reopened", queue)
                continue
            if queue in self._wanted:
                self._wanted[queue] = (prefetch, handler, tag)
