"""A long broker outage with a sender that never re-posts (CometChat's bot callbacks are not
retried): the ingress spools to disk, answers every POST 2xx within 2 s, and once the broker is
back every callback gets exactly one reply. The second test SIGKILLs the ingress in the middle
of the outage and starts it again on the same spool directory: nothing spooled is lost.

Only the ingress's broker connection goes through the proxy; the worker reaches RabbitMQ
directly, so it keeps consuming what was queued before the cut."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from botrelay.shared.fake_cometchat import RunningFake
from tests.chaos.report import Figures, record
from tests.helpers import expected_reply, text_callback, wait_for
from tests.integration.processes import (
    IngressProcess,
    count_lines,
    free_port,
    start_worker,
    terminate_worker,
)

pytestmark = pytest.mark.chaos

RATE = 55.0  # callbacks per second, evenly spaced (CometChat's bursts are smaller)
OUTAGE = 21.0  # seconds the ingress cannot reach the broker
ANSWER_WITHIN = 2.0  # CometChat's limit for the answer to a callback


@dataclass
class Sender:
    """POSTs ``count`` callbacks at ``RATE`` per second, each exactly once: no re-post after an
    error or a missing answer. Keeps each one's status, answer and latency."""

    url: str
    count: int
    docs: list[dict[str, Any]] = field(init=False)
    statuses: list[int] = field(init=False)  # -1: no answer (refused, reset, timed out)
    answers: list[str] = field(init=False)  # "queued", "spooled", or "" without a 200
    latencies: list[float] = field(init=False)
    sent_at: list[float] = field(init=False)  # wall clock, to compare with the fault's times

    def __post_init__(self) -> None:
        run = uuid.uuid4().hex[:6]
        self.docs = [text_callback(f"{run}-{i}", f"spool {run}-{i}", sender=f"user-{i % 40}",
                                   group=f"group-{i % 5}" if i % 3 == 0 else None)
                     for i in range(self.count)]
        self.statuses = [0] * self.count
        self.answers = [""] * self.count
        self.latencies = [0.0] * self.count
        self.sent_at = [0.0] * self.count

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            async def one(i: int) -> None:
                self.sent_at[i] = time.time()
                started = time.monotonic()
                try:
                    async with session.post(self.url, data=orjson.dumps(self.docs[i]),
                                            headers={"Content-Type": "application/json"}
                                            ) as resp:
                        doc = await resp.json()
                        self.statuses[i] = resp.status
                        if resp.status == 200:
                            self.answers[i] = doc["status"]
                except (aiohttp.ClientError, TimeoutError):
                    self.statuses[i] = -1
                self.latencies[i] = time.monotonic() - started

            tasks = []
            start = time.monotonic()
            for i in range(self.count):
                # Evenly spaced from the start, so a slow moment does not lower the rate.
                await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)

    def text(self, i: int) -> str:
        return expected_reply(self.docs[i])[2]


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        assert resp.status == 200, resp.status  # a missing page must not read as 0
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


async def outage_with(sender: Sender, proxy: Any, *, during: Callable[[], Awaitable[None]] | None
                      = None) -> tuple[float, float]:
    """Run the sender; cut the broker 2 s in for ``OUTAGE`` seconds (running ``during`` in the
    middle); when the broker went away and when it came back (wall clock)."""
    times = [0.0, 0.0]

    async def fault() -> None:
        await asyncio.sleep(2.0)
        await proxy.cut()
        cut_at = times[0] = time.time()
        if during is not None:
            await asyncio.sleep(OUTAGE / 3)
            await during()
        await asyncio.sleep(max(0.0, cut_at + OUTAGE - time.time()))
        proxy.heal()
        times[1] = time.time()

    await asyncio.gather(sender.run(), fault())
    return times[0], times[1]


def reckon(name: str, sender: Sender, fake: Any, started: float, note: str) -> Counter[str]:
    got = Counter(r.body["data"].get("text", "") for r in fake.replies)
    accepted = [sender.text(i) for i, s in enumerate(sender.statuses) if 200 <= s < 300]
    figures = Figures(name, sent=sender.count, seconds=time.monotonic() - started, note=note)
    figures.count_replies(accepted, [t for t in (r.body["data"].get("text", "")
                                                 for r in fake.replies)
                                     if t in {sender.text(i) for i in range(sender.count)}])
    figures.extra["spooled"] = sender.answers.count("spooled")
    record(figures)
    print(f"{name}: sent {sender.count}, 2xx {len(accepted)}, spooled "
          f"{sender.answers.count('spooled')}, slowest answer {max(sender.latencies):.3f}s, "
          f"no answer {sender.statuses.count(-1)}")
    return got


@pytest.fixture
def spooling(make_settings, amqp_proxy, redis_url, redis_client, tmp_path: Path):
    """(the broker's proxy, the ingress's settings: through the proxy and spooling after a 1 s
    publish timeout, the worker's settings: straight to the broker). Redis keys go with the
    test's prefix (``redis_client``)."""
    proxy, proxied_url = amqp_proxy
    ingress = make_settings(amqp_url=proxied_url, redis_url=redis_url, publish_timeout=1.0,
                            spool_dir=str(tmp_path / "spool"))
    return proxy, ingress, make_settings(redis_url=redis_url)


