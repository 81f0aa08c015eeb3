"""The testing kit reports each outcome the production path would reach, with no broker."""

from __future__ import annotations

import asyncio
from collections import Counter

from botrelay.shared.errors import PermanentError, Retry
from botrelay.shared.settings import Settings
from botrelay.worker import Bot, Message
from botrelay.worker.testing import BotTester, text_callback
from tests.helpers import FIXTURES, fixture


def flaky_bot(calls: Counter[str]) -> Bot:
    bot = Bot()

    @bot.command("flaky")
    async def flaky(msg: Message) -> str:
        calls["flaky"] += 1
        if calls["flaky"] <= 2:
            raise Retry(delay=3, reason="the weather service is busy")
        return "sunny"

    @bot.command("fail")
    async def fail(msg: Message) -> str:
        calls["fail"] += 1
        raise RuntimeError("bug in the handler")

    @bot.command("never")
    async def never(msg: Message) -> str:
        raise PermanentError("no such city")

    @bot.command("slow")
    async def slow(msg: Message) -> str:
        await asyncio.sleep(5)
        return "too late"

    @bot.command("quiet")
    async def quiet(msg: Message) -> None:
        return None

    return bot


async def test_replied_with_the_request_bodies() -> None:
    result = await BotTester(flaky_bot(Counter())).send(fixture("bot_user_text"))
    assert result.outcome == "ignored" and result.reason == "no handler matched"
    from examples.echo_bot import bot

    result = await BotTester(bot).send(FIXTURES / "bot_user_text.json")
    assert result.outcome == "replied"
    assert result.replies == [{"receiver": "cometchat-uid-1", "receiverType": "user",
                               "category": "message", "type": "text",
                               "data": {"text": "echo: hi"}, "muid": result.replies[0]["muid"],
                               "tags": [result.replies[0]["muid"]]}]
    assert result.dedup_key == "2248348660ad9bd4:demo_bot:after_message:712"
    assert result.message is not None and result.message.text == "hi"
    assert result.attempts == 1


async def test_a_retry_is_reported_with_its_delay_and_reason() -> None:
    calls: Counter[str] = Counter()
    tester = BotTester(flaky_bot(calls))
    result = await tester.send(text_callback("/flaky"))
    assert result.outcome == "retry"
    assert result.delay == 5  # the shortest configured retry queue of at least 3 s
    assert result.error == "Retry: the weather service is busy"
    assert result.replies == [] and calls["flaky"] == 1


async def test_follow_retries_runs_the_later_attempts_at_once() -> None:
    calls: Counter[str] = Counter()
    result = await BotTester(flaky_bot(calls)).send(text_callback("/flaky"), follow_retries=True)
    assert result.outcome == "replied" and result.texts == ["sunny"]
    assert result.attempts == 3 and calls["flaky"] == 3


async def test_attempts_run_out_into_the_dead_letter_queue() -> None:
    calls: Counter[str] = Counter()
    settings = Settings(uvloop=False, max_attempts=4)
    result = await BotTester(flaky_bot(calls), settings).send(text_callback("/fail"),
                                                              follow_retries=True)
    assert result.outcome == "dead_lettered"
    assert result.error == "RuntimeError: bug in the handler"
    assert result.error_kind == "transient"
    assert result.attempts == calls["fail"] == 4


async def test_a_permanent_error_is_dead_lettered_at_once() -> None:
    result = await BotTester(flaky_bot(Counter())).send(text_callback("/never"),
                                                        follow_retries=True)
    assert (result.outcome, result.error, result.error_kind, result.attempts) == (
        "dead_lettered", "PermanentError: no such city", "permanent", 1)


async def test_a_slow_handler_times_out_into_a_retry() -> None:
    settings = Settings(uvloop=False, handler_timeout=0.1)
    result = await BotTester(flaky_bot(Counter()), settings).send(text_callback("/slow"))
    assert result.outcome == "retry"
    assert result.error == "TransientError: handler did not finish within 0.1s"


async def test_what_the_ingress_refuses_is_rejected() -> None:
    tester = BotTester(flaky_bot(Counter()))
    result = await tester.send(b"{not json")
    assert result.outcome == "rejected" and result.error.startswith("PayloadError: invalid JSON")
    doc = fixture("bot_user_text")
    del doc["data"]["sender"]
    result = await tester.send(doc)
    assert result.outcome == "rejected"
    assert result.error == "PayloadError: invalid callback: missing field 'data.sender'"


async def test_a_redelivered_callback_is_answered_once() -> None:
    from examples.echo_bot import bot

    tester = BotTester(bot)
    first = await tester.send(fixture("bot_user_text"))
    again = await tester.send(fixture("bot_user_text"))
    assert first.outcome == "replied"
    assert again.outcome == "ignored" and again.reason == "duplicate: already answered"
    assert len(tester.sent) == 1


async def test_a_handler_without_reply_and_the_bots_own_message() -> None:
    tester = BotTester(flaky_bot(Counter()))
    assert (await tester.send(text_callback("/quiet"))).reason == "the handler returned no reply"
    own = await tester.send(fixture("bot_own_message"))
    assert own.outcome == "ignored" and own.reason == "the bot's own message"


async def test_reply_api_answers_can_be_simulated() -> None:
    from examples.echo_bot import bot

    tester = BotTester(bot, reply_status={"blocked-user": 400, "busy-user": 503})
    rejected = await tester.send(text_callback("hi", sender="blocked-user"))
    assert rejected.outcome == "dead_lettered" and rejected.error_kind == "permanent"
    assert rejected.error == "ReplyRejected: reply API answered 400: simulated"
    busy = await tester.send(text_callback("hi", sender="busy-user"))
    assert busy.outcome == "retry"
    assert busy.error == "ReplyFailed: reply API answered 503: simulated"
    assert tester.sent == []
