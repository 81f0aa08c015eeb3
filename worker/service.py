"""A worker's lifetime: open everything in one place, consume, and shut down gracefully.

    async with Worker(settings, bot) as worker:
        await worker.wait_closed()   # or: await worker.until_idle() in tests

On stop: cancel the consumer (no new deliveries), let deliveries in flight finish within
``BOTRELAY_SHUTDOWN_GRACE``, then close the channel: whatever is still unacked goes back to the
queue for another worker. Nothing is acked that was not finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from aio_pika.abc import AbstractQueue
from aiohttp import web

from shared import topology
from shared.broker import BrokerLink
from shared.metrics import CONTENT_TYPE_LATEST, WorkerMetrics, render
from shared.settings import Settings
from worker.bot import Bot
from worker.consumer import Consumer
from worker.dedup import DedupStore, make_store
from worker.reply_client import ReplyClient
from worker.retry import Mover

log = logging.getLogger("botrelay.worker")

# How often the worker samples queue depths for the metrics.
DEPTH_INTERVAL = 5.0


class Worker:
    def __init__(self, settings: Settings, bot: Bot, *, dedup: DedupStore | None = None,
                 replies: ReplyClient | None = None, name: str = "botrelay-worker") -> None:
        self.settings = settings
        self.bot = bot
        self.metrics = WorkerMetrics()
        self.broker = BrokerLink(settings, name)
        self.dedup = dedup or make_store(settings)
        self.replies = replies or ReplyClient(settings, self.metrics)
        self.consumer = Consumer(settings, bot, self.dedup, self.replies,
                                 Mover(settings, self.broker), self.metrics)
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics_runner: web.AppRunner | None = None
        self.metrics_port: int | None = None  # the bound port, once serving
        self.depth_interval = DEPTH_INTERVAL

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.broker.start(wait=True)
        channel = self.broker.channel
        assert channel is not None
        await channel.set_qos(prefetch_count=self.settings.concurrency)
        self._queue = await channel.get_queue(
            topology.inbound_queue(self.settings.prefix), ensure=False
        )
        self._consumer_tag = await self._queue.consume(self.consumer.on_delivery)
        self._tasks.append(asyncio.create_task(self._sample_depths(), name="queue-depths"))
        log.info("worker consuming %s (concurrency %d)",
                 topology.inbound_queue(self.settings.prefix), self.settings.concurrency)

    async def serve_metrics(self, port: int, host: str = "0.0.0.0") -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._metrics_runner = web.AppRunner(app, access_log=None)
        await self._metrics_runner.setup()
        site = web.TCPSite(self._metrics_runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None)
        if sockets:
            port = sockets[0].getsockname()[1]
        self.metrics_port = port
        log.info("worker metrics on http://%s:%d/metrics", host, port)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=render(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = self.broker.ready and not self._stopped.is_set()
        return web.json_response({"status": "ready" if ready else "not ready"},
                                 status=200 if ready else 503)

    async def _sample_depths(self) -> None:
        # A channel of its own: a passive declare of a missing queue closes the channel it
        # runs on, and the robust channel's own declare_queue(passive=True) answers from its
        # cache (a stale count) instead of asking the broker.
        connection = self.broker.connection
        assert connection is not None
        channel = await connection.channel(publisher_confirms=False)
        try:
            while True:
                for name in topology.all_queue_names(self.settings):
                    with contextlib.suppress(Exception):
                        raw = await channel.get_underlay_channel()
                        result = await raw.queue_declare(name, passive=True)
                        self.metrics.queue_depth.labels(name).set(result.message_count or 0)
                await asyncio.sleep(self.depth_interval)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def until_idle(self, quiet: float = 0.3) -> None:
        """Return once no delivery has been in flight for ``quiet`` seconds (tests, tools);
        bound it with ``asyncio.timeout``."""
        while True:
            await self.consumer.idle.wait()
            await asyncio.sleep(quiet)
            if self.consumer.idle.is_set():
                return

    async def wait_closed(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._consumer_tag)
        if self.consumer.in_flight:
            log.info("waiting up to %.0fs for %d deliveries in flight",
                     self.settings.shutdown_grace, self.consumer.in_flight)
            try:
                await asyncio.wait_for(self.consumer.idle.wait(), self.settings.shutdown_grace)
            except TimeoutError:
                log.warning("%d deliveries unfinished after the grace period; they go back to "
                            "the queue", self.consumer.in_flight)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.broker.close()
        await self.replies.close()
        with contextlib.suppress(Exception):
            await self.dedup.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        log.info("worker stopped")
