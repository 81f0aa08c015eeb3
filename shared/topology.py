"""Exchange and queue names as pure functions of the prefix, and one idempotent ``declare``.

Topology (P = prefix):

- ``P``: durable direct exchange; everything is published here.
- ``P.inbound``: quorum queue bound with key ``inbound``; callbacks waiting for a worker.
- ``P.retry.<seconds>``: one quorum queue per retry delay with ``x-message-ttl``. Each is fed by a
  fanout exchange of the same name, so a retried message keeps the routing key it will need when
  it comes back: on expiry the queue dead-letters it to ``P`` under that original key
  (``inbound``). ``x-dead-letter-strategy: at-least-once`` makes that hop survive a broker crash.
- ``P.dead``: quorum queue bound with key ``dead``; dead letters until replayed or purged.

With ``BOTRELAY_ORDERING=conversation`` (the default) the inbound side is split into
``BOTRELAY_PARTITIONS`` quorum queues ``P.inbound.<n>`` (key ``inbound.<n>``), each with
``x-single-active-consumer``: the ingress routes a callback by a stable hash of its conversation,
so one conversation's messages sit in one queue, in order, consumed by one worker at a time.
With ``none`` there is only the shared queue ``P.inbound``. It exists in both modes and every
worker consumes it, so a message published under the plain ``inbound`` key (by a tool, or by an
ingress still running the other mode during a switch) is never stranded.

On a cluster (several URLs in ``BOTRELAY_AMQP_URL``, or ``BOTRELAY_QUORUM_SIZE`` set) every queue
is declared with ``x-quorum-initial-group-size`` (``Settings.quorum_group_size``) and
``x-queue-leader-locator: balanced``, so the leaders spread over the nodes instead of all sitting
on the node that declared them first. With one URL neither is sent: the broker's defaults, and
queues declared by earlier versions match their declaration exactly.

Every queue rejects publishes when full (``x-overflow: reject-publish``), so a flooded broker
answers the publisher with a nack (the ingress turns that into 503) instead of dropping anything.

The inbound and partition queues have a delivery limit (``x-delivery-limit``,
``BOTRELAY_DELIVERY_LIMIT``, 20 like RabbitMQ 4's default). It bounds a crash loop (a callback
that kills every worker taking it is dead-lettered after that many redeliveries), and it keeps
each conversation in order: RabbitMQ 3.10 to 3.13 put a message a consumer hands back (a nack
with requeue, or a delivery that reached a consumer already cancelled, which every partition
hand-over can leave) at the *tail* of a quorum queue unless the queue has a delivery limit; with
one, the message goes back to the head, in front of the messages that followed it.
"""

from __future__ import annotations

import zlib
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from botrelay.shared.queue_changes import QueueMismatch, parse_refusal
from botrelay.shared.settings import Settings

INBOUND_KEY = "inbound"
DEAD_KEY = "dead"

# The DLQ and retry queues only hold failures; bound them so a runaway failure loop cannot
# fill the broker's disk, while leaving far more room than any realistic backlog needs.
SIDE_QUEUE_MAX_LENGTH = 10_000_000


def partition_of(conversation: str, partitions: int) -> int:
    """A stable partition for a conversation: the same on every process and every run."""
    return zlib.crc32(conversation.encode("utf-8", "surrogatepass")) % partitions


def partition_key(n: int) -> str:
    return f"{INBOUND_KEY}.{n}"


def partition_queue(prefix: str, n: int) -> str:
    return f"{prefix}.{INBOUND_KEY}.{n}"


def inbound_key(settings: Settings, conversation: str) -> str:
    """The routing key a callback of ``conversation`` is published with."""
    if settings.ordering == "none":
        return INBOUND_KEY
    return partition_key(partition_of(conversation, settings.partitions))


def partition_queues(settings: Settings) -> list[str]:
    if settings.ordering == "none":
        return []
    return [partition_queue(settings.prefix, n) for n in range(settings.partitions)]


def inbound_queues(settings: Settings) -> list[str]:
    """Every queue holding callbacks for workers: the shared one, then the partitions."""
    return [inbound_queue(settings.prefix), *partition_queues(settings)]


def inbound_key_of_queue(prefix: str, queue: str) -> str | None:
    """The routing key that reaches inbound queue ``queue`` (``P.inbound`` or
    ``P.inbound.<n>``), or None when ``queue`` is not one of this prefix's inbound queues."""
    shared = inbound_queue(prefix)
    if queue == shared:
        return INBOUND_KEY
    head, dot, tail = queue.rpartition(".")
    if dot and head == shared and tail.isdigit():
        return partition_key(int(tail))
    return None


def queue_of_inbound_key(prefix: str, key: str) -> str:
    """The inbound queue a routing key (``inbound`` or ``inbound.<n>``) is bound to."""
    return f"{prefix}.{key}"


