"""A steady stream of callbacks into the ingress while a fault is injected, and the reckoning after:
every callback the ingress accepted (2xx queued) must be answered exactly once.

A sender re-posts after a 503 or a refused connection, as CometChat does; what was finally
answered 2xx counts as accepted. Every callback of the stream is valid, so nothing is let off:
a callback answered 4xx (CometChat does not re-post those) or still unanswered or 503 at the
stream's deadline counts as lost, like an accepted callback never replied to.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiohttp
import orjson

from botrelay.shared import topology
from botrelay.shared.fake_cometchat import FakeCometChat
from botrelay.shared.settings import Settings
from tests.chaos.report import Figures, record
from tests.helpers import expected_reply, text_callback, wait_for


class Stream:
    def __init__(self, url: str, count: int, *, interval: float = 0.01,
                 concurrency: int = 16, deadline: float = 60.0) -> None:
        self.url = url
        self.interval = interval
        self.concurrency = concurrency
        self.deadline = deadline
        run = uuid.uuid4().hex[:6]
        self.docs = [
            text_callback(f"{run}-{i}", f"hello {run}-{i}", sender=f"user-{i % 40}",
                          group=f"group-{i % 5}" if i % 3 == 0 else None)
            for i in range(count)
        ]
        self.statuses: list[int] = [0] * count
        self.seen: Counter[int] = Counter()  # every answer, re-posts included (-1: no answer)
        self.retries = 0  # posts answered 503 or refused, then re-posted
        self.refused: Counter[int] = Counter()  # every 4xx answer, by status

    async def run(self) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        stop_at = time.monotonic() + self.deadline
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def one(i: int, body: bytes) -> None:
                async with sem:
                    while True:
                        try:
                            async with session.post(self.url, data=body, headers={
                                    "Content-Type": "application/json"}) as resp:
                                await resp.read()
                                self.statuses[i] = resp.status
                                self.seen[resp.status] += 1
                                if 400 <= resp.status < 500:
                                    self.refused[resp.status] += 1
                                if resp.status != 503:
                                    return
                        except (aiohttp.ClientError, TimeoutError):
                            self.statuses[i] = -1
                            self.seen[-1] += 1
                        self.retries += 1
                        if time.monotonic() > stop_at:
                            return
                        await asyncio.sleep(0.2)

            tasks = []
            for i, doc in enumerate(self.docs):
                tasks.append(asyncio.create_task(one(i, orjson.dumps(doc))))
                await asyncio.sleep(self.interval)
            await asyncio.gather(*tasks)

    def accepted_texts(self) -> list[str]:
        return [expected_reply(doc)[2] for doc, status in zip(self.docs, self.statuses,
                                                               strict=True) if _accepted(status)]

    def refused_count(self) -> int:
        """Callbacks whose final answer was 4xx: the sender gives up on them."""
        return sum(1 for status in self.statuses if 400 <= status < 500)

    def unanswered_count(self) -> int:
        """Callbacks still without an answer, or answered 503, when the deadline came."""
        return sum(1 for status in self.statuses if status in (0, -1, 503))


def _accepted(status: int) -> bool:
    return 200 <= status < 300


def reckon(name: str, stream: Stream, fake: FakeCometChat, *, seconds: float,
           note: str = "") -> Figures:
    """The figures of a finished stream: accepted callbacks never replied to, callbacks refused
    with a 4xx and callbacks unanswered at the deadline all count as lost."""
    ours = set(expected_reply(doc)[2] for doc in stream.docs)
    figures = Figures(name, sent=len(stream.docs), seconds=seconds, note=note)
    figures.count_replies(stream.accepted_texts(),
                          [r.body["data"].get("text", "") for r in fake.replies
                           if r.body["data"].get("text") in ours])
    refused, unanswered = stream.refused_count(), stream.unanswered_count()
    figures.lost += refused + unanswered
    figures.extra.update(reposts=stream.retries, refused=refused, unanswered=unanswered,
                         **{f"answers {status}": n for status, n in stream.refused.items()})
    if refused or unanswered or stream.refused:
        figures.note = "; ".join(filter(None, [
            figures.note, f"{refused} refused 4xx, {unanswered} unanswered at the deadline",
            " ".join(f"{s}x{n}" for s, n in sorted(stream.refused.items()))]))
    return figures


async def run_with_fault(name: str, stream: Stream, fake: FakeCometChat,
                         fault: Callable[[], Awaitable[Any]], *, settle: float = 30.0,
                         note: str = "") -> Figures:
    """Run ``stream`` and ``fault`` together; wait for every accepted callback's reply (or
    ``settle`` seconds); record and return the figures."""
    started = time.monotonic()
    await asyncio.gather(stream.run(), fault())
    accepted = stream.accepted_texts()
    wanted = set(accepted)

    def all_answered() -> bool:
        got = {r.body["data"].get("text") for r in fake.replies}
        return wanted <= got

    await wait_for(all_answered, settle, interval=0.1)
    await asyncio.sleep(1.0)  # let late duplicates, if any, arrive
    figures = record(reckon(name, stream, fake, seconds=time.monotonic() - started, note=note))
    print(f"{name}: sent {figures.sent}, accepted {figures.accepted}, answered "
          f"{figures.answered}, duplicated {figures.duplicated}, lost {figures.lost} "
          f"(of them {figures.extra['refused']} refused 4xx, {figures.extra['unanswered']} "
          f"unanswered at the deadline), re-posts {stream.retries}, "
          f"answers {dict(sorted(stream.seen.items()))}")
    # The ingress answers 200, or 503 while it cannot get a confirm: never another 5xx.
    assert all(s < 500 or s == 503 for s in stream.seen), stream.seen
    return figures


async def queue_report(amqp_url: str, settings: Settings) -> dict[str, tuple[int, int]]:
    """Messages and consumers per queue of ``settings``' topology (for failure messages)."""
    out: dict[str, tuple[int, int]] = {}
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for name in topology.all_queue_names(settings):
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except Exception:
                continue
            result = queue.declaration_result
            out[name] = (int(result.message_count or 0), int(result.consumer_count or 0))
    return {k: v for k, v in out.items() if v != (0, 0)}
