"""Both payload formats into one model: bot callbacks and Webhooks, messages and other events."""

from __future__ import annotations

import copy
import dataclasses
import time

import pytest

from botrelay.shared.errors import PayloadError
from botrelay.shared.model import HANDLED_TRIGGERS
from botrelay.shared.payloads import parse_callback
from botrelay.worker import Bot, Message
from botrelay.worker.testing import BotTester
from tests.helpers import fixture

CONTENT_FIELDS = ("id", "sender", "receiver", "receiver_type", "conversation_id", "category",
                  "type", "text", "data", "mentions", "sent_at", "region", "app_id")


def _as_webhook(bot_callback: dict) -> dict:
    """The same message in the Webhooks format: under data.message, a webhook id, no bot."""
    doc = copy.deepcopy(bot_callback)
    return {"trigger": "message_sent", "data": {"message": doc["data"]}, "appId": doc["appId"],
            "region": doc["region"], "webhook": "wh-prod-1"}


@pytest.mark.parametrize("name", ["bot_user_text", "bot_group_text", "bot_user_image",
                                  "bot_user_custom"])
async def test_a_webhook_and_a_bot_callback_of_one_message_reach_the_same_handler(name):
    seen: list[tuple[str, Message]] = []
    bot = Bot(uid="demo_bot")

    @bot.on(["after_message", "message_sent"])
    async def handler(msg: Message) -> None:
        seen.append(("handler", msg))

    tester = BotTester(bot)
    callback = fixture(name)
    assert (await tester.send(callback)).reason == "the handler returned no reply"
    assert (await tester.send(_as_webhook(callback))).reason == "the handler returned no reply"
    (first, a), (second, b) = seen
    assert first == second == "handler"
    for name_ in CONTENT_FIELDS:
        assert getattr(a, name_) == getattr(b, name_), name_
    assert (a.bot, a.webhook, a.trigger) == ("demo_bot", None, "after_message")
    assert (b.bot, b.webhook, b.trigger) == (None, "wh-prod-1", "message_sent")
    assert (a.command, a.args) == (b.command, b.args)


def test_the_shipped_webhook_fixture_matches_the_bot_callback_fixture():
    a = parse_callback(fixture("bot_user_text")).message
    b = parse_callback(fixture("webhook_message_sent")).message
    assert a is not None and b is not None
    same = {f for f in CONTENT_FIELDS if f != "id"}
    assert {f: getattr(a, f) for f in same} == {f: getattr(b, f) for f in same}


def test_mentions_from_data_and_from_the_text():
    msg = parse_callback(fixture("bot_group_text")).message
    assert msg is not None
    assert msg.mentions == ("demo_bot",)
    assert msg.mentions_uid("demo_bot") and not msg.mentions_uid("someone")
    doc = fixture("bot_group_text")
    del doc["data"]["data"]["mentions"]
    doc["data"]["data"]["text"] = "hey <@uid:alice> and <@uid:bob>, ask <@uid:alice>"
    assert parse_callback(doc).message.mentions == ("alice", "bob")


@pytest.mark.parametrize(("text", "command", "args"), [
    ("/weather Berlin", "weather", "Berlin"),
    ("/Weather@demo_bot  New York ", "weather", "New York"),
    ("<@uid:demo_bot> /weather Berlin", "weather", "Berlin"),
    ("/help <@uid:demo_bot>", "help", ""),
    ("/invite <@uid:bob> now", "invite", "now"),
    ("hello <@uid:demo_bot>", None, "hello"),
    ("/", None, "/"),
])
def test_commands_and_arguments(text, command, args):
    doc = fixture("bot_user_text")
    doc["data"]["data"]["text"] = text
    msg = parse_callback(doc).message
    assert (msg.command, msg.args) == (command, args)


def test_an_edit_is_about_the_edited_message_and_each_edit_is_its_own_event():
    callback = parse_callback(fixture("webhook_message_edited"))
    msg = callback.message
    assert callback.dedup_key == "2248348660ad9bd4:wh-prod-1:message_edited:718"
    assert (msg.id, msg.text, msg.category, msg.type) == ("717", "hi there", "message", "text")
    assert (msg.sender, msg.receiver, msg.reply_receiver) == (
        "cometchat-uid-1", "demo_bot", ("cometchat-uid-1", "user"))


