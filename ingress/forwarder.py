"""Hands spooled callbacks to the broker: oldest first, each with the broker's confirm, and each
deleted from the spool only after its confirm.

It reads a window of the oldest records and publishes them together; the confirm batcher
(``shared.publisher``) writes them in that order, so they enter their queues in arrival order.
A record whose publish fails stays and is tried again, oldest first, after a pause; one that
was published but whose confirm was lost (or the ingress died before deleting it) is published
again, and the worker's dedup on the message id answers it once.
"""

from __future__ import annotations

import asyncio
import logging

from botrelay.ingress.spool import Record, Spool
from botrelay.shared.broker import PUBLISH_ERRORS, BrokerUnavailable
from botrelay.shared.headers import CONVERSATION
from botrelay.shared.metrics import IngressMetrics
from botrelay.shared.settings import Settings
from botrelay.shared.topology import inbound_key
from botrelay.shared.transport import Broker

log = logging.getLogger("botrelay.spool")

WINDOW = 64  # records in flight at once: enough to drain thousands a second
_IDLE_POLL = 0.2  # seconds between looks at a broker that is not ready
_MAX_PAUSE = 5.0  # seconds, the longest wait after failed publishes


class Forwarder:
    def __init__(self, spool: Spool, broker: Broker, settings: Settings,
                 metrics: IngressMetrics) -> None:
        self.spool = spool
        self.broker = broker
        self.settings = settings
        self.metrics = metrics

    async def run(self) -> None:
        """Forever (the app's cleanup cancels it); never raises on a broker or spool error."""
        pause = _IDLE_POLL
        while True:
            await self.spool.wait_nonempty()
            if not self.broker.ready:
                await asyncio.sleep(_IDLE_POLL)
                continue
            try:
                sent, tried = await self._forward_window()
            except Exception:
                # A spool read or delete failed (disk trouble): keep the process serving.
                log.exception("forwarding from the spool failed; trying again")
                sent, tried = 0, 1
            if sent < tried:
                await asyncio.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE)
            else:
                pause = _IDLE_POLL
                if tried == 0:  # only appends still being committed: let them land
                    await asyncio.sleep(0.01)

    async def _forward_window(self) -> tuple[int, int]:
        records = await self.spool.oldest(WINDOW)
        if not records:
            return 0, 0
        results = await asyncio.gather(*(self._publish(r) for r in records),
                                       return_exceptions=True)
        done = [r for r, res in zip(records, results, strict=True) if res is None]
        failed = [res for res in results if res is not None]
        if done:
            await self.spool.delete(done)
            self.metrics.spool_forwarded.inc(len(done))
        if failed:
            first = failed[0]
            log.warning("%d of %d spooled callbacks not confirmed (%s); %d left in the spool",
                        len(failed), len(records), type(first).__name__, self.spool.depth)
            for res in failed:
                if not isinstance(res, (BrokerUnavailable, *PUBLISH_ERRORS)):
                    raise res
        elif self.spool.empty:
            log.info("spool drained")
        return len(done), len(records)

    async def _publish(self, record: Record) -> None:
        await self.broker.publish_callback(
            record.body,
            inbound_key(self.settings, str(record.headers.get(CONVERSATION, ""))),
            message_id=record.message_id,
            headers=record.headers,
            timeout=self.settings.publish_timeout,
        )
