"""What the overview shows: every queue's depth and consumers, read by passive declares only
(nothing is declared or changed), and a short in-process history of the depths for the charts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

from aio_pika.abc import AbstractConnection

from botrelay.shared import topology
from botrelay.shared.broker import connect
from botrelay.shared.settings import Settings
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
    wanted = [(topology.inbound_queue(prefix), "inbound")]
    wanted += [(topology.partition_queue(prefix, n), "partition")
               for n in range(max(MAX_PARTITIONS, settings.partitions))]
    wanted += [(topology.retry_queue(prefix, d), "retry") for d in settings.retry_delays]
    wanted.append((topology.dead_queue(prefix), "dead"))
    connection = await connect(settings, "botrelay-console")
    try:
        rows = []
        for name, role in wanted:
            row = await _row(connection, name, role)
            if row is not None:
                rows.append(row)
            elif role == "partition":
                break  # partitions are numbered from 0: the first missing one ends them
    finally:
        await connection.close()
    return Snapshot(time.time(), tuple(rows))


class History:
    """Depth samples taken in the background while the console runs."""

    def __init__(self, settings: Settings, every: float = 5.0) -> None:
        self.settings = settings
        self.every = every
        self.samples: deque[Snapshot] = deque(maxlen=HISTORY)
        self._task: asyncio.Task[None] | None = None

    async def latest(self) -> Snapshot:
        shot = await snapshot(self.settings)
        self.samples.append(shot)
        return shot

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a broker hiccup only leaves a gap
                await self.latest()
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
