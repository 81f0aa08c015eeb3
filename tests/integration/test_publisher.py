"""``shared.publisher.ConfirmBatcher`` against the real broker: it drives aiormq's internals, so
every way a confirm can end is checked here (ack, nack, return, closed channel, an unencodable
message, a body split over several frames)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import pytest
from pamqp import commands as spec

from botrelay.shared.broker import callback_properties
from botrelay.shared.publisher import ChannelClosed, ConfirmBatcher

pytestmark = pytest.mark.integration


@pytest.fixture
async def link(amqp_url: str, prefix: str) -> AsyncIterator[tuple[Any, aiormq.Channel, str]]:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.declare_exchange(f"{prefix}.x", aio_pika.ExchangeType.DIRECT,
                                              auto_delete=True)
    underlay = await channel.get_underlay_channel()
    try:
        yield channel, underlay, exchange.name  # type: ignore[misc]
    finally:
        cleanup = await connection.channel()
        for name in (f"{prefix}.q", f"{prefix}.small"):
            await cleanup.queue_delete(name)
        await cleanup.exchange_delete(f"{prefix}.x")
        await connection.close()


async def _queue(channel: Any, prefix: str, name: str, **arguments: Any) -> Any:
    queue = await channel.declare_queue(f"{prefix}.{name}", durable=True,
                                        arguments={"x-queue-type": "quorum", **arguments})
    await queue.bind(f"{prefix}.x", routing_key=name)
    return queue


async def _drain(queue: Any, count: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    got = []
    for _ in range(count):
        message = await queue.get(timeout=5)
        await message.ack()
        got.append(message)
    return got


async def test_concurrent_publishes_share_writes_and_are_each_confirmed(link, prefix):
    channel, underlay, exchange = link
    queue = await _queue(channel, prefix, "q")
    batcher = ConfirmBatcher()
    results = await asyncio.gather(*(
        batcher.publish(underlay, exchange, "q", f'{{"n":{i}}}'.encode(),
                        callback_properties(f"id-{i}", {"x-n": i, "x-big": 2**40}))
        for i in range(500)))
    assert all(isinstance(r, spec.Basic.Ack) for r in results)
    got = await _drain(queue, 500)
    assert sorted(m.message_id for m in got) == sorted(f"id-{i}" for i in range(500))
    first = next(m for m in got if m.message_id == "id-7")
    assert first.body == b'{"n":7}'
    headers = dict(first.headers)
    headers.pop("x-delivery-count", None)  # the quorum queue's own
    assert headers == {"x-n": 7, "x-big": 2**40}
    assert first.content_type == "application/json"
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert abs((first.timestamp - datetime.now(UTC)).total_seconds()) < 60
    assert not underlay.confirmations and not underlay.message_id_delivery_tag
    await batcher.close()


async def test_a_body_larger_than_a_frame_arrives_whole(link, prefix):
    channel, underlay, exchange = link
    queue = await _queue(channel, prefix, "q")
    body = bytes(range(256)) * 2000  # 512 KB: several frames at RabbitMQ's 128 KB frame_max
    assert len(body) > underlay.max_content_size
    batcher = ConfirmBatcher()
    await batcher.publish(underlay, exchange, "q", body, callback_properties("big", {}))
    [message] = await _drain(queue, 1)
    assert message.body == body
    await batcher.close()


async def test_a_nack_fails_only_the_refused_message(link, prefix):
    channel, underlay, exchange = link
    await _queue(channel, prefix, "small", **{"x-max-length": 1, "x-overflow": "reject-publish"})
    batcher = ConfirmBatcher()
    # A quorum queue applies its limit a moment late: publish one by one until it refuses.
    outcomes = []
    for i in range(20):
        try:
            outcomes.append(await batcher.publish(underlay, exchange, "small", b"{}",
                                                  callback_properties(f"m{i}", {})))
        except aiormq.exceptions.DeliveryError as exc:
            outcomes.append(exc)
    refused = [o for o in outcomes if isinstance(o, aiormq.exceptions.DeliveryError)]
    assert refused and len(refused) + sum(isinstance(o, spec.Basic.Ack) for o in outcomes) == 20
    # The channel stays usable after a nack.
    assert not underlay.is_closed
    await batcher.close()


async def test_an_unroutable_message_is_returned_as_an_error(link, prefix):
    channel, underlay, exchange = link
    await _queue(channel, prefix, "q")
    batcher = ConfirmBatcher()
    with pytest.raises(aiormq.exceptions.PublishError):
        await batcher.publish(underlay, exchange, "nowhere", b"{}",
                              callback_properties("lost", {}))
    # The channel is still good for the next one.
    assert isinstance(await batcher.publish(underlay, exchange, "q", b"{}",
                                            callback_properties("ok", {})), spec.Basic.Ack)
    await batcher.close()


async def test_an_unencodable_message_fails_alone(link, prefix):
    channel, underlay, exchange = link
    queue = await _queue(channel, prefix, "q")
    batcher = ConfirmBatcher()
    good = batcher.publish(underlay, exchange, "q", b"{}", callback_properties("good", {}))
    bad = batcher.publish(underlay, exchange, "q", b"{}",
                          callback_properties("bad", {"x": object()}))
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert isinstance(results[0], spec.Basic.Ack)
    assert isinstance(results[1], Exception) and not isinstance(results[1], ChannelClosed)
    [message] = await _drain(queue, 1)
    assert message.message_id == "good"
    await batcher.close()


async def test_a_closed_channel_fails_at_once(link, prefix):
    channel, underlay, exchange = link
    await _queue(channel, prefix, "q")
    batcher = ConfirmBatcher()
    await channel.close()
    with pytest.raises(ChannelClosed):
        await batcher.publish(underlay, exchange, "q", b"{}", callback_properties("x", {}))
    await batcher.close()


async def test_the_channel_closing_before_the_confirm_fails_the_waiters(link, prefix):
    channel, underlay, exchange = link
    await _queue(channel, prefix, "q")
    batcher = ConfirmBatcher()
    waiters = [asyncio.ensure_future(batcher.publish(
        underlay, exchange, "q", b"{}", callback_properties(f"w{i}", {}))) for i in range(50)]
    await asyncio.sleep(0)
    # Publishing to a missing exchange closes the channel (404) under the waiters' feet.
    broken = asyncio.ensure_future(batcher.publish(underlay, f"{prefix}.missing", "q", b"{}",
                                                   callback_properties("broken", {})))
    _, pending = await asyncio.wait([*waiters, broken], timeout=10)
    assert not pending
    assert broken.exception() is not None
    # Each waiter either got its ack before the close or an error: never left hanging.
    for waiter in waiters:
        assert waiter.exception() is not None or isinstance(waiter.result(), spec.Basic.Ack)
    await batcher.close()


class _RefusingQueue:
    """A write queue that takes nothing: ``put`` fails, or (``block``) waits until cancelled."""

    def __init__(self, block: bool = False) -> None:
        self.block = block
        self.puts = 0

    async def put(self, item: Any) -> None:
        self.puts += 1
        if self.block:
            await asyncio.Event().wait()
        raise RuntimeError("the connection's writer is gone")


@pytest.mark.parametrize("how", ["failed", "cancelled"])
async def test_after_a_write_that_did_not_happen_tags_stay_in_step(link, prefix, how):
    """The broker numbers confirms by the publishes it got. A batch that never reached the
    write queue gives its tags back (as aiormq does), or every later confirm would land on the
    wrong message and the last publish would wait forever."""
    channel, underlay, exchange = link
    queue = await _queue(channel, prefix, "q")
    batcher = ConfirmBatcher()
    assert isinstance(await batcher.publish(underlay, exchange, "q", b'{"n":0}',
                                            callback_properties("before", {})), spec.Basic.Ack)
    tag = underlay.delivery_tag
    real, refusing = underlay.write_queue, _RefusingQueue(block=how == "cancelled")
    underlay.write_queue = refusing
    try:
        lost = [asyncio.ensure_future(batcher.publish(
            underlay, exchange, "q", b"{}", callback_properties(f"lost-{i}", {})))
            for i in range(3)]
        await asyncio.sleep(0.05)
        assert refusing.puts == 1
        if how == "cancelled":
            await batcher.close()  # cancels the write waiting on the full queue
            batcher = ConfirmBatcher()
        for future in lost:
            with pytest.raises(ChannelClosed):
                await asyncio.wait_for(future, 5)
    finally:
        underlay.write_queue = real
    assert underlay.delivery_tag == tag
    assert not underlay.confirmations
    assert not any(k.startswith("lost-") for k in underlay.message_id_delivery_tag)
    after = await asyncio.wait_for(asyncio.gather(*(
        batcher.publish(underlay, exchange, "q", b'{"n":%d}' % i,
                        callback_properties(f"after-{i}", {})) for i in range(1, 4))), 5)
    assert all(isinstance(r, spec.Basic.Ack) for r in after)
    got = await _drain(queue, 4)
    assert sorted(m.message_id for m in got) == ["after-1", "after-2", "after-3", "before"]
    assert not underlay.confirmations
    await batcher.close()
