"""Exactly one reply per callback: duplicates posted, workers killed, reply API failing.

Workers run as child processes (``python -m worker``) sharing the real Redis dedup store; the
fake reply API records every accepted reply, and the counts are checked against what was posted.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from botrelay.shared.fake_cometchat import RunningFake
from botrelay.worker.dedup import RedisDedup
from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.helpers import (
    WorkerGroup,
    generated,
    post_all,
    reply_counts,
    resends_around,
    text_callback,
    wait_for,
)

pytestmark = pytest.mark.integration


def _report(name: str, sent: int, accepted: int, counts: dict[str, int], expected: set[str]
            ) -> tuple[int, int]:
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    lost = len(expected - set(counts))
    print(f"\n[{name}] sent={sent} accepted={accepted} answered={len(counts)} "
          f"duplicates={duplicates} lost={lost}")
    return duplicates, lost


@pytest.fixture
def redis_settings(make_settings, redis_url, redis_client):
    def build(**extra):
        return make_settings(redis_url=redis_url, **extra)
    return build


async def test_duplicates_posted_across_three_workers_get_one_reply_each(
        redis_settings, start_ingress, fake_api: RunningFake, tmp_path):
    settings = redis_settings()
    ingress = await start_ingress(settings)
    with WorkerGroup(settings, 3, tmp_path):
        once = text_callback("555", "same callback")
        docs = generated(200, start=20_000)
        posts = [once, once, once, *docs, *docs]
        random.Random(7).shuffle(posts)
        statuses = await post_all(f"{ingress.url}/callback", posts)
        assert set(statuses) == {200}
        expected = {"echo: same callback"} | {f"echo: {d['data']['data']['text']}" for d in docs}
        await wait_for(lambda: set(reply_counts(fake_api.fake)) >= expected, timeout=60)
        await asyncio.sleep(1.0)  # let any straggling duplicate show up before counting
    counts = reply_counts(fake_api.fake)
    duplicates, lost = _report("posted twice, 3 workers", len(posts), statuses.count(200),
                               counts, expected)
    assert (duplicates, lost) == (0, 0)
    assert set(counts) == expected


async def test_worker_sigkilled_mid_stream_loses_and_doubles_nothing(
        redis_settings, start_ingress, fake_api: RunningFake, tmp_path):
    settings = redis_settings(concurrency=32)
    ingress = await start_ingress(settings)
    # Slow replies keep many deliveries in flight in each worker when one is killed.
    fake_api.fake.config.latency = 0.02
    with WorkerGroup(settings, 3, tmp_path) as workers:
        docs = generated(1000, start=30_000)
        expected = {f"echo: {d['data']['data']['text']}" for d in docs}
        posting = asyncio.create_task(post_all(f"{ingress.url}/callback", docs, concurrency=16))
        assert await wait_for(lambda: len(fake_api.fake.replies) >= 200, timeout=60)
        workers[0].kill()
        killed_time = time.time()
        killed_at = len(fake_api.fake.replies)
        statuses = await posting
        assert set(statuses) == {200}
        done = await wait_for(lambda: set(reply_counts(fake_api.fake)) >= expected, timeout=90)
        await asyncio.sleep(1.0)
    counts = reply_counts(fake_api.fake)
    print(f"\nkilled a worker after {killed_at} replies")
    duplicates, lost = _report("SIGKILL mid-stream, redis dedup", len(docs),
                               statuses.count(200), counts, expected)
    assert done
    assert lost == 0
    assert duplicates == resends_around(fake_api.fake, killed_time) <= settings.concurrency


async def test_reply_api_failing_half_the_time_still_answers_each_once(
        make_settings, redis_url, redis_client, start_ingress, fake_api: RunningFake):
    # The design's default retry settings (delays 1,5,30,120,600; 6 attempts; 8 s inline budget).
    settings = make_settings(redis_url=redis_url, retry_delays=(1.0, 5.0, 30.0, 120.0, 600.0),
                             max_attempts=6, reply_budget=8.0, reply_timeout=3.0,
                             handler_timeout=10.0, dedup_lease=30.0)
    ingress = await start_ingress(settings)
    fake_api.fake.config.fail_rate = 0.5
    fake_api.fake.config.seed = 11
    docs = generated(300, start=40_000)
    expected = {f"echo: {d['data']['data']['text']}" for d in docs}
    async with Worker(settings, bot) as worker:
        statuses = await post_all(f"{ingress.url}/callback", docs)
        assert await wait_for(lambda: set(reply_counts(fake_api.fake)) >= expected, timeout=90)
        await asyncio.wait_for(worker.until_idle(), 30)
        dead = worker.metrics.deliveries.labels("dead_lettered")._value.get()
    counts = reply_counts(fake_api.fake)
    print(f"\nreply API statuses: {dict(fake_api.fake.statuses)}")
    duplicates, lost = _report("reply API 50% 500", len(docs), statuses.count(200), counts,
                               expected)
    assert (duplicates, lost, dead) == (0, 0, 0)
    assert fake_api.fake.statuses[500] > 100


async def test_stuck_claim_of_a_dead_worker_expires_with_its_lease(
        redis_settings, redis_client, start_ingress, fake_api: RunningFake):
    settings = redis_settings(dedup_lease=5.0)
    ingress = await start_ingress(settings)
    doc = text_callback("777", "claimed by a ghost")
    # The claim key of this callback, in its conversation's pen (ordered mode).
    key = RedisDedup(redis_client, settings.prefix, 5.0, 60.0).keys(
        "2248348660ad9bd4:demo_bot:after_message:777",
        "2248348660ad9bd4:demo_bot:cometchat-uid-1_user_demo_bot")[0]
    # A worker that died holding the claim: the key is held, nobody will release it.
    await redis_client.set(key, "ghost-token", px=3000)
    started = time.monotonic()
    async with Worker(settings, bot):
        await post_all(f"{ingress.url}/callback", [doc])
        assert await wait_for(lambda: len(fake_api.fake.replies) == 1, timeout=20)
    waited = time.monotonic() - started
    print(f"\nreply sent {waited:.1f}s after the post; the ghost lease had 3s left")
    assert 2.5 <= waited < 10
    assert len(fake_api.fake.replies) == 1