async def test_long_outage_every_post_answered_in_time_and_replied_once(
        spooling, fake_api: RunningFake, tmp_path: Path) -> None:
    proxy, settings, worker_settings = spooling
    ingress = await IngressProcess(settings, free_port(), tmp_path / "ingress.log").start()
    worker = await start_worker(worker_settings, tmp_path / "worker.log")
    sender = Sender(f"{ingress.url}/callback", int(RATE * (OUTAGE + 6)))
    started = time.monotonic()
    try:
        cut_at, healed = await outage_with(sender, proxy)
        everyone = {sender.text(i) for i in range(sender.count)}
        await wait_for(lambda: everyone <= {r.body["data"].get("text") for r in
                                            fake_api.fake.replies}, 60, interval=0.2)
        await asyncio.sleep(1.5)  # late duplicates, if any, arrive
        depth = await metric(ingress.metrics_base, "botrelay_spool_depth")
        forwarded = await metric(ingress.metrics_base, "botrelay_spool_forwarded_total")
    finally:
        await terminate_worker(worker)
        await ingress.terminate()
    got = reckon(f"rabbitmq cut {OUTAGE:g}s, {RATE:g}/s, spool", sender, fake_api.fake, started,
                 "no re-posts: every POST 2xx within 2s")
    assert set(sender.statuses) == {200}, Counter(sender.statuses)
    assert max(sender.latencies) < ANSWER_WITHIN, sorted(sender.latencies)[-5:]
    spooled = sender.answers.count("spooled")
    assert spooled >= RATE * (OUTAGE - 2), "the outage did not reach the spool"
    assert sender.answers.count("queued") > RATE, "nothing went straight to the broker"
    assert [t for t in everyone if got[t] != 1] == [], "not exactly one reply each"
    # A callback spooled during the outage is replied to only after the broker is back. (One
    # can be spooled before the cut too: a confirm slower than the publish timeout.)
    spooled_texts = {sender.text(i) for i, a in enumerate(sender.answers)
                     if a == "spooled" and sender.sent_at[i] > cut_at}
    early = [r for r in fake_api.fake.replies
             if r.body["data"].get("text") in spooled_texts and r.at < healed - 0.5]
    assert early == []
    assert depth == 0 and forwarded >= spooled


async def test_ingress_killed_during_the_outage_forwards_its_spool_after_restart(
        spooling, fake_api: RunningFake, tmp_path: Path) -> None:
    proxy, settings, worker_settings = spooling
    log_path = tmp_path / "ingress.log"
    ingress = await IngressProcess(settings, free_port(), log_path).start()
    worker = await start_worker(worker_settings, tmp_path / "worker.log")
    sender = Sender(f"{ingress.url}/callback", int(RATE * (OUTAGE + 6)))
    killed: list[float] = []

    async def kill_and_restart() -> None:
        ingress.kill()  # SIGKILL: no shutdown, no flush beyond what each commit did
        killed.append(time.time())
        # Same port, same spool directory; ready (spooling) although the broker is still away.
        await ingress.start()
        killed.append(time.time())

    started = time.monotonic()
    try:
        await outage_with(sender, proxy, during=kill_and_restart)
        answered = {sender.text(i) for i, s in enumerate(sender.statuses) if s == 200}
        await wait_for(lambda: answered <= {r.body["data"].get("text") for r in
                                            fake_api.fake.replies}, 60, interval=0.2)
        await asyncio.sleep(1.5)
    finally:
        await terminate_worker(worker)
        await ingress.terminate()
    got = reckon(f"rabbitmq cut {OUTAGE:g}s, ingress SIGKILLed, spool", sender,
                 fake_api.fake, started, "restarted on the same spool dir")
    before_kill = [i for i, a in enumerate(sender.answers) if a == "spooled"
                   and sender.sent_at[i] + sender.latencies[i] < killed[0]]
    assert len(before_kill) > RATE * 3, "the kill did not find a full spool"
    assert [sender.text(i) for i in before_kill if got[sender.text(i)] != 1] == []
    assert count_lines(log_path, "from before; forwarding them") == 1
    # Every callback answered 2xx, before or after the kill, is replied to exactly once; one
    # that got no answer (in flight at the kill, or posted while the ingress was down) at most
    # once: the sender cannot know, and it never re-posts.
    assert [t for t in answered if got[t] != 1] == [], "lost or doubled"
    unanswered = [sender.text(i) for i, s in enumerate(sender.statuses) if s != 200]
    assert all(got[t] <= 1 for t in unanswered)
    assert len(unanswered) < RATE * (killed[1] - killed[0] + 2), Counter(sender.statuses)
    assert set(sender.statuses) <= {200, -1}, Counter(sender.statuses)
    assert max(sender.latencies[i] for i, s in enumerate(sender.statuses) if s == 200
               ) < ANSWER_WITHIN
