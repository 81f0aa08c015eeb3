"""Moving callbacks out of inbound queues the current settings no longer use.

After lowering ``BOTRELAY_PARTITIONS`` (say 32 -> 16) or switching ``BOTRELAY_ORDERING`` to
``none``, the partition queues past the new count (or all of them) get no consumer. ``botrelay
drain --from-partitions 32`` moves what they still hold to where the current settings route it
(by the ``x-botrelay-conversation`` header): publish with confirm, then ack. Nothing is lost; a
crash in between leaves a copy in both places, which dedup absorbs.

It declares nothing: a destination partition queue that does not exist on the broker, or that
no worker consumes while the shared queue has consumers (the workers run another ordering than
this process's settings say), is replaced by the shared ``P.inbound`` queue (``worker.requeue``),
so a drain never strands what it moves.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)

from botrelay.shared import topology
from botrelay.shared.broker import connect
from botrelay.shared.headers import CONVERSATION
from botrelay.shared.settings import Settings
from botrelay.worker.moving import move_all
from botrelay.worker.requeue import Destinations


@dataclass
class DrainReport:
    moved: dict[str, int] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.moved.values())


def orphaned_queues(settings: Settings, old_partitions: int) -> list[str]:
    """Partition queues of the old count that the current settings do not consume."""
    first = 0 if settings.ordering == "none" else settings.partitions
    return [topology.partition_queue(settings.prefix, n) for n in range(first, old_partitions)]


async def drain(settings: Settings, old_partitions: int, *, delete: bool = False,
                idle: float = 2.0) -> DrainReport:
    """Move every message of the orphaned partition queues; a queue counts as drained once it
    gave nothing for ``idle`` seconds. Run it after the workers with the old settings are gone
    (a partition queue delivers to one consumer at a time)."""
    report = DrainReport()
    connection = await connect(settings, "botrelay-drain")
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(topology.exchange_name(settings.prefix),
                                              ensure=False)
        destinations = Destinations(connection, settings.prefix)
        for name in orphaned_queues(settings, old_partitions):
            probe = await connection.channel()
            try:
                await probe.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                continue  # never existed, nothing to move
            with contextlib.suppress(Exception):
                await probe.close()
            report.moved[name] = await _move_all(channel, exchange, settings, destinations,
                                                 name, idle)
            if delete and await _is_empty(connection, name):
                # Quorum queues take no if-empty delete: checked just above instead.
                await channel.queue_delete(name)
                report.deleted.append(name)
    finally:
        await connection.close()
    return report


async def _is_empty(connection: AbstractConnection, name: str) -> bool:
    probe = await connection.channel()
    try:
        queue = await probe.declare_queue(name, passive=True)
        return not queue.declaration_result.message_count
    finally:
        with contextlib.suppress(Exception):
            await probe.close()


async def _move_all(channel: AbstractChannel, exchange: AbstractExchange, settings: Settings,
                    destinations: Destinations, name: str, idle: float) -> int:
    async def forward(copy: aio_pika.Message, message: AbstractIncomingMessage) -> None:
        conversation = str((message.headers or {}).get(CONVERSATION) or "")
        wanted = topology.queue_of_inbound_key(
            settings.prefix, topology.inbound_key(settings, conversation))
        key = await destinations.key_for(wanted)
        await exchange.publish(copy, key, mandatory=True, timeout=10)

    return await move_all(channel, name, forward, idle)
