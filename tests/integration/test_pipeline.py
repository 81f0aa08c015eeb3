"""The main path end to end: ingress -> RabbitMQ -> worker -> fake reply API."""

from __future__ import annotations

import asyncio

import pytest

from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.helpers import expected_reply, fixture, fixture_names, generated, post_all, wait_for

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


async def test_worker_sigkilled_with_500_in_flight_then_replaced_answers_every_callback(
        make_settings, start_ingress, fake_api, tmp_path):
    from tests.helpers import WorkerProcess, reply_counts

    settings = make_settings(concurrency=64)
    ingress = await start_ingress(settings)
    fake_api.fake.config.latency = 0.05  # keeps the prefetch full of unfinished deliveries
    docs = generated(500, start=50_000)
    expected = {f"echo: {d['data']['data']['text']}" for d in docs}
    first = WorkerProcess(settings, log_path=tmp_path / "first.log")
    second = None
    try:
        statuses = await post_all(f"{ingress.url}/callback", docs)
        assert set(statuses) == {200}
        assert await wait_for(lambda: len(fake_api.fake.replies) >= 50, timeout=30)
        first.kill()
        killed_at = len(fake_api.fake.replies)
        second = WorkerProcess(settings, log_path=tmp_path / "second.log")
        assert await wait_for(lambda: set(reply_counts(fake_api.fake)) >= expected, timeout=60)
    finally:
        first.kill()
        if second is not None:
            second.terminate(timeout=15)
    counts = reply_counts(fake_api.fake)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    # With in-memory dedup (one worker at a time) the replacement cannot know what the killed
    # worker had sent but not yet acked: those few are answered twice. Redis dedup closes that
    # gap (tests/integration/test_exactly_once.py).
    print(f"\n[SIGKILL, memory dedup] killed after {killed_at} replies; answered={len(counts)} "
          f"of {len(docs)}, duplicates={duplicates}")
    assert set(counts) == expected
    assert duplicates <= 64
