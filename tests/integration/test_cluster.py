"""A RabbitMQ node and then the Redis primary die under a stream of ordered conversations: every
callback is still answered 2xx, each gets exactly one reply, and each conversation's replies go
out in the order its messages were posted.

The cluster (3 RabbitMQ nodes) and the Redis group (primary, replica, 3 sentinels) come from
``tests.cluster_harness``: real processes on 127.0.0.1, beside the services the other tests use.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aio_pika
import aiohttp
import orjson
import pytest

from botrelay.shared import topology
from botrelay.shared.fake_cometchat import RunningFake
from botrelay.shared.settings import Settings
from tests.cluster_harness import (  # noqa: F401 - session fixtures
    RabbitCluster,
    SentinelGroup,
    rabbit_cluster,
    sentinel_group,
)
from tests.helpers import order_by_conversation, reply_counts, text_callback, wait_for
from tests.integration.processes import IngressProcess, free_port, start_worker, terminate_worker

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

CONVERSATIONS = 12
PER_CONVERSATION = 30
PAUSE = 0.1  # between two messages of one conversation


def _doc(c: int, m: int) -> dict:
    return text_callback(f"{c:03d}{m:03d}", f"c{c} m{m}", sender=f"cluster-user-{c}")


async def _declare(settings: Settings, url: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        await topology.declare(await connection.channel(), settings)


def _diagnose(cluster: RabbitCluster, prefix: str, expected: set[str],
              fake_api: RunningFake) -> str:
    """What is missing, and where the queues stand: the failure message."""
    missing = sorted(expected - set(reply_counts(fake_api.fake)))
    queues = cluster.alive_node().ctl("list_queues", "name", "messages", "messages_unacknowledged",
                                      "consumers", "leader", "online", "--quiet")
    return f"{len(missing)} missing, e.g. {missing[:5]}\n{queues}"


@pytest.mark.timeout(420)
async def test_node_and_primary_deaths_lose_nothing(
        rabbit_cluster: RabbitCluster, sentinel_group: SentinelGroup,  # noqa: F811
        fake_api: RunningFake, prefix: str, tmp_path: Path) -> None:
    cluster, redis_group = rabbit_cluster, sentinel_group
    settings = Settings(
        amqp_url=cluster.amqp_url, prefix=prefix, cometchat_api_base=fake_api.base,
        cometchat_api_key="test-api-key", cometchat_app_id="2248348660ad9bd4",
        callback_auth="none", retry_delays=(0.2, 0.5, 1.0), max_attempts=20,
        reply_timeout=1.0, reply_budget=2.0, handler_timeout=2.0, dedup_lease=5.0,
        shutdown_grace=5.0, uvloop=False, partitions=4, concurrency=8,
        # A node's death stalls confirms for a moment: the ingress retries within this budget.
        publish_timeout=15.0,
    )
    await _declare(settings, cluster.urls[0])
    leaders = Counter(cluster.queue_leaders(prefix).values())
    assert sum(leaders.values()) == len(topology.all_queue_names(settings)), leaders
    doomed = cluster.node_by_name(leaders.most_common(1)[0][0])
    # Every process starts on the doomed node, so every one of them must move.
    urls = [doomed.url, *(u for u in cluster.urls if u != doomed.url)]
    settings = settings.replace(amqp_url=",".join(urls))
    env = {"BOTRELAY_REDIS_SENTINELS": redis_group.sentinel_addresses,
           "BOTRELAY_REDIS_SENTINEL_MASTER": redis_group.master_name,
           "BOTRELAY_LOG_FORMAT": "text"}

    ingress = await IngressProcess(settings, free_port(), tmp_path / "ingress.log", env).start()
    workers = [await start_worker(settings, tmp_path / f"worker{i}.log", env) for i in range(2)]
    statuses: dict[tuple[int, int], int] = {}
    latencies: list[float] = []
    posted = 0
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            async def conversation(c: int) -> None:
                nonlocal posted
                for m in range(PER_CONVERSATION):
                    # Each callback is posted once: a 503 would fail the test.
                    sent_at = time.monotonic()
                    async with session.post(f"{ingress.url}/callback",
                                            data=orjson.dumps(_doc(c, m)),
                                            headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                        statuses[(c, m)] = r.status
                    latencies.append(time.monotonic() - sent_at)
                    posted += 1
                    await asyncio.sleep(PAUSE)

            async def chaos() -> None:
                total = CONVERSATIONS * PER_CONVERSATION
                assert await wait_for(lambda: posted >= total // 4, timeout=60)
                doomed.kill()
                killed_at = time.monotonic()
                assert await wait_for(lambda: posted >= total * 3 // 5, timeout=90)
                assert time.monotonic() - killed_at > 1.0
                redis_group.primary.sigkill()

            await asyncio.gather(chaos(), *(conversation(c) for c in range(CONVERSATIONS)))

        expected = {f"echo: c{c} m{m}" for c in range(CONVERSATIONS)
                    for m in range(PER_CONVERSATION)}
        assert await wait_for(lambda: set(reply_counts(fake_api.fake)) >= expected,
                              timeout=90), _diagnose(cluster, prefix, expected, fake_api)
        await asyncio.sleep(2.0)  # a duplicate would arrive within this
        latencies.sort()
        print(f"\ncallback answer times: p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
              f"max {latencies[-1] * 1000:.0f} ms (the stall while the ingress moves node)")
        bad = {k: v for k, v in statuses.items() if not 200 <= v < 300}
        assert bad == {}
        counts = reply_counts(fake_api.fake)
        assert {t: n for t, n in counts.items() if n != 1} == {}
        assert set(counts) == expected
        order = order_by_conversation(fake_api.fake)  # exactly one reply each: checked above
        wrong = {c: o for c, o in order.items() if o != list(range(PER_CONVERSATION))}
        assert wrong == {}
    finally:
        for worker in workers:
            await terminate_worker(worker, timeout=15)
        await ingress.terminate(timeout=15)
