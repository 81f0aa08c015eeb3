"""Worker drain: a queue preloaded with ``count`` callbacks, drained by the echo bot; replies/s
between the first and the last reply the fake reply API accepted.

Contenders: baseline (2) aio-pika, baseline (3) FastStream, botrelay with memory or Redis
dedup, 1 or 2 worker processes, ordering ``none`` or ``conversation``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aio_pika

from bench.common import (
    AMQP_URL,
    API_KEY,
    ECHO,
    Child,
    bench_settings,
    botrelay_env,
    callback,
    cleanup,
    connect,
    core,
    drain_rate,
    dumps,
    new_prefix,
    python,
    spawn,
    wait_log,
    wait_replies,
)
from botrelay.shared import topology
from botrelay.shared.broker import make_message
from botrelay.shared.fake_cometchat import RunningFake
from botrelay.shared.headers import ATTEMPT, CONVERSATION, RECEIVED_AT, TRIGGER
from botrelay.shared.payloads import parse_body
from botrelay.shared.settings import Settings

PREFETCH = 64  # botrelay's default BOTRELAY_CONCURRENCY, and the baselines' prefetch
BATCH = 500


async def _publish_all(exchange: aio_pika.abc.AbstractExchange,
                       messages: list[tuple[aio_pika.Message, str]]) -> None:
    for start in range(0, len(messages), BATCH):
        await asyncio.gather(*(exchange.publish(m, key, timeout=30)
                               for m, key in messages[start:start + BATCH]))


async def preload_botrelay(settings: Settings, count: int, conversations: int) -> None:
    """What the ingress would have published: same body, message id, headers, routing."""
    connection = await connect()
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await topology.declare(channel, settings)
        now = int(time.time() * 1000)
        messages = []
        for i in range(count):
            body = dumps(callback(i, conversations=conversations))
            cb = parse_body(body)
            message = make_message(body, message_id=cb.dedup_key, headers={
                ATTEMPT: 1, RECEIVED_AT: now, TRIGGER: cb.trigger,
                CONVERSATION: cb.conversation_id})
            messages.append((message, topology.inbound_key(settings, cb.conversation_id)))
        await _publish_all(exchange, messages)


async def preload_plain(queue: str, count: int, conversations: int) -> None:
    connection = await connect()
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        messages = [(aio_pika.Message(dumps(callback(i, conversations=conversations)),
                                      delivery_mode=aio_pika.DeliveryMode.PERSISTENT), queue)
                    for i in range(count)]
        await _publish_all(channel.default_exchange, messages)


CONTENDERS = {
    "baseline": "baseline (2) aio-pika",
    "faststream": "baseline (3) FastStream",
    "memory": "botrelay, memory dedup",
    "redis": "botrelay, Redis dedup",
}


def _workers(contender: str, n: int, prefix: str, queue: str, fake: RunningFake,
             ordering: str, logdir: Path) -> list[Child]:
    children = []
    for w in range(n):
        cpu = core(w)  # worker 1 on core 0, worker 2 on core 1
        name = f"worker-{contender}-{ordering}-{w + 1}"
        if contender in ("baseline", "faststream"):
            module = ("bench.baselines.worker_baseline" if contender == "baseline"
                      else "bench.baselines.faststream_worker")
            argv = python("-m", module, "--queue", queue, "--api-base", fake.base,
                          "--api-key", API_KEY, "--prefetch", str(PREFETCH), "--amqp", AMQP_URL)
            children.append(spawn(name, argv, {}, cpu, logdir))
        else:
            env = botrelay_env(prefix, fake, redis=contender == "redis", ordering=ordering,
                               BOTRELAY_CONCURRENCY=str(PREFETCH))
            argv = python("-m", "botrelay", "worker", "--app", ECHO)
            children.append(spawn(name, argv, env, cpu, logdir))
    return children


async def run(contender: str, *, count: int, timeout: float, logdir: Path, workers: int = 1,
              ordering: str = "none", conversations: int = 2000,
              scenario: str = "drain") -> dict[str, Any]:
    prefix = new_prefix(f"drain-{contender}")
    settings = bench_settings(prefix, ordering)
    queue = f"{prefix}.q"
    children: list[Child] = []
    async with RunningFake() as fake:
        try:
            if contender in ("baseline", "faststream"):
                await preload_plain(queue, count, conversations)
            else:
                await preload_botrelay(settings, count, conversations)
            children = _workers(contender, workers, prefix, queue, fake, ordering, logdir)
            for child in children:
                await wait_log(child, "consuming", timeout=30)
            idle_cpu = sum(c.cpu_seconds() for c in children)  # start-up, before any reply
            await wait_replies(fake.fake, count, timeout)
            cpu = sum(c.cpu_seconds() for c in children) - idle_cpu
            for child in children:
                if not child.alive():
                    raise RuntimeError(f"{child.name} died:\n{child.tail()}")
            replies, rate = drain_rate(fake.fake)
        finally:
            for child in children:
                child.stop()
            await cleanup(prefix, queues=[queue], settings=settings)
    label = CONTENDERS[contender]
    if workers > 1:
        label += f", {workers} workers"
    if ordering == "conversation":
        label += ", ordering=conversation"
    return {"scenario": scenario, "contender": label, "throughput": rate, "replies": replies,
            "preloaded": count, "complete": replies >= count,
            "worker_cpu_us_per_msg": cpu / max(1, replies) * 1e6,
            "cores": {**{c.name: c.cpu for c in children}, "fake API + driver": core(1),
                      "rabbitmq, redis": "unpinned"}}
