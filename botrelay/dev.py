"""``botrelay dev``: the ingress and a worker in one process, on the in-memory broker.

The worker part is the production ``Consumer`` and ``Mover`` over a ``MemoryBroker``, so retries,
dead letters and dedup behave as they do on RabbitMQ; only durability is missing. Each reply is
printed as one line (``reply -> user cometchat-uid-1: echo: hi``) and, when
``BOTRELAY_COMETCHAT_API_KEY`` is set, also sent to the reply API; so is each retry and each dead
letter (``dead letter <- <key>: RuntimeError: ... (transient, attempt 6)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from types import TracebackType
from typing import Any, TextIO

from aiohttp import web

from botrelay.shared.headers import ATTEMPT, ERROR, ERROR_KIND
from botrelay.shared.settings import Settings
from botrelay.shared.topology import DEAD_KEY
from botrelay.worker.assembly import assemble
from botrelay.worker.bot import Bot
from botrelay.worker.consumer import ReplySender
from botrelay.worker.dedup import DedupStore, MemoryDedup
from botrelay.worker.memory_broker import MemoryBroker, Stored
from botrelay.worker.reply import describe_reply
from botrelay.worker.reply_client import ReplyClient

log = logging.getLogger("botrelay.dev")

BANNER = (
    "botrelay dev: ingress and worker in one process on an IN-MEMORY broker.\n"
    "Nothing survives a restart: messages in flight, retries, dead letters and the dedup "
    "record are lost when this process stops. For production run `botrelay ingress` and "
    "`botrelay worker` with RabbitMQ."
)


def describe_move(stored: Stored) -> str:
    """One readable line for a message sent to a retry queue or the dead-letter queue."""
    headers = stored.headers
    if stored.routing_key == DEAD_KEY:
        return (f"dead letter <- {stored.message.message_id}: {headers.get(ERROR)} "
                f"({headers.get(ERROR_KIND)}, attempt {headers.get(ATTEMPT)})")
    return (f"retry in {stored.delay:g}s <- {stored.message.message_id} "
            f"(attempt {headers.get(ATTEMPT)})")


class PrintedReplies:
    """A ``ReplySender`` that prints each reply, and sends it too when an API key is set."""

    def __init__(self, settings: Settings, out: TextIO | None = None,
                 client: ReplyClient | None = None) -> None:
        self.settings = settings
        self.out = out or sys.stdout
        self.client = client

    def url(self, app_id: str, bot: str) -> str:
        if self.client is not None:
            return self.client.url(app_id, bot)
        return f"printed://{app_id}/bots/{bot}"  # never requested: replies are only printed

    async def send(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if self.client is not None:
            result = await self.client.send(url, body)
        print(describe_reply(body), file=self.out, flush=True)
        return result

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


class MemoryWorker:
    """A worker on a ``MemoryBroker``: the same ``Consumer`` and ``Mover`` as ``Worker``.

        async with MemoryWorker(settings, bot, broker) as worker:
            await worker.until_idle()
    """

    def __init__(self, settings: Settings, bot: Bot, broker: MemoryBroker, *,
                 replies: ReplySender | None = None, dedup: DedupStore | None = None) -> None:
        self.settings = settings
        self.broker = broker
        parts = assemble(settings, bot, broker, replies=replies,
                         dedup=dedup or MemoryDedup(settings.dedup_lease, settings.dedup_ttl))
        self.metrics, self.dedup, self.consumer = parts.metrics, parts.dedup, parts.consumer
        self.replies = parts.replies
        self._own_replies = parts.owns_replies
        self._tag: str | None = None

    async def __aenter__(self) -> MemoryWorker:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.broker.start()
        self._tag = self.broker.consume(self.consumer.on_delivery, self.settings.concurrency)

    async def until_idle(self, quiet: float = 0.3) -> None:
        """Return once nothing is queued, delayed or in flight for ``quiet`` seconds."""
        while True:
            await self.consumer.idle.wait()
            await asyncio.sleep(quiet)
            if self.consumer.idle.is_set() and self.broker.idle:
                return

    async def stop(self) -> None:
        if self._tag is not None:
            await self.broker.cancel(self._tag)
            self._tag = None
        if self.consumer.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.consumer.idle.wait(), self.settings.shutdown_grace)
        if self._own_replies and isinstance(self.replies, ReplyClient):
            await self.replies.close()
        await self.dedup.close()


async def run_dev(settings: Settings, bot: Bot, stop: asyncio.Event, *,
                  out: TextIO | None = None) -> None:
    """Serve ``POST /callback`` on ``settings.host:port`` until ``stop`` is set."""
    from botrelay.ingress.app import make_app

    out = out or sys.stdout
    print(BANNER, file=out, flush=True)
    client = None
    if settings.cometchat_api_key or settings.cometchat_apps_file:
        settings.check_replies()  # a key goes to a configured app's API, never elsewhere
        client = ReplyClient(settings)
    if client is None:
        print("BOTRELAY_COMETCHAT_API_KEY is not set: replies are printed, not sent.",
              file=out, flush=True)
    else:
        print(f"replies are printed and sent to {settings.cometchat_api_base}",
              file=out, flush=True)
    broker = MemoryBroker(settings, on_move=lambda stored: print(
        describe_move(stored), file=out, flush=True))
    replies = PrintedReplies(settings, out, client)
    # With nothing sent, any appId is fine: dev mode answers whatever a tutorial posts.
    app = make_app(settings, broker=broker, any_app=client is None)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        async with MemoryWorker(settings, bot, broker, replies=replies):
            await web.TCPSite(runner, settings.host, settings.port).start()
            print(f"listening on http://{settings.host}:{settings.port}/callback",
                  file=out, flush=True)
            await stop.wait()
    finally:
        await runner.cleanup()
        await replies.close()
