"""Replies in posting order per conversation, with several workers sharing the partitions,
while workers are killed and added."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import aiohttp
import orjson
import pytest

from botrelay.shared.errors import Retry
from botrelay.shared.fake_cometchat import RunningFake
from botrelay.worker import Bot, Message
from botrelay.worker.service import Worker
from tests.helpers import (
    WorkerGroup,
    first_replies,
    muid_counts,
    order_by_conversation,
    resends_around,
    text_callback,
    wait_for,
)

pytestmark = pytest.mark.integration

CONVERSATIONS = 60
PER_CONVERSATION = 30
PARTITIONS = 16


def _doc(c: int, m: int) -> dict:
    return text_callback(f"{c:03d}{m:03d}", f"c{c} m{m}", sender=f"user-{c}")


async def _post_conversations(url: str, conversations: range, per: int) -> list[int]:
    """Each conversation posts its messages one after another; all conversations at once."""
    statuses: list[int] = []

    async with aiohttp.ClientSession() as session:
        async def conversation(c: int) -> None:
            for m in range(per):
                body = orjson.dumps(_doc(c, m))
                for _ in range(50):  # re-post on 503, as CometChat would
                    async with session.post(url, data=body, headers={
                            "Content-Type": "application/json"}) as resp:
                        await resp.read()
                        if resp.status != 503:
                            statuses.append(resp.status)
                            break
                    await asyncio.sleep(0.1)

        await asyncio.gather(*(conversation(c) for c in conversations))
    return statuses


def _out_of_order(fake) -> dict[int, list[tuple[int, str, float]]]:
    """The conversations whose first replies are out of order: (message, sender, when) each."""
    lines: dict[int, list[tuple[int, str, float]]] = defaultdict(list)
    for c, m, reply in first_replies(fake):
        lines[c].append((m, reply.agent.rsplit("/", 1)[-1], round(reply.at, 3)))
    return {c: line for c, line in lines.items() if [m for m, *_ in line] != sorted(
        m for m, *_ in line)}


async def _lease_holders(redis_client, prefix: str) -> list[str | None]:
    values = await redis_client.mget([f"{prefix}:partition:{{{prefix}}}:{n}"
                                      for n in range(PARTITIONS)])
    return [v.decode() if v else None for v in values]


async def _wait_spread(redis_client, prefix: str, workers: int, timeout: float = 20) -> bool:
    stop_at = time.monotonic() + timeout
    while time.monotonic() < stop_at:
        holders = await _lease_holders(redis_client, prefix)
        if None not in holders and len(set(holders)) == workers:
            return True
        await asyncio.sleep(0.2)
    return False


@pytest.fixture
def ordered(make_settings, redis_url, redis_client):
    return make_settings(redis_url=redis_url, partitions=PARTITIONS, concurrency=32)


async def test_three_workers_keep_each_conversation_in_order(
        ordered, redis_client, start_ingress, fake_api: RunningFake, tmp_path):
    ingress = await start_ingress(ordered)
    with WorkerGroup(ordered, 3, tmp_path):
        assert await _wait_spread(redis_client, ordered.prefix, 3)
        statuses = await _post_conversations(f"{ingress.url}/callback", range(CONVERSATIONS),
                                             PER_CONVERSATION)
        total = CONVERSATIONS * PER_CONVERSATION
        assert statuses.count(200) == total
        assert await wait_for(lambda: len(fake_api.fake.replies) >= total, timeout=60)
    order = order_by_conversation(fake_api.fake)
    assert all(order[c] == list(range(PER_CONVERSATION)) for c in range(CONVERSATIONS))
    by_worker = defaultdict(int)
    for reply in fake_api.fake.replies:
        by_worker[reply.agent] += 1
    print(f"\nreplies per worker: {sorted(by_worker.values())}")
    assert len(by_worker) == 3 and min(by_worker.values()) > 0
    assert len(fake_api.fake.replies) == total


async def test_killed_worker_partitions_are_taken_over_in_order(
        ordered, redis_client, start_ingress, fake_api: RunningFake, tmp_path):
    ingress = await start_ingress(ordered)
    fake_api.fake.config.latency = 0.01
    with WorkerGroup(ordered, 3, tmp_path) as workers:
        assert await _wait_spread(redis_client, ordered.prefix, 3)
        posting = asyncio.create_task(_post_conversations(
            f"{ingress.url}/callback", range(CONVERSATIONS), PER_CONVERSATION))
        assert await wait_for(lambda: len(fake_api.fake.replies) >= 300, timeout=60)
        victim = workers[0]
        dead_id = f"-{victim.proc.pid}-"
        before = await _lease_holders(redis_client, ordered.prefix)
        victim.kill()
        killed = time.monotonic()
        kill_time = time.time()
        workers.add()
        takeover = None
        while time.monotonic() - killed < 20:
            holders = await _lease_holders(redis_client, ordered.prefix)
            if None not in holders and not any(dead_id in h for h in holders if h):
                takeover = time.monotonic() - killed
                break
            await asyncio.sleep(0.1)
        statuses = await posting
        total = CONVERSATIONS * PER_CONVERSATION
        assert statuses.count(200) == total
        assert await wait_for(lambda: len(muid_counts(fake_api.fake)) >= total, timeout=60)
        await asyncio.sleep(1.0)
    held_by_victim = sum(1 for h in before if h and dead_id in h)
    print(f"\nvictim held {held_by_victim} partitions; taken over in {takeover:.1f}s")
    assert takeover is not None and takeover <= 10
    order = order_by_conversation(fake_api.fake)
    assert all(order[c] == list(range(PER_CONVERSATION)) for c in range(CONVERSATIONS)), (
        _out_of_order(fake_api.fake))
    assert len(muid_counts(fake_api.fake)) == total  # nothing lost
    resends_around(fake_api.fake, kill_time)


async def test_a_fourth_worker_joining_gets_a_share(
        ordered, redis_client, start_ingress, fake_api: RunningFake, tmp_path):
    ingress = await start_ingress(ordered)
    with WorkerGroup(ordered, 3, tmp_path) as workers:
        assert await _wait_spread(redis_client, ordered.prefix, 3)
        posting = asyncio.create_task(_post_conversations(
            f"{ingress.url}/callback", range(CONVERSATIONS), PER_CONVERSATION))
        assert await wait_for(lambda: len(fake_api.fake.replies) >= 200, timeout=60)
        newcomer = workers.add()
        assert await _wait_spread(redis_client, ordered.prefix, 4)
        holders = await _lease_holders(redis_client, ordered.prefix)
        mine = [n for n, h in enumerate(holders) if h and f"-{newcomer.proc.pid}-" in h]
        statuses = await posting
        total = CONVERSATIONS * PER_CONVERSATION
        assert statuses.count(200) == total
        assert await wait_for(lambda: len(fake_api.fake.replies) >= total, timeout=60)
    print(f"\nthe fourth worker took partitions {mine}")
    assert mine
    order = order_by_conversation(fake_api.fake)
    assert all(order[c] == list(range(PER_CONVERSATION)) for c in range(CONVERSATIONS)), (
        _out_of_order(fake_api.fake))
    assert len(fake_api.fake.replies) == total


async def test_a_retry_holds_the_conversation_behind_it(
        ordered, start_ingress, fake_api: RunningFake):
    bot = Bot()
    failed_once: set[str] = set()

    @bot.on_text()
    async def flaky(msg: Message) -> str:
        if msg.text in ("c0 m3", "c1 m0") and msg.text not in failed_once:
            failed_once.add(msg.text)
            raise Retry(delay=0.5)
        return f"echo: {msg.text}"

    ingress = await start_ingress(ordered)
    async with Worker(ordered, bot) as worker:
        statuses = await _post_conversations(f"{ingress.url}/callback", range(3), 8)
        assert statuses.count(200) == 24
        assert await wait_for(lambda: len(fake_api.fake.replies) >= 24, timeout=30)
        await asyncio.wait_for(worker.until_idle(), 20)
        parked = worker.metrics.deliveries.labels("parked")._value.get()
    order = order_by_conversation(fake_api.fake)
    assert order == {0: list(range(8)), 1: list(range(8)), 2: list(range(8))}
    assert failed_once == {"c0 m3", "c1 m0"}
    assert parked > 0  # later messages did wait behind the retried ones
