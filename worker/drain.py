"""Moving callbacks out of inbound queues the current settings no longer use.

After lowering ``BOTRELAY_PARTITIONS`` (say 32 -> 16) or switching ``BOTRELAY_ORDERING`` to
``none``, the partition queues past the new count (or all of them) get no consumer. ``botrelay
drain --from-partitions 32`` moves what they still hold to where the current settings route it
(by the ``x-botrelay-conversation`` header): publish with confirm, then ack. Nothing is lost; a
crash in between leaves a copy in both places, which dedup absorbs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import aiormq

from shared import topology
from shared.broker import connect, make_message
from shared.headers import CONVERSATION
from shared.settings import Settings


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
                batch_limit: int = 1_000_000) -> DrainReport:
    report = DrainReport()
    connection = await connect(settings, "botrelay-drain")
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await topology.declare(channel, settings)
        for name in orphaned_queues(settings, old_partitions):
            probe = await connection.channel()
            try:
                queue = await probe.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                continue  # never existed, nothing to move
            count = queue.declaration_result.message_count or 0
            with contextlib.suppress(Exception):
                await probe.close()
            source = await channel.get_queue(name, ensure=False)
            moved = 0
            for _ in range(min(count, batch_limit)):
                message = await source.get(no_ack=False, fail=False, timeout=10)
                if message is None:
                    break
                conversation = str((message.headers or {}).get(CONVERSATION) or "")
                await exchange.publish(
                    make_message(message.body, message_id=message.message_id or "",
                                 headers=dict(message.headers or {}),
                                 timestamp=message.timestamp.timestamp()
                                 if message.timestamp else None),
                    topology.inbound_key(settings, conversation), mandatory=True, timeout=10)
                await message.ack()
                moved += 1
            report.moved[name] = moved
            if delete:
                await channel.queue_delete(name, if_empty=True)
                report.deleted.append(name)
    finally:
        await connection.close()
    return report
