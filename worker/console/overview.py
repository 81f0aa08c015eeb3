"""What the overview shows: every queue's depth and consumers, read by passive declares only
(nothing is declared or changed), the workers and the partitions each holds, and a short
in-process history of the depths and of the flow (``flow.py``) for the charts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

import redis.asyncio as aioredis
from aio_pika.abc import AbstractConnection

from botrelay.shared import topology
from botrelay.shared.broker import connect
from botrelay.shared.redis_connect import make_redis
from botrelay.shared.settings import Settings
from botrelay.worker.console import holders
from botrelay.worker.console.flow import FlowPoint, Scraper
from botrelay.worker.console.holders import WorkerRow
from botrelay.worker.requeue import probe

# Partition queues are looked for up to this count, whatever this process's BOTRELAY_PARTITIONS,
# so the console shows the partitions the workers use even when it runs with other settings.
MAX_PARTITIONS = 64
HISTORY = 120  # samples kept: ten minutes at one per five seconds


@dataclass(frozen=True, slots=True)
class QueueRow:
    name: str
    role: str  # inbound, partition, retry, dead
    messages: int
    consumers: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    queues: tuple[QueueRow, ...]

    def depth(self, role: str) -> int:
        return sum(q.messages for q in self.queues if q.role == role)

    @property
    def dead(self) -> int:
        return self.depth("dead")


async def _row(connection: AbstractConnection, name: str, role: str) -> QueueRow | None:
    state = await probe(connection, name)
    return QueueRow(name, role, state.messages, state.consumers) if state.exists else None


async def snapshot(settings: Settings) -> Snapshot:
    prefix = settings.prefix
    connection = await connect(settings, "botrelay-console")
    try:
        rows = []
        for n in range(max(MAX_PARTITIONS, settings.partitions)):
            row = await _row(connection, topology.partition_queue(prefix, n), "partition")
            if row is None:
                break  # partitions are numbered from 0: the first missing one ends them
            rows.append(row)
        others = [(topology.inbound_queue(prefix), "inbound")]
        others += [(topology.retry_queue(prefix, d), "retry") for d in settings.retry_delays]
        others.append((topology.dead_queue(prefix), "dead"))
        for name, role in others:
            row = await _row(connection, name, role)
            if row is not None:
                rows.append(row)
    finally:
        await connection.close()
    # The shared inbound queue first, as the pipeline reads.
    rows.sort(key=lambda r: ("inbound", "partition", "retry", "dead").index(r.role))
    return Snapshot(time.time(), tuple(rows))


@dataclass(frozen=True, slots=True)
class Overview:
    queues: Snapshot
    workers: list[WorkerRow] | None  # None: no Redis, so no partition leases to read
    depths: tuple[Snapshot, ...]
    flow: tuple[FlowPoint, ...]
    metrics_urls: tuple[str, ...]


class History:
    """Samples taken in the background while the console runs: queue depths and the flow
    scraped from the processes' metrics, for the charts."""

    def __init__(self, settings: Settings, every: float = 5.0,
                 metrics_urls: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.every = every
        self.samples: deque[Snapshot] = deque(maxlen=HISTORY)
        self.flow: deque[FlowPoint] = deque(maxlen=HISTORY)
        self.scraper = Scraper(metrics_urls)
        self._redis = (make_redis(settings, socket_timeout=2)
                       if settings.redis_enabled else None)
        self._task: asyncio.Task[None] | None = None

    async def workers(self, partitions: int) -> list[WorkerRow] | None:
        if self._redis is None:
            return None
        try:
            return await holders.read(self._redis, self.settings.prefix, partitions)
        except aioredis.RedisError:
            return None

    async def overview(self) -> Overview:
        """Fresh depths and holders (what the page says now), with the history for charts."""
        shot = await snapshot(self.settings)
        partitions = sum(1 for q in shot.queues if q.role == "partition")
        return Overview(shot, await self.workers(partitions), tuple(self.samples),
                        tuple(self.flow), self.scraper.urls)

    async def _sample(self) -> None:
        with contextlib.suppress(Exception):  # a broker hiccup only leaves a gap
            self.samples.append(await snapshot(self.settings))
        point = await self.scraper.sample(time.time())
        if point is not None:
            self.flow.append(point)

    async def _run(self) -> None:
        while True:
            await self._sample()
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.scraper.close()
        if self._redis is not None:
            await self._redis.aclose()
