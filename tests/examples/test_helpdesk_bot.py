"""The help-desk example, driven through every fixture and its commands with the testing kit."""

from __future__ import annotations

import copy

import pytest

from botrelay.worker.testing import BotTester, text_callback
from examples.helpdesk_bot import CAT_URL, SUPPORT_GROUP, bot
from tests.helpers import FIXTURES, fixture, fixture_names

WEATHER_TEXT = "Weather for {}: sunny, 21 °C"

EXPECTED: dict[str, tuple[str, list[str] | str]] = {
    "bot_user_text": ("replied", ["reply -> user cometchat-uid-1: I did not understand that. "
                                  "Try /help."]),
    # A group message that mentions the bot: "/help <@uid:demo_bot>".
    "bot_group_text": ("replied", ["reply -> group support: Commands: /weather <city>, "
                                   "/remind <minutes> <what>, /ticket <problem>, /cat. "
                                   "In a group, mention me."]),
    "bot_user_image": ("ignored", "no handler matched"),
    "bot_user_custom": ("replied", [
        'reply -> user cometchat-uid-1: [custom weather] {"place":"52.52, 13.40","forecast":'
        '"sunny","celsius":21} Weather for 52.52, 13.40: sunny, 21 °C (metadata {"source":'
        '"helpdesk-example"})']),
    "bot_own_message": ("ignored", "the bot's own message"),
    "webhook_message_sent": ("replied", ["reply -> user cometchat-uid-1: I did not understand "
                                         "that. Try /help."]),
    "webhook_message_edited": ("replied", [
        "reply -> user cometchat-uid-1: I only read new messages: send it again if you want me "
        "to answer the new text."]),
    "webhook_message_deleted": ("ignored", "no handler matched"),
    "webhook_reaction_added": ("ignored", "the handler returned no reply"),  # a 👍
    "webhook_group_member_joined": ("replied", [
        "reply -> group support: Welcome, <@uid:cometchat-uid-2>! Mention me with /help to see "
        "what I can do."]),
    "webhook_user_mentioned": ("ignored", "no handler matched"),
    "webhook_meeting_started": ("ignored", "unhandled trigger 'meeting_started'"),
}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(EXPECTED) == fixture_names()


@pytest.mark.parametrize("name", fixture_names())
async def test_fixture(name: str) -> None:
    outcome, expected = EXPECTED[name]
    result = await BotTester(bot).send(FIXTURES / f"{name}.json")
    assert result.outcome == outcome, result
    if outcome == "replied":
        assert result.lines == expected
    else:
        assert result.reason == expected


async def test_weather_is_a_custom_message_with_a_text_fallback() -> None:
    result = await BotTester(bot).send(text_callback("/weather Berlin"))
    [body] = result.replies
    assert body["category"] == "custom" and body["type"] == "weather"
    assert body["data"]["customData"] == {"place": "Berlin", "forecast": "sunny", "celsius": 21}
    assert body["data"]["text"] == WEATHER_TEXT.format("Berlin")
    assert body["data"]["metadata"] == {"source": "helpdesk-example"}
    assert (await BotTester(bot).send(text_callback("/weather"))).texts == [
        "Usage: /weather <city>"]


@pytest.mark.parametrize(("text", "answer"), [
    ("/remind 10 tea", "OK, I will remind you about tea in 10 minutes."),
    ("/remind 1 the meeting", "OK, I will remind you about the meeting in 1 minute."),
    ("/REMIND 5 stretch", "OK, I will remind you about stretch in 5 minutes."),
    ("/remind tea", "Usage: /remind <minutes> <what>, e.g. /remind 10 tea"),
    ("/remind 10", "Usage: /remind <minutes> <what>, e.g. /remind 10 tea"),
    ("/remind 0 tea", "Usage: /remind <minutes> <what>, e.g. /remind 10 tea"),
])
async def test_remind_parses_its_arguments(text: str, answer: str) -> None:
    assert (await BotTester(bot).send(text_callback(text))).texts == [answer]


async def test_ticket_confirms_and_files_in_the_support_group() -> None:
    result = await BotTester(bot).send(text_callback("/ticket printer on fire", sender="ann"))
    assert result.lines == [
        "reply -> user ann: Thanks, ticket filed: printer on fire",
        f'reply -> group {SUPPORT_GROUP}: New ticket from <@uid:ann>: printer on fire '
        f'(metadata {{"ticket":{{"from":"ann","message":"{result.message.id}"}}}})',
    ]
    assert len({body["muid"] for body in result.replies}) == 2


async def test_cat_is_an_image_by_url() -> None:
    [body] = (await BotTester(bot).send(text_callback("/cat"))).replies
    assert body["type"] == "image" and body["category"] == "message"
    assert body["data"]["url"] == CAT_URL
    assert body["data"]["attachments"] == [{"url": CAT_URL, "name": "cat.png"}]


async def test_in_a_group_it_answers_only_when_mentioned() -> None:
    tester = BotTester(bot)
    silent = await tester.send(text_callback("/weather Paris", group="lobby"))
    assert silent.outcome == "ignored" and silent.reason == "a message not addressed to the bot"
    mentioned = await tester.send(text_callback("<@uid:demo_bot> /weather Paris", group="lobby",
                                                mentions=("demo_bot",)))
    assert mentioned.lines[0].startswith("reply -> group lobby: [custom weather]")
    # Mentioning someone else is not mentioning the bot.
    other = await tester.send(text_callback("<@uid:bob> /weather Paris", group="lobby",
                                            mentions=("bob",)))
    assert other.outcome == "ignored"
    # In a 1:1 chat no mention is needed.
    assert (await tester.send(text_callback("/weather Rome"))).outcome == "replied"


async def test_a_thumbs_down_reaction_gets_an_answer_to_the_reacting_user() -> None:
    doc = copy.deepcopy(fixture("webhook_reaction_added"))
    doc["data"]["reaction"].update(reaction="👎", id="42")
    result = await BotTester(bot).send(doc)
    assert result.lines == ["reply -> user cometchat-uid-1: Sorry about that! Tell me what went "
                            "wrong with /ticket <problem>."]


async def test_the_bot_does_not_welcome_itself() -> None:
    doc = copy.deepcopy(fixture("webhook_group_member_joined"))
    doc["data"]["members"] = {"demo_bot": {"uid": "demo_bot", "name": "Demo Bot"}}
    result = await BotTester(bot).send(doc)
    assert result.outcome == "ignored"
