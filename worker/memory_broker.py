"""An in-process broker with the RabbitMQ semantics botrelay relies on; nothing survives a restart.

It is what ``botrelay dev`` runs on and what the testing kit drives:

- ``publish`` returns once the message is held (the "confirm"); a full inbound queue refuses the
  publish (``QueueFull``) as ``x-overflow: reject-publish`` does, and a closed broker raises
  ``BrokerUnavailable``: the ingress answers 503 for both, as with RabbitMQ.
- Routing key ``dead`` goes to the dead-letter list; every other key to the inbound queue.
- ``publish_delayed`` holds the message for the delay of one configured retry queue, then hands
  it back to the inbound queue under its routing key (the TTL + dead-letter hop of ``P.retry.N``).
- Deliveries must be settled once: ``ack`` drops the message, ``nack(requeue=True)`` puts it back
  at the head, ``nack(requeue=False)`` dead-letters it (the inbound queue's own DLX).
- ``consume(callback, prefetch)`` keeps at most ``prefetch`` deliveries unsettled at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika

from botrelay.shared.broker import BrokerUnavailable, make_message
from botrelay.shared.settings import Settings
from botrelay.shared.topology import DEAD_KEY, INBOUND_KEY

log = logging.getLogger("botrelay.memory_broker")

Callback = Callable[["MemoryDelivery"], Coroutine[Any, Any, None]]


class QueueFull(RuntimeError):
    """The inbound queue is at ``BOTRELAY_INBOUND_MAX_LENGTH``: the publish is refused (a
    ``RuntimeError``, so it is one of ``shared.broker.PUBLISH_ERRORS``)."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A message held by the broker and the routing key it was published with."""

    message: aio_pika.Message
    routing_key: str = INBOUND_KEY
    redelivered: bool = False
    delay: float = 0.0  # for a message in a retry queue: that queue's delay

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.message.headers or {})


class MemoryDelivery:
    """One delivery of a stored message; settle it exactly once."""

    def __init__(self, broker: MemoryBroker, stored: Stored,
                 on_settle: Callable[[], None] | None = None) -> None:
        self._broker = broker
        self._stored = stored
        self._on_settle = on_settle
        self._headers = stored.headers
        self.settled = False

    @property
    def body(self) -> bytes:
        return self._stored.message.body

    @property
    def headers(self) -> dict[str, Any]:
        return self._headers

    @property
    def message_id(self) -> str | None:
        return self._stored.message.message_id

    @property
    def timestamp(self) -> datetime | None:
        return self._stored.message.timestamp

    @property
    def redelivered(self) -> bool:
        return self._stored.redelivered

    @property
    def routing_key(self) -> str:
        return self._stored.routing_key

    def _settle(self) -> None:
        if self.settled:
            raise RuntimeError("delivery already settled")
        self.settled = True
        self._broker.unsettled -= 1
        if self._on_settle is not None:
            self._on_settle()

    async def ack(self, multiple: bool = False) -> None:
        self._settle()
        self._broker.acked += 1

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        self._settle()
        if requeue:
            self._broker.requeue(self._stored)
        else:
            self._broker.dead.append(self._stored)


