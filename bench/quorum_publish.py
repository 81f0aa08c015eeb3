"""``python -m bench.quorum_publish``: confirmed publishes per second into quorum queues, on the
single node at ``BENCH_AMQP_URL`` and on a private 3-node cluster (``tests.cluster_harness``).

One publisher keeps ``--window`` publishes unconfirmed (as a busy ingress does), 1 KiB bodies,
for ``--seconds``, into 1 queue and then into 4 queues (routing spread), each queue replicated
on every node of the cluster. All traffic stays on 127.0.0.1; the cluster and the queues are
deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
import uuid

import aio_pika

from bench.common import AMQP_URL
from tests.cluster_harness import start_rabbit_cluster

BODY = b"x" * 1024


async def rate(url: str, queues: int, seconds: float, window: int, cluster: bool) -> float:
    connection = await aio_pika.connect(url)
    prefix = f"bqp{uuid.uuid4().hex[:8]}"
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(prefix, aio_pika.ExchangeType.DIRECT)
        arguments = {"x-queue-type": "quorum"}
        if cluster:
            arguments.update({"x-quorum-initial-group-size": 3,
                              "x-queue-leader-locator": "balanced"})
        names = [f"{prefix}.{n}" for n in range(queues)]
        for name in names:
            queue = await channel.declare_queue(name, durable=True, arguments=arguments)
            await queue.bind(exchange, name)
        sem = asyncio.Semaphore(window)
        done = 0
        stop_at = time.monotonic() + seconds

        async def one(i: int) -> None:
            nonlocal done
            try:
                await exchange.publish(aio_pika.Message(BODY), names[i % queues])
                done += 1
            finally:
                sem.release()

        started = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while time.monotonic() < stop_at:
            await sem.acquire()
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        for name in names:
            await channel.queue_delete(name)
        await channel.exchange_delete(prefix)
    return done / elapsed


async def run_all(urls: dict[str, tuple[str, bool]], seconds: float, window: int) -> None:
    for label, (url, cluster) in urls.items():
        for queues in (1, 4):
            per_s = await rate(url, queues, seconds, window, cluster)
            print(f"{label}: {queues} quorum queue(s): {per_s:,.0f} confirmed publishes/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=256)
    args = parser.parse_args()
    cluster = start_rabbit_cluster()
    try:
        print(f"cluster formed in {cluster.formed_in:.1f}s; memory per node (MB): "
              + ", ".join(f"{v:.0f}" for v in cluster.memory_mb().values()))
        asyncio.run(run_all({"single node": (AMQP_URL, False),
                             "3-node cluster, 3 replicas": (cluster.urls[0], True)},
                            args.seconds, args.window))
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


if __name__ == "__main__":
    main()
