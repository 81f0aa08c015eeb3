"""Moving a delivery elsewhere: to a retry queue (later attempt), or to the dead-letter queue.

Always publish-confirm first, then ack the original: a crash in between duplicates the message
(dedup absorbs that), it never loses it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from botrelay.shared import topology
from botrelay.shared.broker import make_message
from botrelay.shared.errors import describe
from botrelay.shared.headers import ATTEMPT, ERROR, ERROR_KIND, FAILED_AT, QUEUE
from botrelay.shared.settings import Settings
from botrelay.shared.transport import Broker, Delivery

log = logging.getLogger("botrelay.retry")


def attempt_of(delivery: Delivery) -> int:
    value = (delivery.headers or {}).get(ATTEMPT)
    try:
        return max(1, int(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1


def _copy(delivery: Delivery, headers: dict[str, Any]) -> Any:
    return make_message(
        delivery.body,
        message_id=delivery.message_id or "",
        headers=headers,
        timestamp=delivery.timestamp.timestamp() if delivery.timestamp else None,
    )


class Mover:
    """Works over any ``Broker``: RabbitMQ (``BrokerLink``) or the in-memory one."""

    def __init__(self, settings: Settings, broker: Broker) -> None:
        self.settings = settings
        self.broker = broker

    async def to_retry(self, delivery: Delivery, *, attempt: int, delay: float,
                       extra: dict[str, Any] | None = None) -> float:
        """Publish a copy to the retry queue nearest ``delay`` with ``attempt`` (and the
        ``extra`` headers), then ack."""
        delay = topology.pick_delay(self.settings.retry_delays, delay)
        headers = {**(delivery.headers or {}), **(extra or {})}
        headers[ATTEMPT] = attempt
        # The routing key travels with the message (its partition, or the shared queue); the
        # retry queue dead-letters it back to the main exchange under that key.
        routing_key = delivery.routing_key or topology.INBOUND_KEY
        await self.broker.publish_delayed(_copy(delivery, headers), delay, routing_key)
        await delivery.ack()
        return delay

    async def to_dead(self, delivery: Delivery, exc: BaseException, *,
                      permanent: bool) -> None:
        """Publish a copy to the DLQ with why it failed, then ack."""
        headers = dict(delivery.headers or {})
        headers[ERROR] = describe(exc)
        headers[ERROR_KIND] = "permanent" if permanent else "transient"
        headers[FAILED_AT] = int(time.time() * 1000)
        # The queue it was taken from (its partition, or the shared queue): where a replay
        # returns it, whatever the replaying process's own ordering settings are.
        headers[QUEUE] = topology.queue_of_inbound_key(
            self.settings.prefix, delivery.routing_key or topology.INBOUND_KEY)
        await self.broker.publish(_copy(delivery, headers), topology.DEAD_KEY)
        await delivery.ack()