class MemoryBroker:
    """Implements ``shared.transport.Broker`` in memory, plus consuming and inspection."""

    def __init__(self, settings: Settings, *,
                 on_move: Callable[[Stored], None] | None = None) -> None:
        self.settings = settings
        # Told of each message put in the DLQ or a retry queue (``botrelay dev`` prints them).
        self.on_move = on_move
        self.inbound: deque[Stored] = deque()
        self.dead: list[Stored] = []
        self.acked = 0
        self.unsettled = 0
        self._delayed: dict[int, tuple[Stored, asyncio.TimerHandle]] = {}
        self._ids = itertools.count()
        self._arrived = asyncio.Event()
        self._open = False
        self._consumers: dict[str, asyncio.Task[None]] = {}
        self._running: set[asyncio.Task[None]] = set()

    # --- the Broker interface -----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._open

    async def start(self, *, wait: bool = False) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        for tag in list(self._consumers):
            await self.cancel(tag)
        for _, timer in self._delayed.values():
            timer.cancel()
        self._delayed.clear()

    async def publish(self, message: aio_pika.Message, routing_key: str, *,
                      timeout: float | None = None) -> None:
        self._check_open()
        if routing_key == DEAD_KEY:
            self.dead.append(Stored(message, routing_key))
            if self.on_move is not None:
                self.on_move(self.dead[-1])
            return
        if len(self.inbound) >= self.settings.inbound_max_length:
            raise QueueFull("the inbound queue is full")
        self._enqueue(Stored(message, routing_key))

    async def publish_callback(self, body: bytes, routing_key: str, *, message_id: str,
                               headers: dict[str, Any], timeout: float | None = None) -> None:
        await self.publish(make_message(body, message_id=message_id, headers=headers),
                           routing_key)

    async def publish_delayed(self, message: aio_pika.Message, delay: float,
                              routing_key: str) -> None:
        self._check_open()
        if delay not in self.settings.retry_delays:
            raise ValueError(f"no retry queue for {delay:g}s; configured: "
                             f"{', '.join(f'{d:g}' for d in self.settings.retry_delays)}")
        key = next(self._ids)
        timer = asyncio.get_running_loop().call_later(delay, self._expire, key)
        self._delayed[key] = (Stored(message, routing_key, delay=delay), timer)
        if self.on_move is not None:
            self.on_move(self._delayed[key][0])

    # --- consuming ----------------------------------------------------------------------------

    def get(self) -> MemoryDelivery | None:
        """Take the next inbound message without waiting (``basic.get``); None when empty."""
        if not self.inbound:
            return None
        self.unsettled += 1
        return MemoryDelivery(self, self.inbound.popleft())

    def consume(self, callback: Callback, prefetch: int) -> str:
        """Run ``callback`` for each inbound message, at most ``prefetch`` unsettled at once."""
        tag = f"memory-consumer-{next(self._ids)}"
        self._consumers[tag] = asyncio.create_task(self._consume(callback, prefetch), name=tag)
        return tag

    async def cancel(self, tag: str) -> None:
        """Stop handing out deliveries; those already handed out still run to completion."""
        task = self._consumers.pop(tag, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _consume(self, callback: Callback, prefetch: int) -> None:
        slots = asyncio.Semaphore(prefetch)
        while True:
            await slots.acquire()
            while not self.inbound:
                self._arrived.clear()
                await self._arrived.wait()
            self.unsettled += 1
            delivery = MemoryDelivery(self, self.inbound.popleft(), on_settle=slots.release)
            task = asyncio.create_task(callback(delivery))
            self._running.add(task)
            task.add_done_callback(functools.partial(self._finished, delivery=delivery))

    def _finished(self, task: asyncio.Task[None], delivery: MemoryDelivery) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("consumer callback failed", exc_info=task.exception())
        if not delivery.settled:
            # As when a channel closes with the delivery unacked: it goes back to the queue.
            log.error("a delivery was left unsettled; requeueing it")
            delivery._settle()
            self.requeue(delivery._stored)

    # --- inspection and test helpers ----------------------------------------------------------

    @property
    def delayed(self) -> list[Stored]:
        """Messages waiting in a retry queue, oldest first."""
        return [stored for stored, _ in self._delayed.values()]

    @property
    def idle(self) -> bool:
        """Nothing inbound, nothing delayed, nothing handed out and unsettled."""
        return not self.inbound and not self._delayed and self.unsettled == 0

    def fast_forward(self) -> int:
        """Let every delay run out now: delayed messages go back to the inbound queue."""
        keys = list(self._delayed)
        for key in keys:
            self._delayed[key][1].cancel()
            self._expire(key)
        return len(keys)

    def requeue(self, stored: Stored) -> None:
        self.inbound.appendleft(Stored(stored.message, stored.routing_key, redelivered=True))
        self._arrived.set()

    def _enqueue(self, stored: Stored) -> None:
        self.inbound.append(stored)
        self._arrived.set()

    def _expire(self, key: int) -> None:
        entry = self._delayed.pop(key, None)
        if entry is not None and self._open:
            self._enqueue(Stored(entry[0].message, entry[0].routing_key))

    def _check_open(self) -> None:
        if not self._open:
            raise BrokerUnavailable("the in-memory broker is closed")
