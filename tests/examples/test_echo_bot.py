"""The echo bot, driven through every fixture with the testing kit."""

from __future__ import annotations

import pytest

from botrelay.worker.testing import BotTester, text_callback
from examples.echo_bot import bot
from tests.helpers import FIXTURES, fixture_names

# What the echo bot does with each fixture: (outcome, the lines it would send or why it is silent)
EXPECTED: dict[str, tuple[str, list[str] | str]] = {
    "bot_user_text": ("replied", ["reply -> user cometchat-uid-1: echo: hi"]),
    "bot_group_text": ("replied", ["reply -> group support: Try /weather <city>"]),
    "bot_user_image": ("ignored", "no handler matched"),
    "bot_user_custom": ("ignored", "no handler matched"),
    "bot_own_message": ("ignored", "the bot's own message"),
    "webhook_message_sent": ("replied", ["reply -> user cometchat-uid-1: echo: hi"]),
    "webhook_message_edited": ("ignored", "no handler matched"),
    "webhook_message_deleted": ("ignored", "no handler matched"),
    "webhook_reaction_added": ("ignored", "no handler matched"),
    "webhook_group_member_joined": ("ignored", "no handler matched"),
    "webhook_user_mentioned": ("ignored", "no handler matched"),
    "webhook_meeting_started": ("ignored", "unhandled trigger 'meeting_started'"),
}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(EXPECTED) == fixture_names()


@pytest.mark.parametrize("name", fixture_names())
async def test_fixture(name: str) -> None:
    outcome, expected = EXPECTED[name]
    result = await BotTester(bot).send(FIXTURES / f"{name}.json")
    assert result.outcome == outcome
    if outcome == "replied":
        assert result.lines == expected
        assert all(body["muid"].startswith("br-") for body in result.replies)
    else:
        assert result.reason == expected
        assert result.replies == []


async def test_text_and_help() -> None:
    tester = BotTester(bot)
    assert (await tester.send(text_callback("hello there"))).texts == ["echo: hello there"]
    assert (await tester.send(text_callback("/help"))).texts == ["Try /weather <city>"]
    group = await tester.send(text_callback("hi all", group="lobby"))
    assert group.lines == ["reply -> group lobby: echo: hi all"]
