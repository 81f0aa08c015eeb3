"""What the ingress and the worker need from a broker, and nothing more.

Two implementations keep the same semantics: ``shared.broker.BrokerLink`` (RabbitMQ) and
``worker.memory_broker.MemoryBroker`` (one process, nothing survives a restart). The ingress
publishes through ``Broker.publish``; ``worker.retry.Mover`` moves deliveries with ``publish`` (to
the DLQ) and ``publish_delayed`` (to a retry queue that hands the message back after the delay);
``worker.consumer.Consumer`` settles each ``Delivery`` exactly once with ``ack`` or ``nack``.

Messages travel as ``aio_pika.Message`` values (body, headers, ``message_id``, timestamp): a plain
value object, so the in-memory broker uses it too and both paths build messages the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

import aio_pika


class Delivery(Protocol):
    """One message handed to a consumer; ``aio_pika.abc.AbstractIncomingMessage`` is one."""

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, Any]: ...

    @property
    def message_id(self) -> str | None: ...

    @property
    def timestamp(self) -> datetime | None: ...

    @property
    def routing_key(self) -> str | None: ...

    async def ack(self, multiple: bool = False) -> None: ...

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None: ...


class Broker(Protocol):
    """Publishing with confirms: each call returns only once the broker holds the message, and
    raises (``shared.broker.PUBLISH_ERRORS`` or ``BrokerUnavailable``) when it does not."""

    @property
    def ready(self) -> bool: ...

    async def start(self, *, wait: bool = False) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, message: aio_pika.Message, routing_key: str, *,
                      timeout: float | None = None) -> None:
        """To the main exchange: ``inbound`` (a worker's queue) or ``dead`` (the DLQ)."""

    async def publish_callback(self, body: bytes, routing_key: str, *, message_id: str,
                               headers: dict[str, Any], timeout: float | None = None) -> None:
        """The ingress's hot path: ``publish(make_message(body, message_id=message_id,
        headers=headers), routing_key)``, which an implementation may batch."""

    async def publish_delayed(self, message: aio_pika.Message, delay: float,
                              routing_key: str) -> None:
        """To the retry queue of ``delay`` seconds (one of ``BOTRELAY_RETRY_DELAYS``); after the
        delay the message comes back to the main exchange under ``routing_key``."""
