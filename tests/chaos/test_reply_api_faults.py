"""The reply API misbehaving: hanging, resetting connections, answering bytes that are not HTTP,
a burst of 503s. Once it behaves again, every accepted callback has been answered exactly once.

One fault cannot be absorbed on botrelay's side: the API stores a reply and the connection drops
before its answer arrives. botrelay must resend (it cannot tell this from a reply that never
arrived); the resent reply carries the same ``muid``, so an API that honours ``muid`` drops it.
That test counts those duplicates and checks they are recognisable, rather than hiding them.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from botrelay.shared.fake_cometchat import FakeConfig
from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.chaos.stream import Stream, run_with_fault

pytestmark = pytest.mark.chaos

FAULTS = {
    "hang": (FakeConfig(hang_first=12), "first 12 requests never answered"),
    "reset": (FakeConfig(reset_first=25), "first 25 connections reset"),
    "garbage": (FakeConfig(garbage_first=25), "first 25 answers not HTTP"),
    "503 burst": (FakeConfig(fail_first=40, fail_status=503), "first 40 answered 503"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_reply_api_faults_heal_to_exactly_once(make_settings, start_ingress, fake_api,
                                                     fault: str) -> None:
    config, note = FAULTS[fault]
    fake_api.fake.config = config
    settings = make_settings(reply_timeout=0.5, reply_budget=1.5)
    ingress = await start_ingress(settings)
    stream = Stream(f"{ingress.url}/callback", 60, interval=0.01)

    async def nothing() -> None:
        await asyncio.sleep(0)

    async with Worker(settings, bot) as worker:
        figures = await run_with_fault(f"reply API: {fault}", stream, fake_api.fake, nothing,
                                       note=note)
        await asyncio.wait_for(worker.until_idle(), 30)
        errors = worker.metrics.registry.get_sample_value(
            "botrelay_reply_requests_total", {"status": "error"}) or 0
    assert fake_api.fake.requests > len(fake_api.fake.replies), "the fault was not injected"
    if fault != "503 burst":
        assert errors > 0
    assert figures.accepted == figures.sent
    assert figures.lost == 0
    assert figures.duplicated == 0


async def test_lost_answers_are_looked_up_not_resent(make_settings, start_ingress,
                                                          fake_api) -> None:
    fake_api.fake.config = FakeConfig(lose_answer_first=10)
    settings = make_settings(reply_timeout=0.5, reply_budget=1.5)
    ingress = await start_ingress(settings)
    stream = Stream(f"{ingress.url}/callback", 60, interval=0.01)

    async def nothing() -> None:
        await asyncio.sleep(0)

    async with Worker(settings, bot) as worker:
        figures = await run_with_fault(
            "reply API: stores, then drops the answer", stream, fake_api.fake, nothing,
            note="first 10; looked up by tag, not resent")
        await asyncio.wait_for(worker.until_idle(), 30)
    assert figures.lost == 0
    muids: dict[str, set[str]] = defaultdict(set)
    for reply in fake_api.fake.replies:
        muids[reply.body["data"]["text"]].add(reply.body["muid"])
    assert all(len(m) == 1 for m in muids.values()), "a resent reply changed its muid"
    # Each lost answer was followed by a lookup by tag, which found the reply stored: none
    # went twice.
    assert fake_api.fake.lookups >= 10
    assert figures.duplicated == 0


async def test_garbage_answers_for_a_while_do_not_use_up_attempts(make_settings, start_ingress,
                                                                  fake_api) -> None:
    """An answer that is not HTTP (a broken proxy in front of the API) is a transient fault like
    a 5xx: retried within the inline budget, not counted as a failed attempt at once."""
    fake_api.fake.config = FakeConfig(garbage_first=40)
    settings = make_settings(reply_timeout=0.5, reply_budget=1.5, max_attempts=3)
    ingress = await start_ingress(settings)
    stream = Stream(f"{ingress.url}/callback", 10, interval=0.01)

    async def nothing() -> None:
        await asyncio.sleep(0)

    async with Worker(settings, bot) as worker:
        figures = await run_with_fault("reply API: garbage for 40 answers", stream,
                                       fake_api.fake, nothing, settle=20,
                                       note="10 callbacks, 3 attempts each")
        await asyncio.wait_for(worker.until_idle(), 30)
    assert fake_api.fake.requests >= 40
    assert figures.lost == 0
    assert figures.duplicated == 0
