"""Which handler runs for which event: commands, text, mentions, triggers, groups, webhooks."""

from __future__ import annotations

import copy

import pytest

from botrelay.shared.payloads import parse_callback
from botrelay.worker import Bot, Message
from botrelay.worker.reply import ReplyInvalid
from botrelay.worker.testing import BotTester, text_callback
from tests.helpers import fixture


def make_bot(uid: str | None = None, **options: bool) -> Bot:
    bot = Bot(uid, **options)

    @bot.command("help")
    async def help_(msg: Message) -> str:
        return "help"

    @bot.on_mention()
    async def mentioned(msg: Message) -> str:
        return f"mentioned by {msg.sender}"

    @bot.on("user_mentioned")
    async def user_mentioned(msg: Message) -> str:
        return f"user_mentioned: {','.join(msg.mentions)}"

    @bot.on_text()
    async def text(msg: Message) -> str:
        return f"text: {msg.text}"

    return bot


def _webhook(doc: dict) -> dict:
    doc = copy.deepcopy(doc)
    return {"trigger": "message_sent", "data": {"message": doc["data"]}, "appId": doc["appId"],
            "region": "eu", "webhook": "wh-1"}


async def test_on_mention_takes_messages_that_mention_the_bot() -> None:
    tester = BotTester(make_bot())
    hey = text_callback("hey <@uid:demo_bot>", group="lobby", mentions=("demo_bot",))
    assert (await tester.send(hey)).texts == ["mentioned by cometchat-uid-1"]
    # Mentioning someone else is plain text; so is a mention in text the bot cannot see.
    other = text_callback("hey <@uid:bob>", group="lobby", mentions=("bob",))
    assert (await tester.send(other)).texts == ["text: hey <@uid:bob>"]
    # A command wins over the mention.
    cmd = text_callback("<@uid:demo_bot> /help", group="lobby", mentions=("demo_bot",))
    assert (await tester.send(cmd)).texts == ["help"]


async def test_on_mention_with_webhooks_needs_the_bot_uid() -> None:
    hey = _webhook(text_callback("hey <@uid:demo_bot>", group="lobby", mentions=("demo_bot",)))
    # Without a uid the bot cannot tell it was mentioned, nor send a reply to a group.
    blind = await BotTester(make_bot()).send(hey)
    assert blind.outcome == "dead_lettered" and "needs the bot's uid" in str(blind.error)
    assert (await BotTester(make_bot("demo_bot")).send(hey)).texts == [
        "mentioned by cometchat-uid-1"]


async def test_user_mentioned_reaches_only_handlers_subscribed_to_it() -> None:
    result = await BotTester(make_bot("demo_bot")).send(fixture("webhook_user_mentioned"))
    assert result.texts == ["user_mentioned: demo_bot"]
    assert result.lines[0].startswith("reply -> group support:")


async def test_mention_in_groups_silences_the_bot_unless_mentioned() -> None:
    tester = BotTester(make_bot("demo_bot", mention_in_groups=True))
    assert (await tester.send(text_callback("/help", group="lobby"))).outcome == "ignored"
    assert (await tester.send(text_callback("hi", group="lobby"))).outcome == "ignored"
    assert (await tester.send(text_callback("/help <@uid:demo_bot>", group="lobby",
                                            mentions=("demo_bot",)))).texts == ["help"]
    assert (await tester.send(text_callback("/help"))).texts == ["help"]  # 1:1


async def test_a_webhook_bot_answers_only_1_to_1_messages_sent_to_it() -> None:
    tester = BotTester(make_bot("demo_bot"))
    to_bot = _webhook(text_callback("hi", sender="ann"))
    between_users = _webhook(text_callback("hi", sender="ann", bot="bob"))
    assert (await tester.send(to_bot)).texts == ["text: hi"]
    skipped = await tester.send(between_users)
    assert skipped.outcome == "ignored"
    assert skipped.reason == "a message not addressed to the bot"


async def test_edits_and_deletes_do_not_reach_text_handlers() -> None:
    tester = BotTester(make_bot("demo_bot"))
    for name in ("webhook_message_edited", "webhook_message_deleted"):
        assert (await tester.send(fixture(name))).reason == "no handler matched"


async def test_handlers_must_be_async() -> None:
    bot = Bot()
    with pytest.raises(TypeError, match="must be an async function"):
        bot.on_text()(lambda msg: "x")  # type: ignore[arg-type, return-value]


def test_the_uid_replies_are_sent_as() -> None:
    callback = parse_callback(fixture("bot_group_text")).message
    assert Bot().sender_uid(callback) == "demo_bot"  # named by the bot callback
    webhook_1to1 = parse_callback(fixture("webhook_message_sent")).message
    assert Bot().sender_uid(webhook_1to1) == "demo_bot"  # the receiver of a 1:1 message
    joined = parse_callback(fixture("webhook_group_member_joined")).message
    assert Bot("helper").sender_uid(joined) == "helper"
    with pytest.raises(ReplyInvalid, match="needs the bot's uid"):
        Bot().sender_uid(joined)


async def test_an_event_reply_without_a_bot_uid_is_a_clear_permanent_error() -> None:
    bot = Bot()

    @bot.on("group_member_joined")
    async def welcome(msg: Message) -> str:
        return "welcome"

    result = await BotTester(bot).send(fixture("webhook_group_member_joined"),
                                       follow_retries=True)
    assert result.outcome == "dead_lettered" and result.attempts == 1
    assert result.error == ("ReplyInvalid: a reply to a 'group_member_joined' webhook needs the "
                            "bot's uid: create the bot as Bot(uid=...)")
