"""Replies beyond text, validated before anything is sent: a reply the API would refuse is a
``ReplyInvalid`` (permanent), dead-lettered after one attempt with nothing sent."""

from __future__ import annotations

import pytest

from botrelay.shared.errors import PermanentError
from botrelay.shared.payloads import parse_callback
from botrelay.worker import Bot, Message, Reply
from botrelay.worker.reply import MAX_DATA_BYTES, MAX_MESSAGE_BYTES, ReplyInvalid, muid, normalise
from botrelay.worker.testing import BotTester, text_callback
from tests.helpers import fixture

USER_MSG = parse_callback(fixture("bot_user_text")).message
GROUP_MSG = parse_callback(fixture("bot_group_text")).message


def test_text_goes_to_the_sender_in_1_to_1_and_to_the_group_in_a_group() -> None:
    assert Reply(text="x").body(USER_MSG, "m")["receiver"] == "cometchat-uid-1"
    body = Reply(text="x").body(GROUP_MSG, "m")
    assert (body["receiver"], body["receiverType"]) == ("support", "group")


def test_custom_message_with_metadata() -> None:
    body = Reply(custom_type="location", custom_data={"lat": 1.5}, text="Here",
                 metadata={"k": "v"}).body(USER_MSG, "m1")
    assert body == {"receiver": "cometchat-uid-1", "receiverType": "user", "category": "custom",
                    "type": "location", "data": {"customData": {"lat": 1.5}, "text": "Here",
                                                 "metadata": {"k": "v"}}, "muid": "m1",
                    "tags": ["m1"]}


@pytest.mark.parametrize("kind", ["image", "video", "audio", "file"])
def test_media_by_url(kind: str) -> None:
    body = Reply(media_url="https://example.invalid/a/report.pdf", media_type=kind
                 ).body(USER_MSG, "m")
    assert (body["category"], body["type"]) == ("message", kind)
    assert body["data"] == {"url": "https://example.invalid/a/report.pdf", "attachments": [
        {"url": "https://example.invalid/a/report.pdf", "name": "report.pdf"}]}


def test_another_receiver() -> None:
    body = Reply(text="fyi", receiver="ops", receiver_type="group").body(USER_MSG, "m")
    assert (body["receiver"], body["receiverType"]) == ("ops", "group")
    assert Reply(text="dm", receiver="bob").body(GROUP_MSG, "m")["receiverType"] == "user"


@pytest.mark.parametrize(("reply", "message"), [
    (Reply(), "a reply needs text, custom_data or media_url"),
    (Reply(text=""), "a text reply needs non-empty text"),
    (Reply(text="x", receiver="g", receiver_type="room"), "receiver_type must be 'user' or"),
    (Reply(media_url="https://x.invalid/a", media_type="gif"), "media_type must be image"),
    (Reply(text="x" * MAX_DATA_BYTES), "reply data is"),
    (Reply(custom_type="blob", custom_data={"a": "x" * 9000}, metadata={"b": "y" * 2000}),
     "CometChat's limit is 10 KB"),
    (Reply(text="x", extra={"tags": ["t" * 70_000]}), "CometChat's limit is 65 KB"),
])
def test_invalid_replies_are_refused_before_sending(reply: Reply, message: str) -> None:
    with pytest.raises(ReplyInvalid, match=message.replace("(", r"\(")) as info:
        reply.body(USER_MSG, "m")
    assert isinstance(info.value, PermanentError)


def test_the_limits_are_cometchats() -> None:
    assert (MAX_DATA_BYTES, MAX_MESSAGE_BYTES) == (10 * 1024, 65 * 1024)
    Reply(text="x" * (MAX_DATA_BYTES - 100)).body(USER_MSG, "m")  # just under: fine


def test_handler_results_are_normalised() -> None:
    assert normalise(None) == []
    assert normalise("hi") == [Reply(text="hi")]
    assert normalise(["a", [Reply(text="b")]]) == [Reply(text="a"), Reply(text="b")]
    with pytest.raises(ReplyInvalid, match="returned int"):
        normalise(42)


def test_muid_is_deterministic_per_callback_and_index() -> None:
    assert muid("k", 0) == muid("k", 0) != muid("k", 1) != muid("k2", 1)


async def test_a_too_large_reply_is_dead_lettered_at_once_and_nothing_is_sent() -> None:
    bot = Bot()

    @bot.command("dump")
    async def dump(msg: Message) -> list[Reply]:
        # The first reply is fine, the second too large: neither may go out.
        return [Reply(text="here it comes"), Reply(text="x" * 20_000)]

    @bot.command("number")
    async def number(msg: Message) -> int:
        return 42

    tester = BotTester(bot)
    result = await tester.send(text_callback("/dump"), follow_retries=True)
    assert result.outcome == "dead_lettered" and result.attempts == 1
    assert result.error_kind == "permanent"
    assert result.error.startswith("ReplyInvalid: reply data is 20")
    wrong = await tester.send(text_callback("/number"), follow_retries=True)
    assert wrong.outcome == "dead_lettered" and wrong.attempts == 1
    assert tester.sent == []
