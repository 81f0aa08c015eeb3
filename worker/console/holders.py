"""Which worker holds which partition, read from the workers' own bookkeeping in Redis.

The broker cannot say it: a partition queue's single active consumer is not visible over AMQP
(only its consumer count is), and the management plugin may not be there. The workers agree on
partitions through Redis (``worker.partitions``): a sorted set ``P:members:{P}`` of live
workers (score = when its heartbeat expires) and one lease key ``P:partition:{P}:N`` per
partition holding its owner: the liveness key of the owner's session,
``P:alive:{P}:<worker id>.<session>`` (``worker.liveness``). Reading them is plain GETs: the
console changes nothing there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from botrelay.worker.liveness import worker_of
from botrelay.worker.partitions import lease_key, members_key


@dataclass(frozen=True, slots=True)
class WorkerRow:
    id: str
    partitions: tuple[int, ...]
    live: bool  # in the members set; False: its lease has not expired yet but it is gone


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def read(client: aioredis.Redis, prefix: str, partitions: int) -> list[WorkerRow]:
    now_ms = time.time() * 1000
    live = [worker_of(prefix, _text(m))
            for m in await client.zrangebyscore(members_key(prefix), now_ms, "+inf")]
    owners = await client.mget([lease_key(prefix, n) for n in range(partitions)]) \
        if partitions else []
    held: dict[str, list[int]] = {member: [] for member in live}
    for n, owner in enumerate(owners):
        if owner is not None:
            held.setdefault(worker_of(prefix, _text(owner)), []).append(n)
    return [WorkerRow(member, tuple(held[member]), member in live) for member in sorted(held)]