def exchange_name(prefix: str) -> str:
    return prefix


def inbound_queue(prefix: str) -> str:
    return f"{prefix}.inbound"


def dead_queue(prefix: str) -> str:
    return f"{prefix}.dead"


def delay_label(seconds: float) -> str:
    """``5`` for 5.0 s, ``0.2`` for 0.2 s: the suffix of a retry queue's name."""
    return f"{seconds:g}"


def retry_queue(prefix: str, seconds: float) -> str:
    return f"{prefix}.retry.{delay_label(seconds)}"


def all_queue_names(settings: Settings) -> list[str]:
    names = [*inbound_queues(settings), dead_queue(settings.prefix)]
    names.extend(retry_queue(settings.prefix, d) for d in settings.retry_delays)
    return names


def all_exchange_names(settings: Settings) -> list[str]:
    # Each retry queue has a fanout exchange of the same name feeding it.
    return [exchange_name(settings.prefix)] + [
        retry_queue(settings.prefix, d) for d in settings.retry_delays
    ]


def pick_delay(delays: tuple[float, ...], wanted: float) -> float:
    """The shortest configured delay that is at least ``wanted`` (else the longest)."""
    for delay in sorted(delays):
        if delay >= wanted:
            return delay
    return max(delays)


def delay_for_attempt(delays: tuple[float, ...], attempt: int) -> float:
    """The delay after failed attempt ``attempt`` (1-based): the n-th entry, then the last."""
    return delays[min(attempt, len(delays)) - 1]


def _quorum(settings: Settings, **extra: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"x-queue-type": "quorum", "x-overflow": "reject-publish"}
    size = settings.quorum_group_size
    if size is not None:
        arguments["x-quorum-initial-group-size"] = size
        arguments["x-queue-leader-locator"] = "balanced"
    return {**arguments, **extra}


def inbound_arguments(settings: Settings) -> dict[str, Any]:
    # A message the broker gives up on (its delivery limit reached) goes to the DLQ instead of
    # vanishing.
    return _quorum(
        settings,
        **{
            "x-max-length": settings.inbound_max_length,
            "x-dead-letter-exchange": exchange_name(settings.prefix),
            "x-dead-letter-routing-key": DEAD_KEY,
            "x-dead-letter-strategy": "at-least-once",
            "x-delivery-limit": settings.delivery_limit,
        }
    )


def partition_arguments(settings: Settings) -> dict[str, Any]:
    return {**inbound_arguments(settings), "x-single-active-consumer": True}


def retry_arguments(settings: Settings, seconds: float) -> dict[str, Any]:
    return _quorum(
        settings,
        **{
            "x-message-ttl": round(seconds * 1000),
            "x-max-length": SIDE_QUEUE_MAX_LENGTH,
            "x-dead-letter-exchange": exchange_name(settings.prefix),
            "x-dead-letter-strategy": "at-least-once",
        }
    )


def dead_arguments(settings: Settings) -> dict[str, Any]:
    return _quorum(settings, **{"x-max-length": SIDE_QUEUE_MAX_LENGTH})


async def _queue(channel: AbstractChannel, name: str, arguments: dict[str, Any]
                 ) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        mismatch = parse_refusal(str(exc))
        if mismatch is None:
            raise
        raise QueueMismatch(mismatch) from None


async def declare(channel: AbstractChannel, settings: Settings) -> AbstractExchange:
    """Declare the whole topology; safe to run any number of times, from any process. A queue
    that exists with other arguments raises ``QueueMismatch`` (the channel is then closed)."""
    prefix = settings.prefix
    exchange = await channel.declare_exchange(
        exchange_name(prefix), aio_pika.ExchangeType.DIRECT, durable=True
    )
    inbound = await _queue(channel, inbound_queue(prefix), inbound_arguments(settings))
    await inbound.bind(exchange, INBOUND_KEY)
    if settings.ordering == "conversation":
        # Single active consumer: even if two workers subscribe to one partition (a hand-over
        # in progress, a worker that lost its Redis lease), only one receives its messages.
        arguments = partition_arguments(settings)
        for n in range(settings.partitions):
            queue = await _queue(channel, partition_queue(prefix, n), arguments)
            await queue.bind(exchange, partition_key(n))
    dead = await _queue(channel, dead_queue(prefix), dead_arguments(settings))
    await dead.bind(exchange, DEAD_KEY)
    for seconds in settings.retry_delays:
        name = retry_queue(prefix, seconds)
        fanout = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
        queue = await _queue(channel, name, retry_arguments(settings, seconds))
        await queue.bind(fanout, "")
    return exchange


async def delete(channel: AbstractChannel, settings: Settings) -> None:
    """Remove everything ``declare`` made (tests and ``botrelay`` tear-down)."""
    for name in all_queue_names(settings):
        await channel.queue_delete(name)
    for name in all_exchange_names(settings):
        await channel.exchange_delete(name)
