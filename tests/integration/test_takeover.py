"""A crashed or paused worker's work is taken over within seconds, in order, and no reply is
sent twice: three worker processes, Redis dedup, a bot that takes 0.3 s, about 100 callbacks/s.

A reply counts once per muid: the same muid twice is a duplicate (the fake stores a reply when
it arrives and lists it by tag, so a resend after a lost answer would show)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict

import aiohttp
import orjson
import pytest

from botrelay.shared.fake_cometchat import RunningFake
from botrelay.worker.console.holders import lease_key
from tests.helpers import WorkerProcess, muid_counts, text_callback, wait_for
from tests.integration.processes import count_lines, start_worker, terminate_worker

pytestmark = pytest.mark.integration

APP = "tests.integration.ops_bots:slow"
HANDLER = 0.3
CONVERSATIONS = 120
PERIOD = 1.2  # seconds between one conversation's messages: 100 callbacks/s in all
PER_CONVERSATION = 8
KILL_AFTER = 3.0  # seconds into the stream
MAX_WAIT = 5.0


def _text(c: int, m: int) -> str:
    return f"sleep {HANDLER:g} c{c} m{m}"


class Replies:
    """When each text was first answered, kept up to date from the fake's record."""

    def __init__(self, fake_api: RunningFake) -> None:
        self.fake = fake_api.fake
        self.first: dict[str, float] = {}
        self._seen = 0

    def update(self) -> None:
        replies = self.fake.replies
        for reply in replies[self._seen:]:
            text = reply.body["data"]["text"].removeprefix("echo: ")
            self.first.setdefault(text, reply.at)
        self._seen = len(replies)

    async def follow(self) -> None:
        while True:
            self.update()
            await asyncio.sleep(0.02)


