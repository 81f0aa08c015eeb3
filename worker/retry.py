"""Moving a delivery elsewhere: to a retry queue (later attempt), or to the dead-letter queue.

Always publish-confirm first, then ack the original: a crash in between duplicates the message
(dedup absorbs that), it never loses it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from shared import topology
from shared.broker import BrokerLink, make_message
from shared.errors import describe
from shared.headers import ATTEMPT, ERROR, ERROR_KIND, FAILED_AT, QUEUE
from shared.settings import Settings

log = logging.getLogger("botrelay.retry")


def attempt_of(delivery: AbstractIncomingMessage) -> int:
    value = (delivery.headers or {}).get(ATTEMPT)
    try:
        return max(1, int(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1


def _copy(delivery: AbstractIncomingMessage, headers: dict[str, Any]) -> Any:
    return make_message(
        delivery.body,
        message_id=delivery.message_id or "",
        headers=headers,
        timestamp=delivery.timestamp.timestamp() if delivery.timestamp else None,
    )


class Mover:
    def __init__(self, settings: Settings, broker: BrokerLink) -> None:
        self.settings = settings
        self.broker = broker
        self._retry_exchanges: dict[float, Any] = {}

    async def _retry_exchange(self, delay: float) -> Any:
        exchange = self._retry_exchanges.get(delay)
        if exchange is None:
            assert self.broker.channel is not None
            # Declared by topology.declare already; get_exchange only builds the handle.
            exchange = await self.broker.channel.get_exchange(
                topology.retry_queue(self.settings.prefix, delay), ensure=False
            )
            self._retry_exchanges[delay] = exchange
        return exchange

    async def to_retry(self, delivery: AbstractIncomingMessage, *, attempt: int,
                       delay: float, routing_key: str = topology.INBOUND_KEY) -> float:
        """Publish a copy to the retry queue nearest ``delay`` with ``attempt``, then ack."""
        delay = topology.pick_delay(self.settings.retry_delays, delay)
        headers = dict(delivery.headers or {})
        headers[ATTEMPT] = attempt
        # The routing key travels with the message; the retry queue dead-letters it back to
        # the main exchange under that key when its TTL runs out.
        await self.broker.publish(
            _copy(delivery, headers), routing_key, exchange=await self._retry_exchange(delay)
        )
        await delivery.ack()
        return delay

    async def to_dead(self, delivery: AbstractIncomingMessage, exc: BaseException, *,
                      permanent: bool) -> None:
        """Publish a copy to the DLQ with why it failed, then ack."""
        headers = dict(delivery.headers or {})
        headers[ERROR] = describe(exc)
        headers[ERROR_KIND] = "permanent" if permanent else "transient"
        headers[FAILED_AT] = int(time.time() * 1000)
        headers[QUEUE] = topology.inbound_queue(self.settings.prefix)
        await self.broker.publish(_copy(delivery, headers), topology.DEAD_KEY)
        await delivery.ack()
