"""The broker connection: robust, over one node or a cluster's list; the topology is re-declared
each time it reconnects.

``BrokerLink`` keeps one robust connection (``shared.amqp_nodes``: with several URLs in
``BOTRELAY_AMQP_URL`` it moves to the next node when its node dies) and one publisher-confirm
channel. It starts even when the broker is down (it keeps trying in the background), so an
ingress can come up first and answer 503 until the broker is there, instead of crash-looping.

With a cluster, a publish the broker did not confirm because its node died or its queue was
electing a new leader (a nack, or the channel closing under it) is sent again, on the next node,
within the same timeout. Sending twice is safe: the copy carries the same ``message_id`` and the
worker's dedup store answers it once. A single node has no elections: there a failed publish is
reported at once, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
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
from botrelay.shared.amqp_nodes import connect_nodes
from botrelay.shared.logs import describe
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


# What is worth sending again on a cluster: the broker's nack (a queue without a leader for a
# moment, or full), the channel or connection gone before the confirm. Not a return (unroutable:
# a missing binding stays missing) and not the timeout (the budget is spent).
RETRYABLE: tuple[type[BaseException], ...] = (
    BrokerUnavailable,
    aio_pika.exceptions.DeliveryError,
    aiormq.exceptions.DeliveryError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
    RuntimeError,
)
NACKS: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.DeliveryError,
    aiormq.exceptions.DeliveryError,
)


class ChannelRenewed(Exception):
    """Why a channel was closed on purpose: a fresh one replaces it (``_renew_channel``)."""


# Attempts per publish on a cluster, and the pause before each retry (seconds).
PUBLISH_ATTEMPTS = 16
_RETRY_PAUSES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.5, 0.5)
# How long one attempt to reach one node may take.
CONNECT_TIMEOUT = 5.0


def redact_url(url: str) -> str:
    """``amqp://guest:***@host/`` for logs: never print a password."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


async def connect(settings: Settings, name: str) -> AbstractRobustConnection:
    """A robust connection named for the process (visible in the management UI), to the first
    node of ``BOTRELAY_AMQP_URL`` that answers."""
    return await connect_nodes(
        settings.amqp_urls,
        timeout=CONNECT_TIMEOUT,
        client_properties={"connection_name": name},
        reconnect_interval=1.0,
    )


def redact_urls(urls: tuple[str, ...]) -> str:
    return ",".join(redact_url(u) for u in urls)


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
        self.retry_publishes = len(settings.amqp_urls) > 1
        self._renewed_at = 0.0

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
                # The cause, not only the class: a broker whose TLS certificate is not trusted
                # must not read like one that is down.
                log.warning(
                    "broker %s unreachable (%s); retrying in %.1fs",
                    redact_urls(self.settings.amqp_urls), describe(exc), delay,
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
        log.info("connected to broker %s", redact_url(str(getattr(connection, "url", ""))))

    async def _redeclare(self, *_: Any) -> None:
        if self.channel is not None:
            try:
                self.exchange = await topology.declare(self.channel, self.settings)
            except QueueMismatch as exc:  # someone re-declared a queue meanwhile: say what
                log.error("re-declaring the topology after a reconnect failed: %s", exc)
            except Exception:
                log.exception("re-declaring the topology after a reconnect failed")

    async def _with_retries(self, attempt: Callable[[], Awaitable[None]],
                            timeout: float) -> None:
        """``attempt()`` within ``timeout``; on a cluster, again after a retryable failure,
        once a channel is open again (see the module's docstring)."""
        if not self.retry_publishes:
            async with asyncio.timeout(timeout):
                await attempt()
            return
        deadline = asyncio.get_running_loop().time() + timeout
        last: BaseException | None = None
        for n in range(PUBLISH_ATTEMPTS):
            try:
                async with asyncio.timeout_at(deadline):
                    if n:
                        await asyncio.sleep(_RETRY_PAUSES[min(n - 1, len(_RETRY_PAUSES) - 1)])
                        await self._until_ready()
                    await attempt()
                return
            except RETRYABLE as exc:
                last = exc
                log.info("publish not confirmed (%s); sending again", type(exc).__name__)
                if isinstance(exc, NACKS):
                    await self._renew_channel()
            except TimeoutError:
                # The budget ran out while waiting: report what went wrong before, if anything.
                if last is not None:
                    raise last from None
                raise
        assert last is not None
        raise last

    async def _renew_channel(self) -> None:
        """Replace the channel after a nack on a cluster. Measured on RabbitMQ 3.10: after a
        node dies, a channel that published to one of its queues before the new leader was
        elected nacks every later publish to that queue, while a fresh channel's are confirmed.
        Closing the underlying channel makes the robust channel open a new one and restore its
        queues and consumers on it (deliveries not yet acked come again: dedup answers them).
        At most once a second, so a burst of nacks renews it once."""
        now = asyncio.get_running_loop().time()
        channel = self.channel
        if channel is None or channel.is_closed or now - self._renewed_at < 1.0:
            return
        self._renewed_at = now
        log.warning("the broker refused a publish; opening a fresh channel")
        underlay = await channel.get_underlay_channel()
        with contextlib.suppress(Exception):
            await underlay.close(ChannelRenewed("renewed after a nack"))

    async def _until_ready(self) -> None:
        """Wait for an open channel again: ``ready`` combines the connection's, the channel's
        and the topology's states, so it is polled (the caller's deadline bounds it too)."""
        for _ in range(600):  # 30 s
            if self.ready:
                return
            await asyncio.sleep(0.05)

    async def publish(
        self,
        message: aio_pika.Message,
        routing_key: str,
        *,
        exchange: AbstractExchange | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm; raises on nack, return or timeout."""
        budget = timeout or self.settings.publish_timeout

        async def once() -> None:
            target = exchange or self.exchange
            if target is None or not self.ready:
                raise BrokerUnavailable("no open channel to the broker")
            await target.publish(message, routing_key, mandatory=True, timeout=budget)

        await self._with_retries(once, budget)

    async def publish_callback(self, body: bytes, routing_key: str, *, message_id: str,
                               headers: dict[str, Any], timeout: float | None = None) -> None:
        """``publish(make_message(body, ...), routing_key)``, batched with the other callbacks
        of this event-loop turn into one write (``shared.publisher``); the same guarantees."""
        properties = callback_properties(message_id, headers)

        async def once() -> None:
            await self._publish_callback_once(body, routing_key, properties)

        await self._with_retries(once, timeout or self.settings.publish_timeout)

    async def _publish_callback_once(self, body: bytes, routing_key: str,
                                     properties: spec.Basic.Properties) -> None:
        channel, exchange = self.channel, self.exchange
        if channel is None or exchange is None or not self.ready:
            raise BrokerUnavailable("no open channel to the broker")
        # aio-pika's channels always sit on an ``aiormq.Channel``; the batcher needs its fields.
        underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        try:
            await self._batcher.publish(underlay, exchange.name, routing_key, body, properties)
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
