"""Publishing with confirms, many messages per socket write: the ingress's hot path.

aio-pika's ``Exchange.publish`` costs about 270 us of CPU per message here (a ``Message`` object,
a lock, two async context managers, a drain wait, one queue item and one socket write each).
``ConfirmBatcher`` keeps the guarantees and drops the per-message machinery: the callbacks that
arrive in one event-loop turn are marshalled together, take consecutive delivery tags and go out
as one write, and each caller waits only for its own confirm (about 75 us per message).

It drives an aiormq channel the way ``aiormq.Channel.basic_publish`` does, through the same
fields: ``delivery_tag``, ``confirmations`` (the broker's ack, nack or return resolves the
future there), ``message_id_delivery_tag`` (how a return finds its publish) and the
connection's ``write_queue``. Those are aiormq internals, so ``pyproject.toml`` pins aiormq's
major version and ``tests/integration/test_publisher.py`` covers ack, nack, return, a split body
and a closed channel against the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import pamqp.frame
from aiormq import Channel
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from botrelay.shared.wakeup import Wakeup

log = logging.getLogger("botrelay.broker")


class ChannelClosed(ConnectionError):
    """The channel was closed or gone before the message was written; the broker never saw it."""


@dataclass(slots=True)
class _Pending:
    channel: Channel
    exchange: str
    routing_key: str
    body: bytes
    properties: spec.Basic.Properties
    future: asyncio.Future[Any]


class ConfirmBatcher:
    """``publish`` is safe to call from any number of tasks. The caller names the aiormq channel
    each time (after a reconnect it is a new one); a batch goes to one channel."""

    def __init__(self) -> None:
        self._pending: list[_Pending] = []
        self._wakeup = Wakeup()
        self._task: asyncio.Task[None] | None = None

    async def publish(self, channel: Channel, exchange: str, routing_key: str, body: bytes,
                      properties: spec.Basic.Properties) -> Any:
        """Returns the broker's ``Basic.Ack``. Raises ``ChannelClosed`` when there is no open
        channel, ``aiormq.exceptions.DeliveryError`` on a nack, ``PublishError`` on a return
        (unroutable) and the channel's close reason when it closes before the confirm.
        Cancelling the caller (a timeout) forgets the confirm, as aiormq does."""
        if channel.is_closed:
            raise ChannelClosed("no open channel to the broker")
        # The channel's own future: closing the channel rejects it with the reason.
        future: asyncio.Future[Any] = channel.create_future()
        self._pending.append(_Pending(channel, exchange, routing_key, body, properties, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush_forever(), name="confirm-batcher")
        else:
            self._wakeup.set()
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        batch, self._pending = self._pending, []
        _fail(batch, ChannelClosed("publisher closed"))

    async def _flush_forever(self) -> None:
        while True:
            if not self._pending:
                await self._wakeup.wait()
            # Everything that arrived during the last loop turn (or the last write) goes at once.
            batch, self._pending = self._pending, []
            await self._flush(batch)

    async def _flush(self, batch: list[_Pending]) -> None:
        channel = batch[0].channel
        if any(p.channel is not channel for p in batch):  # a reconnect happened in between
            stale = [p for p in batch if p.channel is not channel]
            _fail(stale, ChannelClosed("the channel was replaced before the message was sent"))
            batch = [p for p in batch if p.channel is channel]
        taken: list[_Taken] = []
        try:
            # The channel's lock orders these tags against any other publish on it (aiormq holds
            # it from taking a tag to queueing the frames). The write queue is bounded: a slow
            # broker makes this wait, and the callers with it.
            async with channel.lock:
                try:
                    payload = _marshal(channel, batch, taken)
                    if payload:
                        await channel.write_queue.put(ChannelFrame(payload=payload,
                                                                   should_close=False))
                except BaseException:
                    _give_back(channel, taken)  # still under the lock: the last tags are ours
                    raise
            for tag, message_id, future in taken:
                if message_id:
                    future.add_done_callback(partial(_forget_id, channel, message_id, tag))
        except BaseException as exc:
            _fail(batch, ChannelClosed(f"not sent: {exc!r}"))
            if not isinstance(exc, Exception):
                raise
            log.warning("could not write %d messages to the broker: %r", len(batch), exc)


# A message's delivery tag, message id and confirm future, once it has taken the tag.
_Taken = tuple[int, str | None, "asyncio.Future[Any]"]


def _marshal(channel: Channel, batch: list[_Pending], taken: list[_Taken]) -> bytes:
    """The batch as one payload. A message takes its delivery tag only once its frames are
    built, so one that cannot be encoded (an odd header value) fails alone."""
    number = channel.number
    limit = channel.max_content_size
    parts: list[bytes] = []
    for p in batch:
        if p.future.done():  # the caller gave up, or the channel closed, before the flush
            continue
        try:
            frames = [
                pamqp.frame.marshal(spec.Basic.Publish(
                    exchange=p.exchange, routing_key=p.routing_key, mandatory=True), number),
                pamqp.frame.marshal(ContentHeader(properties=p.properties,
                                                  body_size=len(p.body)), number),
            ]
            frames += [pamqp.frame.marshal(ContentBody(p.body[i:i + limit]), number)
                       for i in range(0, len(p.body), limit)]
        except Exception as exc:
            p.future.set_exception(exc)
            continue
        channel.delivery_tag += 1
        tag: int = channel.delivery_tag
        channel.confirmations[tag] = p.future
        message_id = p.properties.message_id
        if message_id:
            # A return names its message by id only: this is how aiormq finds the publish.
            channel.message_id_delivery_tag[message_id] = tag
        parts += frames
        taken.append((tag, message_id, p.future))
    return b"".join(parts)


def _give_back(channel: Channel, taken: list[_Taken]) -> None:
    """The batch was not queued, so the broker never saw it: hand its delivery tags back, as
    aiormq's ``basic_publish`` does for its own unsent publish. The broker numbers confirms by
    the publishes it received; a tag kept for a message never sent would shift every later
    confirm onto the wrong message (an ack for one taken as another's, and the last left
    waiting). Called under the channel's lock, so the tags taken last are these."""
    if not taken:
        return
    if channel.delivery_tag == taken[-1][0]:
        channel.delivery_tag -= len(taken)
    else:  # not ours to give back (aiormq changed how it numbers): say so, loudly
        log.error("delivery tags out of step on channel %s: at %d, ours end at %d",
                  channel.number, channel.delivery_tag, taken[-1][0])
    ids = channel.message_id_delivery_tag
    for tag, message_id, _ in taken:
        channel.confirmations.pop(tag, None)
        if message_id and ids.get(message_id) == tag:
            del ids[message_id]


def _forget_id(channel: Channel, message_id: str, tag: int, _: asyncio.Future[Any]) -> None:
    ids = channel.message_id_delivery_tag
    if ids.get(message_id) == tag:
        del ids[message_id]


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)