def test_a_delete_names_the_deleted_message():
    callback = parse_callback(fixture("webhook_message_deleted"))
    msg = callback.message
    assert callback.dedup_key.endswith(":message_deleted:719")
    assert (msg.id, msg.text, msg.sender) == ("717", None, "cometchat-uid-1")
    assert msg.conversation_id == "cometchat-uid-1_user_demo_bot"


def test_a_reaction_is_from_the_reacting_user_about_a_message():
    callback = parse_callback(fixture("webhook_reaction_added"))
    msg = callback.message
    assert callback.dedup_key == ("2248348660ad9bd4:wh-prod-1:message_reaction_added:"
                                  "41@1680125300")
    assert (msg.id, msg.sender, msg.reaction, msg.category) == (
        "717", "cometchat-uid-1", "👍", "reaction")
    assert msg.reply_receiver == ("cometchat-uid-1", "user")
    removed = fixture("webhook_reaction_added")
    removed["trigger"] = "message_reaction_removed"
    assert parse_callback(removed).dedup_key != callback.dedup_key


@pytest.mark.parametrize("trigger", sorted(t for t in HANDLED_TRIGGERS
                                           if t.startswith("group_member_")))
def test_group_member_events_go_to_the_group(trigger):
    doc = fixture("webhook_group_member_joined")
    doc["trigger"] = trigger
    doc["data"]["by"] = {"uid": "cometchat-uid-1", "name": "Andrew Joseph"}
    callback = parse_callback(doc)
    msg = callback.message
    assert msg.members == ("cometchat-uid-2",)
    assert (msg.sender, msg.receiver, msg.receiver_type) == ("cometchat-uid-1", "support",
                                                             "group")
    assert msg.reply_receiver == ("support", "group")
    assert callback.conversation_id == "group_support"
    # The same body resent has the same key; another event has another.
    assert parse_callback(copy.deepcopy(doc)).dedup_key == callback.dedup_key
    doc["data"]["group"]["updatedAt"] += 1
    assert parse_callback(doc).dedup_key != callback.dedup_key


def test_who_joined_is_the_sender_when_nobody_else_acted():
    msg = parse_callback(fixture("webhook_group_member_joined")).message
    assert msg.sender == "cometchat-uid-2"


@pytest.mark.parametrize("trigger", ["meeting_started", "call_ended", "user_blocked",
                                     "group_created", "before_message", "brand_new_trigger"])
def test_unknown_triggers_are_ignored_not_rejected(trigger):
    doc = {"trigger": trigger, "data": {"anything": [1, 2]}, "appId": "a", "webhook": "w"}
    callback = parse_callback(doc)
    assert callback.message is None
    assert callback.ignore_reason == f"unhandled trigger '{trigger}'"


@pytest.mark.parametrize(("mutate", "detail"), [
    (lambda d: d["data"].pop("reaction"), "field 'data.reaction' must be an object"),
    (lambda d: d["data"]["reaction"].pop("messageId"), "missing field 'data.reaction.messageId'"),
    (lambda d: [d["data"]["reaction"].pop(k) for k in ("uid", "reactedBy")],
     "missing field 'data.reaction.uid'"),
])
def test_a_malformed_reaction_is_a_payload_error(mutate, detail):
    doc = fixture("webhook_reaction_added")
    mutate(doc)
    with pytest.raises(PayloadError) as info:
        parse_callback(doc)
    assert info.value.detail == detail


def test_an_event_key_too_long_for_a_message_id_is_a_payload_error():
    doc = fixture("webhook_reaction_added")
    # Each id is within its own bound; together they are too long for AMQP's message-id.
    doc["appId"] = "a" * 64
    doc["webhook"] = "w" * 100
    doc["data"]["reaction"]["id"] = "r" * 100
    with pytest.raises(PayloadError, match="must stay within 252 bytes"):
        parse_callback(doc)


def test_a_group_member_event_without_a_group_is_a_payload_error():
    doc = fixture("webhook_group_member_joined")
    del doc["data"]["group"]
    with pytest.raises(PayloadError, match=r"data\.group"):
        parse_callback(doc)


def test_message_stays_a_frozen_value():
    msg = parse_callback(fixture("bot_user_text")).message
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.text = "changed"  # type: ignore[misc]


def test_parsing_stays_fast():
    """The ingress parses every callback: a message callback stays in the tens of microseconds."""
    doc = fixture("bot_group_text")
    started = time.perf_counter()
    for _ in range(2000):
        parse_callback(doc)
    per_call = (time.perf_counter() - started) / 2000
    assert per_call < 200e-6, f"{per_call * 1e6:.0f} µs per callback"
