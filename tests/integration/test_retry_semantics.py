"""Retry and dead-letter behaviour, one suite run over both brokers: RabbitMQ (``BrokerLink`` +
``Worker``) and the in-memory broker (``MemoryBroker`` + ``MemoryWorker``, what ``botrelay dev``
runs). Callbacks go through the real ingress app, replies to the fake reply API; the settings give
retry delays of 0.2 s and 0.5 s and 3 attempts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from botrelay.dev import MemoryWorker
from botrelay.shared import topology
from botrelay.shared.broker import BrokerLink, make_message
from botrelay.shared.errors import PermanentError, Retry
from botrelay.shared.headers import ATTEMPT, CONVERSATION, TRIGGER
from botrelay.shared.settings import Settings
from botrelay.shared.topology import INBOUND_KEY
from botrelay.worker import Bot, Message, dlq
from botrelay.worker.memory_broker import MemoryBroker
from botrelay.worker.retry import attempt_of
from botrelay.worker.service import Worker
from tests.conftest import RunningIngress
from tests.helpers import post_all, text_callback, wait_for

pytestmark = pytest.mark.integration


def make_bot(calls: Counter[str]) -> Bot:
    bot = Bot()

    @bot.command("flaky")  # asks for a retry twice, then answers
    async def flaky(msg: Message) -> str:
        calls[msg.text or ""] += 1
        if calls[msg.text or ""] <= 2:
            raise Retry(delay=0.2)
        return f"done after {calls[msg.text or '']}"

    @bot.command("permanent")
    async def permanent(msg: Message) -> str:
        calls[msg.text or ""] += 1
        raise PermanentError("this can never work")

    @bot.command("boom")
    async def boom(msg: Message) -> str:
        calls[msg.text or ""] += 1
        raise RuntimeError("always broken")

    @bot.on_text()
    async def echo(msg: Message) -> str:
        calls[msg.text or ""] += 1
        return f"echo: {msg.text}"

    return bot


class BrokerPath:
    """One broker path: an ingress and a worker on it, a direct publisher, the DLQ."""

    def __init__(self, kind: str, settings: Settings, bot: Bot) -> None:
        self.kind = kind
        self.settings = settings
        self.attempts: list[tuple[str | None, int]] = []  # (message id, attempt) per delivery
        self.memory: MemoryBroker | None = None
        self.worker: Any
        if kind == "memory":
            self.memory = MemoryBroker(settings)
            self.broker: Any = self.memory
            self.worker = MemoryWorker(settings, bot, self.memory)
        else:
            self.broker = BrokerLink(settings, "test-publisher")
            self.worker = Worker(settings, bot)
        from botrelay.ingress.app import make_app

        self.ingress = RunningIngress(make_app(settings, broker=self.broker,
                                               wait_for_broker=True))

    async def start(self) -> None:
        await self.ingress.start()
        await self.worker.start()
        process = self.worker.consumer.process

        async def recording(delivery: Any) -> None:
            self.attempts.append((delivery.message_id, attempt_of(delivery)))
            await process(delivery)

        self.worker.consumer.process = recording

    async def stop(self) -> None:
        await self.worker.stop()
        await self.ingress.stop()

    async def post(self, *docs: dict[str, Any]) -> None:
        assert set(await post_all(f"{self.ingress.url}/callback", docs)) == {200}

    async def publish_raw(self, body: bytes, message_id: str) -> None:
        await self.broker.publish(make_message(body, message_id=message_id, headers={
            ATTEMPT: 1, TRIGGER: "after_message", CONVERSATION: "raw"}), INBOUND_KEY)

    async def dead_letters(self) -> list[dlq.DeadLetter]:
        if self.memory is not None:
            return [dlq.describe(stored.message) for stored in self.memory.dead]  # type: ignore
        return await dlq.list_letters(self.settings)

    async def wait_dead(self, n: int, timeout: float = 20.0) -> list[dlq.DeadLetter]:
        deadline = time.monotonic() + timeout
        letters = await self.dead_letters()
        while len(letters) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            letters = await self.dead_letters()
        return letters


@pytest.fixture(params=["rabbitmq", "memory"])
async def path(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
               ) -> AsyncIterator[tuple[BrokerPath, Counter[str]]]:
    calls: Counter[str] = Counter()
    running = BrokerPath(request.param, make_settings(), make_bot(calls))
    await running.start()
    try:
        yield running, calls
    finally:
        await running.stop()


async def test_retry_twice_then_success_replies_exactly_once(path, fake_api):
    relay, calls = path
    await relay.post(text_callback("9001", "/flaky one"))
    assert await wait_for(lambda: len(fake_api.fake.replies) >= 1, timeout=20)
    await asyncio.wait_for(relay.worker.until_idle(quiet=0.7), 20)
    assert [r.body["data"]["text"] for r in fake_api.fake.replies] == ["done after 3"]
    assert calls["/flaky one"] == 3
    key = "2248348660ad9bd4:demo_bot:after_message:9001"
    assert [a for k, a in relay.attempts if k == key] == [1, 2, 3]
    assert await relay.dead_letters() == []


async def test_permanent_error_dead_letters_after_one_attempt(path, fake_api):
    relay, calls = path
    await relay.post(text_callback("9002", "/permanent"))
    letters = await relay.wait_dead(1)
    assert len(letters) == 1
    letter = letters[0]
    assert letter.id.endswith(":9002")
    assert letter.attempts == 1
    assert letter.error == "PermanentError: this can never work"
    assert letter.error_kind == "permanent"
    assert letter.trigger == "after_message"
    assert letter.failed_at_ms > 0
    # The partition queue it was taken from: where a replay returns it.
    settings = relay.settings
    assert letter.queue == topology.queue_of_inbound_key(
        settings.prefix, topology.inbound_key(settings, letter.conversation))
    assert calls["/permanent"] == 1
    assert fake_api.fake.replies == []


async def test_always_failing_handler_dead_letters_after_max_attempts(path, fake_api):
    relay, calls = path
    await relay.post(text_callback("9003", "/boom"))
    letters = await relay.wait_dead(1)
    assert len(letters) == 1
    assert letters[0].attempts == relay.settings.max_attempts == 3
    assert letters[0].error_kind == "transient"
    assert letters[0].error == "RuntimeError: always broken"
    assert calls["/boom"] == 3
    assert [a for _, a in relay.attempts] == [1, 2, 3]
    assert fake_api.fake.replies == []


async def test_undecodable_body_dead_letters_at_once(path, fake_api):
    relay, calls = path
    await relay.publish_raw(b"{not json", "raw-1")
    letters = await relay.wait_dead(1)
    assert len(letters) == 1
    assert letters[0].id == "raw-1"
    assert letters[0].error_kind == "permanent"
    assert letters[0].error.startswith("PayloadError: invalid JSON")
    assert letters[0].attempts == 1
    assert not calls


async def test_reply_400_for_one_receiver_dead_letters_after_one_attempt(path, fake_api):
    relay, calls = path
    fake_api.fake.config.status_for_receiver = {"bad-user": 400}
    await relay.post(text_callback("9005", "hello", sender="bad-user"),
                     text_callback("9006", "hello too", sender="good-user"))
    letters = await relay.wait_dead(1)
    assert await wait_for(lambda: len(fake_api.fake.replies) >= 1, timeout=20)
    await asyncio.wait_for(relay.worker.until_idle(), 20)
    assert len(letters) == 1
    assert letters[0].id.endswith(":9005")
    assert letters[0].attempts == 1
    assert letters[0].error_kind == "permanent"
    assert letters[0].error.startswith("ReplyRejected: reply API answered 400")
    assert [(r.body["receiver"], r.body["data"]["text"]) for r in fake_api.fake.replies] == [
        ("good-user", "echo: hello too")]
    assert calls["hello"] == 1
