"""A worker's lifetime: open everything in one place, consume, and shut down gracefully.

    async with Worker(settings, bot) as worker:
        await worker.wait_closed()   # or: await worker.until_idle() in tests

With ``BOTRELAY_ORDERING=conversation`` the worker also consumes the inbound partitions it owns
(``worker.partitions``); it always consumes the shared ``P.inbound`` queue.

With Redis, the worker keeps a liveness key (``worker.liveness``) that its dedup claims and
partition leases name: if it dies, another worker takes its work over within seconds.

On stop: cancel the consumers (no new deliveries), let deliveries in flight finish, then close
the channel: whatever is still unacked goes back to the queue for another worker. Nothing is
acked that was not finished. The whole stop (hand-overs, in-flight work, cancelling what is
left) fits in one ``BOTRELAY_SHUTDOWN_GRACE``, so the manifests' termination grace is that plus
a margin to close connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any, cast

import redis.asyncio as aioredis
from aio_pika.abc import AbstractRobustChannel
from aiohttp import web

from botrelay.shared import topology
from botrelay.shared.broker import BrokerLink
from botrelay.shared.metrics import CONTENT_TYPE_LATEST, render
from botrelay.shared.redis_connect import make_redis
from botrelay.shared.settings import Settings
from botrelay.worker.assembly import assemble
from botrelay.worker.bot import Bot
from botrelay.worker.dedup import DedupStore, RedisDedup
from botrelay.worker.liveness import Liveness
from botrelay.worker.loop_watch import watch_loop
from botrelay.worker.partitions import (
    Leases,
    PartitionManager,
    RedisLeases,
    SoloLeases,
    worker_id,
)
from botrelay.worker.reply_client import ReplyClient
from botrelay.worker.subscriptions import Subscriptions

log = logging.getLogger("botrelay.worker")

# How often the worker samples queue depths for the metrics.
DEPTH_INTERVAL = 5.0

# The end of the shutdown grace kept for cancelling what is still running (at most).
CANCEL_RESERVE = 2.0


class Worker:
    def __init__(self, settings: Settings, bot: Bot, *, dedup: DedupStore | None = None,
                 replies: ReplyClient | None = None, name: str = "botrelay-worker") -> None:
        self.settings = settings
        self.bot = bot
        self._liveness_client: aioredis.Redis | None = None
        self.broker = BrokerLink(settings, name)
        self.id = worker_id()
        parts = assemble(settings, bot, self.broker, dedup=dedup, replies=replies,
                         user_agent=f"botrelay-worker/{self.id}")
        self.metrics, self.dedup, self.consumer = parts.metrics, parts.dedup, parts.consumer
        assert isinstance(parts.replies, ReplyClient)  # what assemble makes, or was given
        self.replies = parts.replies
        self.lookup = parts.lookup
        self.liveness: Liveness | None = None
        if settings.redis_enabled:
            # A client of its own: a heartbeat must not queue behind a burst of claims.
            self._liveness_client = make_redis(
                settings, socket_timeout=1.0, socket_connect_timeout=1.0, max_connections=2)
            self.liveness = Liveness(self._liveness_client, settings.prefix, self.id)
            if isinstance(self.dedup, RedisDedup):
                self.dedup.liveness = self.liveness
        self.subscriptions: Subscriptions | None = None
        self._inbound = topology.inbound_queue(settings.prefix)
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics_runner: web.AppRunner | None = None
        self.partitions: PartitionManager | None = None
        self._redis: aioredis.Redis | None = None
        self.metrics_port: int | None = None  # the bound port, once serving
        self.depth_interval = DEPTH_INTERVAL

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start consuming. A start that fails half-way (a broker that refuses the topology,
        Redis gone) closes what it had opened before raising: no task or connection is left."""
        async with contextlib.AsyncExitStack() as undo:
            undo.push_async_callback(self.stop)
            await self._start()
            undo.pop_all()  # started: stop() is now the caller's

    async def _start(self) -> None:
        if self.liveness is not None:
            await self.liveness.start()
            self._tasks.append(asyncio.create_task(self.liveness.run(), name="liveness"))
        await self.broker.start(wait=True)
        channel = self.broker.channel
        assert channel is not None
        # BrokerLink's channels come from connect_robust: robust channels, which reopen.
        self.subscriptions = Subscriptions(cast(AbstractRobustChannel, channel),
                                           self.consumer.on_delivery)
        self._inbound = topology.inbound_queue(self.settings.prefix)
        await self.subscriptions.add(self._inbound, self.settings.concurrency)
        if self.settings.ordering == "conversation":
            self.partitions = PartitionManager(self.settings, self._leases(),
                                               self.consumer.on_delivery,
                                               self._subscribe, self._unsubscribe)
            await self.partitions.rebalance()
            self._tasks.append(asyncio.create_task(self.partitions.run(), name="partitions"))
        self._tasks.append(asyncio.create_task(self._sample_depths(), name="queue-depths"))
        self._tasks.append(asyncio.create_task(watch_loop(self.metrics), name="loop-watch"))
        log.info("worker %s consuming %s (concurrency %d, ordering %s)", self.id,
                 self._inbound, self.settings.concurrency, self.settings.ordering)

    def _leases(self) -> Leases:
        if not self.settings.redis_enabled:
            return SoloLeases(self.id)
        if isinstance(self.dedup, RedisDedup):
            # The dedup store's connection pool serves the leases too (it closes it at stop,
            # after the partitions were handed back).
            assert self.liveness is not None
            return RedisLeases(self.dedup.client, self.settings.prefix, self.liveness)
        assert self.liveness is not None
        self._redis = make_redis(self.settings, socket_timeout=2.0, socket_connect_timeout=2.0)
        return RedisLeases(self._redis, self.settings.prefix, self.liveness)

    async def _subscribe(self, name: str, prefetch: int, callback: Any) -> str:
        assert self.subscriptions is not None
        return await self.subscriptions.add(name, prefetch, callback)

    async def _unsubscribe(self, name: str, tag: str) -> None:
        if self.subscriptions is not None:
            await self.subscriptions.remove(name)

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
        loop = asyncio.get_running_loop()
        grace = self.settings.shutdown_grace
        # One grace for everything: hand-overs and in-flight work until ``work_until``, the
        # rest of it to cancel what still runs.
        deadline = loop.time() + grace
        work_until = deadline - min(CANCEL_RESERVE, grace / 5)
        if self.subscriptions is not None:
            await self.subscriptions.remove(self._inbound)
        if self.partitions is not None:
            # Stop rebalancing first, then hand every partition back once its deliveries are
            # settled, so the next owner starts right after the last message this one took.
            for task in self._tasks:
                if task.get_name() == "partitions":
                    task.cancel()
            await self.partitions.stop(settle=max(0.0, work_until - loop.time()))
        if self.consumer.in_flight:
            left = max(0.0, work_until - loop.time())
            log.info("waiting up to %.1fs for %d deliveries in flight", left,
                     self.consumer.in_flight)
            try:
                await asyncio.wait_for(self.consumer.idle.wait(), left)
            except TimeoutError:
                log.warning("%d deliveries unfinished after the grace period; they go back to "
                            "the queue", self.consumer.in_flight)
                await self.consumer.cancel_in_flight(
                    timeout=max(0.1, deadline - loop.time()))
        if self.liveness is not None:
            # Nothing of ours is in flight any more: what this worker still holds is free now.
            await self.liveness.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._close_clients()

    async def _close_clients(self) -> None:
        if self.subscriptions is not None:
            self.subscriptions.close()
        await self.broker.close()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        if self._liveness_client is not None:
            with contextlib.suppress(Exception):
                await self._liveness_client.aclose()
        await self.replies.close()
        if self.lookup is not None:
            await self.lookup.close()
        with contextlib.suppress(Exception):
            await self.dedup.close()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        log.info("worker stopped")
