"""Poison messages published straight to the inbound queue, past the ingress: undecodable bodies,
wrong shapes, odd headers, a handler that crashes, one that hangs, one that will not even be
cancelled. Each ends in the dead-letter queue with its reason, after the configured attempts or
handler timeout, and other conversations keep getting their replies meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import orjson
import pytest

from botrelay.shared import topology
from botrelay.shared.broker import make_message
from botrelay.shared.headers import ATTEMPT, CONVERSATION, ERROR, ERROR_KIND
from botrelay.shared.model import Message
from botrelay.shared.payloads import parse_body
from botrelay.shared.settings import Settings
from botrelay.worker import Bot
from botrelay.worker.service import Worker
from tests.chaos.report import Figures, record
from tests.helpers import text_callback, wait_for

pytestmark = pytest.mark.integration

HANDLER_TIMEOUT = 0.5

bot = Bot()
STOP_STUBBORN = threading.Event()


@bot.on_text()
async def handler(msg: Message) -> str:
    text = msg.text or ""
    if text.startswith("crash"):
        raise RuntimeError("handler bug: boom")
    if text.startswith("hang"):
        await asyncio.Event().wait()
    if text.startswith("blocking"):
        time.sleep(3 * HANDLER_TIMEOUT)  # noqa: ASYNC251  (the mistake under test)
    if text.startswith("stubborn"):
        # Swallows cancellation, as careless code with a bare `except:` does; it stops only
        # when the test ends (or after a minute), so the event loop can close.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not STOP_STUBBORN.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)
    return f"echo: {text}"


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.exchange: aio_pika.abc.AbstractExchange | None = None

    async def __aenter__(self) -> Publisher:
        self.connection = await aio_pika.connect(self.settings.amqp_url)
        channel = await self.connection.channel(publisher_confirms=True)
        self.exchange = await topology.declare(channel, self.settings)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.connection is not None
        await self.connection.close()

    async def send(self, body: bytes, *, message_id: str | None = None,
                   headers: dict[str, Any] | None = None) -> None:
        assert self.exchange is not None
        message = make_message(body, message_id=message_id or "", headers=headers or {})
        if message_id is None:
            message.message_id = None
        await self.exchange.publish(message, topology.INBOUND_KEY)

    async def send_callback(self, doc: dict[str, Any]) -> str:
        callback = parse_body(orjson.dumps(doc))
        await self.send(orjson.dumps(doc), message_id=callback.dedup_key,
                        headers={ATTEMPT: 1, CONVERSATION: callback.conversation_id})
        return callback.dedup_key

    async def dead_letters(self, want: int, timeout: float = 20.0
                           ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        assert self.connection is not None
        channel = await self.connection.channel()
        queue = await channel.get_queue(topology.dead_queue(self.settings.prefix))
        letters: list[aio_pika.abc.AbstractIncomingMessage] = []
        stop_at = time.monotonic() + timeout
        while len(letters) < want and time.monotonic() < stop_at:
            message = await queue.get(fail=False)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            await message.ack()
            letters.append(message)
        return letters


@pytest.fixture
async def running(make_settings: Callable[..., Settings]
                  ) -> AsyncIterator[tuple[Settings, Worker, Publisher]]:
    settings = make_settings(handler_timeout=HANDLER_TIMEOUT, max_attempts=3,
                             retry_delays=(0.2, 0.5), concurrency=16)
    async with Publisher(settings) as publisher, Worker(settings, bot) as worker:
        yield settings, worker, publisher


class Background:
    """Good callbacks from many other conversations, one every ``every`` seconds, with the
    time each waited for its reply."""

    def __init__(self, publisher: Publisher, fake: Any, every: float = 0.05) -> None:
        self.publisher, self.fake, self.every = publisher, fake, every
        self.sent: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        for i in range(10_000):
            text = f"bg-{uuid.uuid4().hex[:8]}-{i}"
            self.sent[f"echo: {text}"] = time.monotonic()
            await self.publisher.send_callback(
                text_callback(f"bg{i}-{uuid.uuid4().hex[:6]}", text, sender=f"bg-user-{i}"))
            await asyncio.sleep(self.every)

    def __enter__(self) -> Background:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def latencies(self) -> list[float]:
        got = {r.body["data"]["text"]: r.at for r in self.fake.replies}
        now = time.time()
        out = []
        for text, sent_mono in self.sent.items():
            sent_wall = now - (time.monotonic() - sent_mono)
            out.append(got[text] - sent_wall if text in got else float("inf"))
        return out


async def settle(fake: Any, background: Background, timeout: float = 15.0) -> None:
    await wait_for(lambda: all(t in {r.body["data"]["text"] for r in fake.replies}
                               for t in background.sent), timeout)


POISON: list[tuple[str, bytes, dict[str, Any] | None]] = [
    ("empty body", b"", {ATTEMPT: 1}),
    ("not JSON", b"\xff\xfe\x00 not json at all", {ATTEMPT: 1}),
    ("JSON array", b"[1, 2, 3]", {ATTEMPT: 1}),
    ("JSON null", b"null", None),
    ("deep nesting", b"[" * 5000 + b"]" * 5000, {ATTEMPT: 1}),
    ("missing fields", b'{"trigger": "after_message"}', {ATTEMPT: "not-a-number"}),
    ("wrong receiverType", orjson.dumps({
        "trigger": "after_message", "appId": "a", "bot": "b",
        "data": {"id": "1", "sender": "u", "receiver": "b", "receiverType": "channel"}}),
     {ATTEMPT: -7, CONVERSATION: 12345}),
    ("wrong types", orjson.dumps({"trigger": 7, "appId": [], "bot": {}, "data": "x"}),
     {CONVERSATION: {"nested": [1, 2.5]}, ATTEMPT: 1.5}),
    ("id past AMQP's limit", orjson.dumps(text_callback("9" * 400, "hi")), {ATTEMPT: 1}),
]


async def test_undecodable_and_misshapen_messages_go_to_the_dlq_at_once(running, fake_api
                                                                        ) -> None:
    _settings, _worker, publisher = running
    started = time.monotonic()
    with Background(publisher, fake_api.fake) as background:
        for i, (_, body, headers) in enumerate(POISON):
            await publisher.send(body, message_id=None if i % 2 else f"poison-{i}",
                                 headers=headers)
        letters = await publisher.dead_letters(len(POISON))
        await asyncio.sleep(0.5)
    await settle(fake_api.fake, background)
    assert len(letters) == len(POISON)
    bodies = {body for _, body, _ in POISON}
    for letter in letters:
        assert letter.body in bodies
        headers = letter.headers or {}
        assert str(headers[ERROR]).startswith("PayloadError: "), headers
        assert headers[ERROR_KIND] == "permanent"
    latencies = background.latencies()
    _record("worker: undecodable / misshapen messages", background, latencies, started,
            f"{len(POISON)} poison -> DLQ at once")
    assert max(latencies) < 2.0, latencies


async def _poison_with_retries(running: tuple[Settings, Worker, Publisher], fake_api: Any,
                               text: str, error: str, name: str) -> None:
    settings, _worker, publisher = running
    started = time.monotonic()
    with Background(publisher, fake_api.fake) as background:
        doc = text_callback(f"p-{uuid.uuid4().hex[:8]}", text, sender="poisoner")
        await publisher.send_callback(doc)
        # The poisoner's next message waits behind the poison (ordering), then is answered.
        follow = text_callback(f"f-{uuid.uuid4().hex[:8]}", "after the poison",
                               sender="poisoner")
        await publisher.send_callback(follow)
        letters = await publisher.dead_letters(1, timeout=30)
        await asyncio.sleep(0.5)
    await settle(fake_api.fake, background)
    assert len(letters) == 1
    headers = letters[0].headers or {}
    assert headers[ATTEMPT] == settings.max_attempts
    assert str(headers[ERROR]).startswith(error), headers
    assert headers[ERROR_KIND] == "transient"
    assert await wait_for(lambda: any(r.body["data"]["text"] == "echo: after the poison"
                                      for r in fake_api.fake.replies), 10)
    latencies = background.latencies()
    _record(name, background, latencies, started,
            f"poison -> DLQ after {settings.max_attempts} attempts")
    assert max(latencies) < 2.0, sorted(latencies)[-5:]


async def test_crashing_handler_is_dead_lettered_after_max_attempts(running, fake_api) -> None:
    await _poison_with_retries(running, fake_api, "crash now", "RuntimeError: handler bug: boom",
                               "worker: handler raises")


async def test_hanging_handler_is_dead_lettered_after_its_timeouts(running, fake_api) -> None:
    await _poison_with_retries(
        running, fake_api, "hang forever",
        f"TransientError: handler did not finish within {HANDLER_TIMEOUT:g}s",
        "worker: handler hangs forever")


async def test_handler_that_swallows_cancellation_does_not_stall_the_worker(running, fake_api
                                                                            ) -> None:
    STOP_STUBBORN.clear()
    try:
        await _poison_with_retries(
            running, fake_api, "stubborn handler",
            f"TransientError: handler did not finish within {HANDLER_TIMEOUT:g}s",
            "worker: handler ignores cancellation")
        # Abandoned, it never replied, even though it is still running.
        assert not [r for r in fake_api.fake.replies if "stubborn" in r.body["data"]["text"]]
    finally:
        STOP_STUBBORN.set()


def _record(name: str, background: Background, latencies: list[float], started: float,
            note: str) -> None:
    answered = sum(1 for x in latencies if x != float("inf"))
    replies = [r.body["data"]["text"] for r in background.fake.replies
               if r.body["data"]["text"] in background.sent]
    figures = Figures(name, sent=len(background.sent), seconds=time.monotonic() - started)
    figures.count_replies(background.sent, replies)
    finite = sorted(x for x in latencies if x != float("inf"))
    worst = finite[-1] if finite else 0.0
    figures.note = f"{note}; others answered {answered}, slowest {worst:.2f}s"
    record(figures)


async def test_a_handler_that_blocks_the_event_loop_is_reported_and_loses_nothing(
        running, fake_api, caplog) -> None:
    """A handler that blocks the event loop stalls every conversation on its worker, and
    BOTRELAY_HANDLER_TIMEOUT cannot interrupt code that never yields. What botrelay owes is
    to say so (one warning naming the fix, and a counter) and to lose nothing."""
    _settings, worker, publisher = running
    def blocked_seconds() -> float:
        return worker.metrics.registry.get_sample_value(
            "botrelay_event_loop_blocked_seconds_total") or 0.0

    blocked_before = blocked_seconds()
    caplog.set_level(logging.WARNING, logger="botrelay.worker")
    await publisher.send_callback(text_callback(f"b-{uuid.uuid4().hex[:8]}", "blocking",
                                                sender="blocker"))
    sent = set()
    for i in range(10):  # other conversations, queued right behind the blocker
        text = f"other-{uuid.uuid4().hex[:8]}"
        sent.add(f"echo: {text}")
        await publisher.send_callback(text_callback(f"o{i}-{uuid.uuid4().hex[:6]}", text,
                                                    sender=f"other-{i}"))
    assert await wait_for(lambda: sent <= {r.body["data"]["text"]
                                           for r in fake_api.fake.replies}, 15)
    blocked = blocked_seconds() - blocked_before
    assert blocked >= 2.5 * HANDLER_TIMEOUT, blocked  # it blocks for 3 x the timeout
    warnings = [r.getMessage() for r in caplog.records
                if "event loop was blocked" in r.getMessage()]
    assert warnings and "asyncio.to_thread" in warnings[0], warnings