async def _post(session: aiohttp.ClientSession, url: str, doc: dict, deadline: float) -> int:
    """POST once, re-posting on 503 or a refused connection as CometChat would."""
    body = orjson.dumps(doc)
    status = -1
    while time.monotonic() < deadline:
        try:
            async with session.post(url, data=body,
                                    headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                status = resp.status
                if status != 503:
                    return status
        except aiohttp.ClientConnectionError:
            status = -1
        await asyncio.sleep(0.1)
    return status


async def _stream(url: str, replies: Replies, posted: dict[str, float], *,
                  closed_loop: bool) -> list[int]:
    """Every conversation posts a message every ``PERIOD``; conversations are spread evenly
    over the period. ``closed_loop``: a user also waits for the answer before posting again
    (without ordered delivery, that is what keeps a conversation in order)."""
    statuses: list[int] = []
    start = time.monotonic() + 0.2
    stop_at = start + PERIOD * PER_CONVERSATION + 60

    async with aiohttp.ClientSession() as session:
        async def user(c: int) -> None:
            for m in range(PER_CONVERSATION):
                due = start + (m + c / CONVERSATIONS) * PERIOD
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                text = _text(c, m)
                posted[text] = time.time()
                doc = text_callback(f"{c:03d}{m:03d}", text, sender=f"user-{c}")
                statuses.append(await _post(session, url, doc, stop_at))
                if closed_loop:
                    await wait_for(lambda t=text: t in replies.first,  # type: ignore[misc]
                                   timeout=MAX_WAIT * 2, interval=0.02)

        await asyncio.gather(*(user(c) for c in range(CONVERSATIONS)))
    return statuses


async def _wait_spread(redis_client, prefix: str, partitions: int, workers: int) -> bool:
    stop_at = time.monotonic() + 20
    while time.monotonic() < stop_at:
        values = await redis_client.mget([lease_key(prefix, n) for n in range(partitions)])
        holders = {v for v in values if v}
        if len(holders) == workers and None not in values:
            return True
        await asyncio.sleep(0.2)
    return False


def _busiest(workers: list[WorkerProcess], fake_api: RunningFake) -> WorkerProcess:
    by_agent: dict[str, int] = defaultdict(int)
    for reply in fake_api.fake.replies:
        by_agent[reply.agent] += 1
    return max(workers, key=lambda w: sum(n for agent, n in by_agent.items()
                                          if f"-{w.proc.pid}-" in agent))


@pytest.mark.parametrize("ordering", ["conversation", "none"])
async def test_a_killed_worker_is_taken_over_within_seconds_once_and_in_order(
        ordering, make_settings, redis_url, redis_client, start_ingress,
        fake_api: RunningFake, tmp_path):
    settings = make_settings(redis_url=redis_url, ordering=ordering, partitions=16,
                             concurrency=64, retry_delays=(0.5, 1.0, 2.0), max_attempts=6,
                             handler_timeout=5.0, reply_budget=2.0, dedup_lease=30.0)
    ingress = await start_ingress(settings)
    fake_api.fake.config.latency = 0.005
    log = tmp_path / "workers.log"
    workers = [await start_worker(settings, log, app=APP) for _ in range(3)]
    replies = Replies(fake_api)
    follower = asyncio.create_task(replies.follow())
    posted: dict[str, float] = {}
    try:
        if ordering == "conversation":
            assert await _wait_spread(redis_client, settings.prefix, 16, 3)
        stream = asyncio.create_task(_stream(f"{ingress.url}/callback", replies, posted,
                                             closed_loop=ordering == "none"))
        await asyncio.sleep(KILL_AFTER)
        victim = _busiest(workers, fake_api)
        victim.kill()
        killed = time.time()
        statuses = await stream
        total = CONVERSATIONS * PER_CONVERSATION
        assert statuses.count(200) == total
        assert await wait_for(lambda: len(muid_counts(fake_api.fake)) >= total, timeout=60)
        await asyncio.sleep(2.0)  # a late resend would arrive now
        replies.update()
    finally:
        follower.cancel()
        for worker in workers:
            await terminate_worker(worker, timeout=15)

    counts = muid_counts(fake_api.fake)
    waits = sorted(replies.first[t] - posted[t] for t in posted)
    after = sorted(replies.first[t] - posted[t] for t in posted
                   if posted[t] >= killed - MAX_WAIT)
    p99 = waits[int(len(waits) * 0.99)]
    print(f"\n{ordering}: {total} callbacks, worst wait {waits[-1]:.2f}s, p99 {p99:.2f}s, "
          f"worst after the kill {after[-1]:.2f}s; lookups by tag {fake_api.fake.lookups}; "
          f"duplicates {sum(n - 1 for n in counts.values())}")
    resent = {m: [(r.agent, round(r.at - killed, 3)) for r in fake_api.fake.replies
                  if r.body["muid"] == m] for m, n in counts.items() if n > 1}
    assert len(counts) == total and set(counts.values()) == {1}, f"lost or doubled: {resent}"
    assert waits[-1] <= MAX_WAIT, f"a message waited {waits[-1]:.2f}s for its reply"
    order: dict[int, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for reply in fake_api.fake.replies:
        if reply.body["muid"] in seen:
            continue
        seen.add(reply.body["muid"])
        c, m = reply.body["data"]["text"].split()[-2:]
        order[int(c[1:])].append(int(m[1:]))
    out_of_order = [c for c in range(CONVERSATIONS) if order[c] != list(range(PER_CONVERSATION))]
    assert out_of_order == [], f"conversations answered out of order: {out_of_order}"


async def test_a_paused_worker_resumed_after_its_liveness_sends_nothing_twice(
        make_settings, amqp_url, redis_url, redis_client, start_ingress,
        fake_api: RunningFake, tmp_path):
    # A 1 s AMQP heartbeat: the broker drops the paused worker's connection within seconds and
    # hands its unacked deliveries to the other worker, which takes their claims over.
    settings = make_settings(amqp_url=f"{amqp_url}?heartbeat=1", redis_url=redis_url,
                             ordering="none", concurrency=16, retry_delays=(0.5, 1.0),
                             max_attempts=6, handler_timeout=5.0, reply_budget=2.0,
                             dedup_lease=30.0)
    ingress = await start_ingress(settings)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    paused = await start_worker(settings, log_a, app=APP)
    other = await start_worker(settings, log_b, app=APP)
    docs = [text_callback(f"9{i:04d}", f"sleep 2 p{i}", sender=f"user-{i}") for i in range(24)]
    try:
        async with aiohttp.ClientSession() as session:
            stop_at = time.monotonic() + 30
            assert [await _post(session, f"{ingress.url}/callback", d, stop_at)
                    for d in docs] == [200] * len(docs)
        await asyncio.sleep(0.5)  # both workers are in their 2 s handlers
        os.kill(paused.proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(6.0)  # past its liveness (3 s) and its AMQP heartbeat
        finally:
            os.kill(paused.proc.pid, signal.SIGCONT)
        assert await wait_for(lambda: len(muid_counts(fake_api.fake)) >= len(docs), timeout=30)
        await asyncio.sleep(3.0)  # whatever the resumed worker would still send, it sends now
    finally:
        codes = [await terminate_worker(w, timeout=15) for w in (paused, other)]
    counts = muid_counts(fake_api.fake)
    by_paused = sum(1 for r in fake_api.fake.replies if f"-{paused.proc.pid}-" in r.agent)
    print(f"\nreplies {len(fake_api.fake.replies)} for {len(docs)} callbacks; "
          f"{by_paused} by the paused worker; lapsed: "
          f"{count_lines(log_a, 'liveness lapsed')}")
    assert len(counts) == len(docs) and set(counts.values()) == {1}
    assert count_lines(log_a, "liveness lapsed") >= 1  # it did notice on resuming
    assert codes == [0, 0]
