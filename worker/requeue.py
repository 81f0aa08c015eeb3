"""Where a message taken out of the pipeline (a dead letter, a stranded callback) goes back to.

The tools that return messages (``botrelay dlq replay``, ``botrelay drain``, the console) may run
with other ordering settings than the workers; routing by their own settings could move a message
into a partition queue no worker reads, where it sits unseen. So a destination is only ever a
queue that exists on the broker, checked with a passive declare (which changes nothing), and the
fallback is the shared ``P.inbound`` queue: it exists in both ordering modes and every worker
consumes it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import aiormq
from aio_pika.abc import AbstractConnection

from botrelay.shared import topology


@dataclass(frozen=True, slots=True)
class QueueState:
    exists: bool
    messages: int = 0
    consumers: int = 0


async def probe(connection: AbstractConnection, name: str) -> QueueState:
    """A queue's depth and consumers by passive declare, on a channel of its own (a missing queue
    closes the channel it was asked on)."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return QueueState(exists=False)
    result = queue.declaration_result
    with contextlib.suppress(Exception):
        await channel.close()
    return QueueState(True, result.message_count or 0, result.consumer_count or 0)


@dataclass
class Destinations:
    """Resolves wanted inbound queues to routing keys, asking the broker once per queue."""

    connection: AbstractConnection
    prefix: str
    _states: dict[str, QueueState] = field(default_factory=dict)

    async def _state(self, name: str) -> QueueState:
        if name not in self._states:
            self._states[name] = await probe(self.connection, name)
        return self._states[name]

    async def key_for(self, wanted_queue: str | None) -> str:
        """The routing key to publish with: ``wanted_queue``'s, when it is an inbound queue of
        this prefix that exists and is consumed (or nothing is consumed right now, e.g. the
        workers are restarting: they come back to it); else the shared queue's."""
        key = topology.inbound_key_of_queue(self.prefix, wanted_queue or "")
        if key is None or key == topology.INBOUND_KEY:
            return topology.INBOUND_KEY
        state = await self._state(wanted_queue or "")
        if not state.exists:
            return topology.INBOUND_KEY
        if state.consumers == 0:
            shared = await self._state(topology.inbound_queue(self.prefix))
            if shared.consumers > 0:
                return topology.INBOUND_KEY
        return key
