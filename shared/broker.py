"""The broker connection: ``connect_robust`` reconnects, and the topology is re-declared each time.

``BrokerLink`` keeps one robust connection and one publisher-confirm channel. It starts even when
the broker is down (it keeps trying in the background), so an ingress can come up first and answer
503 until the broker is there, instead of crash-looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
    DeliveryMode,
)
from pamqp import commands as spec

from botrelay.shared import topology
from botrelay.shared.publisher import ChannelClosed, ConfirmBatcher
from botrelay.shared.queue_changes import QueueMismatch
from botrelay.shared.settings import Settings

log = logging.getLogger("botrelay.broker")

# What a failed publish can raise: the broker said no (nack, unroutable), the connection or
# channel is gone, or the confirm did not come in time. One tuple, one check.
PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.DeliveryError,
    aio_pika.exceptions.PublishError,
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aio-pika raises it for "channel closed" states during reconnects
)


class BrokerUnavailable(Exception):
    """No open channel to the broker right now."""


def redact_url(url: str) -> str:
    """``amqp://guest:***@host/`` for logs: never print a password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


async def connect(settings: Settings, name: str) -> AbstractRobustConnection:
    """A robust connection named for the process (visible in the management UI)."""
    return await aio_pika.connect_robust(
        settings.amqp_url,
        client_properties={"connection_name": name},
        reconnect_interval=1.0,
        fail_fast=True,
    )


def make_message(
    body: bytes,
    *,
    message_id: str,
    headers: dict[str, Any],
    timestamp: float | None = None,
) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=message_id,
        timestamp=timestamp if timestamp is not None else time.time(),
        headers=headers,
    )


def callback_properties(message_id: str, headers: dict[str, Any]) -> spec.Basic.Properties:
    """What ``make_message`` sets, as the frame's properties directly (the ingress's hot path)."""
    return spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT.value,
        message_id=message_id,
        timestamp=datetime.now(UTC),
        headers=headers,
    )


class BrokerLink:
    """One robust connection plus a confirm channel with the topology declared on it."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractChannel | None = None
        self.exchange: AbstractExchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._retry_exchanges: dict[float, AbstractExchange] = {}
        self._batcher = ConfirmBatcher()

    @property
    def ready(self) -> bool:
        channel = self.channel
        return (
            self.exchange is not None
            and channel is not None
            and not channel.is_closed
            and self.connection is not None
            and not self.connection.is_closed
        )

    async def start(self, *, wait: bool = False) -> None:
        """Connect in the background; with ``wait``, return only once connected."""
        self._task = asyncio.create_task(self._connect_forever(), name=f"{self.name}-connect")
        if wait:
            await self.wait_connected()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected; raise what stopped the link for good (``QueueMismatch``)."""
        assert self._task is not None, "start() first"
        connected = asyncio.ensure_future(self._connected.wait())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({connected, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
        if not self._connected.is_set():
            self._task.result()  # raises the fatal error
            raise RuntimeError("the broker link stopped before it connected")

    async def stopped(self) -> None:
        """Wait until the link gives up for good, raising why (a ``QueueMismatch``): retrying
        cannot help when the settings and the live queues disagree."""
        assert self._task is not None, "start() first"
        await asyncio.shield(self._task)
        await asyncio.Event().wait()  # connected: it never gives up after that

    async def _connect_forever(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._open()
                return
            except QueueMismatch as exc:
                log.error("%s", exc)
                raise
            except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
                log.warning(
                    "broker %s unreachable (%s); retrying in %.1fs",
                    redact_url(self.settings.amqp_url), type(exc).__name__, delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _open(self) -> None:
        connection = await connect(self.settings, self.name)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self.exchange = await topology.declare(channel, self.settings)
        except BaseException:
            await connection.close()
            raise
        self.connection, self.channel = connection, channel
        # The robust channel restores what was declared through it; declaring again after a
        # reconnect also recreates anything deleted meanwhile, and is harmless otherwise.
        connection.reconnect_callbacks.add(self._redeclare)
        self._connected.set()
        log.info("connected to broker %s", redact_url(self.settings.amqp_url))

    async def _redeclare(self, *_: Any) -> None:
        if self.channel is not None:
            try:
                self.exchange = await topology.declare(self.channel, self.settings)
            except QueueMismatch as exc:  # someone re-declared a queue meanwhile: say what
                log.error("re-declaring the topology after a reconnect failed: %s", exc)
            except Exception:
                log.exception("re-declaring the topology after a reconnect failed")

    async def publish(
        self,
        message: aio_pika.Message,
        routing_key: str,
        *,
        exchange: AbstractExchange | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm; raises on nack, return or timeout."""
        target = exchange or self.exchange
        if target is None or not self.ready:
            raise BrokerUnavailable("no open channel to the broker")
        await target.publish(
            message,
            routing_key,
            mandatory=True,
            timeout=timeout or self.settings.publish_timeout,
        )

    async def publish_callback(self, body: bytes, routing_key: str, *, message_id: str,
                               headers: dict[str, Any], timeout: float | None = None) -> None:
        """``publish(make_message(body, ...), routing_key)``, batched with the other callbacks
        of this event-loop turn into one write (``shared.publisher``); the same guarantees."""
        channel, exchange = self.channel, self.exchange
        if channel is None or exchange is None or not self.ready:
            raise BrokerUnavailable("no open channel to the broker")
        # aio-pika's channels always sit on an ``aiormq.Channel``; the batcher needs its fields.
        underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        try:
            async with asyncio.timeout(timeout or self.settings.publish_timeout):
                await self._batcher.publish(underlay, exchange.name, routing_key, body,
                                            callback_properties(message_id, headers))
        except ChannelClosed as exc:
            raise BrokerUnavailable(str(exc)) from exc

    async def publish_delayed(self, message: aio_pika.Message, delay: float,
                              routing_key: str) -> None:
        """Publish to the retry queue of ``delay`` seconds; it dead-letters the message back to
        the main exchange under ``routing_key`` when its TTL runs out."""
        exchange = self._retry_exchanges.get(delay)
        if exchange is None:
            if self.channel is None or not self.ready:
                raise BrokerUnavailable("no open channel to the broker")
            # Declared by topology.declare already; get_exchange only builds the handle.
            exchange = await self.channel.get_exchange(
                topology.retry_queue(self.settings.prefix, delay), ensure=False
            )
            self._retry_exchanges[delay] = exchange
        await self.publish(message, routing_key, exchange=exchange)

    async def close(self) -> None:
        await self._batcher.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        self.connection = self.channel = self.exchange = None
        self._retry_exchanges.clear()
