"""Webhook events end to end on the in-memory path (what ``botrelay dev`` runs): ingress app ->
MemoryBroker -> worker -> the fake reply API, with the help-desk example bot."""

from __future__ import annotations

import asyncio
import copy

import aiohttp
import orjson
import pytest

from botrelay.dev import MemoryWorker
from botrelay.ingress.app import make_app
from botrelay.ingress.state import STATE
from botrelay.shared.settings import Settings
from botrelay.worker.memory_broker import MemoryBroker
from examples.helpdesk_bot import bot
from tests.conftest import RunningIngress
from tests.helpers import fixture, wait_for


@pytest.fixture
async def relay(fake_api):
    settings = Settings(cometchat_api_base=fake_api.base, cometchat_api_key="test-api-key",
                        cometchat_app_id="2248348660ad9bd4",
                        retry_delays=(0.2, 0.5), max_attempts=3, uvloop=False)
    broker = MemoryBroker(settings)
    ingress = await RunningIngress(make_app(settings, broker=broker)).start()
    async with MemoryWorker(settings, bot, broker) as worker:
        yield ingress, broker, worker
    await ingress.stop()


async def _post(url: str, doc: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/callback", data=orjson.dumps(doc),
            headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


async def test_events_are_answered_to_the_right_receiver(relay, fake_api):
    ingress, broker, worker = relay
    thumbs_down = copy.deepcopy(fixture("webhook_reaction_added"))
    thumbs_down["data"]["reaction"].update(reaction="👎", id="77")
    docs = [fixture("webhook_group_member_joined"), thumbs_down,
            fixture("webhook_message_edited"), fixture("webhook_message_deleted"),
            fixture("webhook_user_mentioned")]
    for doc in docs:
        status, answer = await _post(ingress.url, doc)
        assert (status, answer["status"]) == (200, "queued")
    assert await wait_for(lambda: len(fake_api.fake.replies) >= 3, timeout=10)
    await asyncio.wait_for(worker.until_idle(), 10)
    got = sorted((r.path, r.body["receiverType"], r.body["receiver"], r.body["data"]["text"][:20])
                 for r in fake_api.fake.replies)
    path = "/2248348660ad9bd4/v3/bots/demo_bot/messages"
    assert got == [
        (path, "group", "support", "Welcome, <@uid:comet"),
        (path, "user", "cometchat-uid-1", "I only read new mess"),
        (path, "user", "cometchat-uid-1", "Sorry about that! Te"),
    ]
    assert broker.dead == []


async def test_unknown_triggers_are_200_ignored_and_counted(relay, fake_api):
    ingress, broker, _ = relay
    for trigger in ("meeting_started", "call_ended", "something_new"):
        doc = {**fixture("webhook_meeting_started"), "trigger": trigger}
        status, answer = await _post(ingress.url, doc)
        assert status == 200
        assert answer == {"status": "ignored", "reason": f"unhandled trigger '{trigger}'"}
    metrics = ingress.app[STATE].metrics.callbacks
    assert metrics.labels("ignored", "unhandled_trigger")._value.get() == 3
    assert len(broker.inbound) == 0 and broker.acked == 0
    assert fake_api.fake.replies == []
