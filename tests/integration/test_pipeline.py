"""The main path end to end: ingress -> RabbitMQ -> worker -> fake reply API."""

from __future__ import annotations

import asyncio

import pytest

from examples.echo_bot import bot
from tests.helpers import expected_reply, fixture, fixture_names, generated, post_all, wait_for
from worker.service import Worker

pytestmark = pytest.mark.integration


async def test_every_fixture_and_1000_callbacks_get_exactly_one_correct_reply(
        make_settings, start_ingress, fake_api):
    settings = make_settings()
    ingress = await start_ingress(settings)
    docs = generated(1000)
    fixtures = {name: fixture(name) for name in fixture_names()}

    async with Worker(settings, bot) as worker:
        statuses = await post_all(f"{ingress.url}/callback", list(fixtures.values()) + docs)
        assert set(statuses) == {200}
        # Text fixtures (user, group, webhook) and every generated callback get one reply each;
        # the image/custom messages match no handler, the bot's own message is ignored.
        answered = [fixtures[n] for n in ("bot_user_text", "bot_group_text",
                                          "webhook_message_sent")] + docs
        assert await wait_for(lambda: len(fake_api.fake.replies) >= len(answered), timeout=60)
        await asyncio.wait_for(worker.until_idle(), 30)

    replies = fake_api.fake.replies
    assert len(replies) == len(answered)
    got = sorted((r.body["receiver"], r.body["receiverType"], r.body["data"]["text"])
                 for r in replies)
    want = sorted(expected_reply(d) for d in answered)
    # The group fixture is "/help": it gets the help text, not an echo.
    help_echo = "echo: /help <@uid:demo_bot>"
    want = sorted(w if w[2] != help_echo else (w[0], w[1], "Try /weather <city>") for w in want)
    assert got == want
    assert {r.apikey for r in replies} == {"test-api-key"}
    assert len({r.body["muid"] for r in replies}) == len(replies)
    assert all(r.path.startswith("/2248348660ad9bd4/v3/bots/demo_bot/messages") for r in replies
               if "webhook" not in r.path)
