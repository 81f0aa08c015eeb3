"""Dead letters: permanent errors go at once, transient ones after the last attempt; the DLQ
can be listed, replayed (selectively, concurrently, dry) and purged."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aio_pika
import orjson
import pytest

from botrelay.shared import topology
from botrelay.shared.broker import make_message
from botrelay.shared.headers import ATTEMPT, CONVERSATION, TRIGGER
from botrelay.worker import dlq
from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.helpers import ROOT, post_all, reply_counts, settings_env, text_callback, wait_for

pytestmark = pytest.mark.integration


async def _dead_count(settings) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.dead_queue(settings.prefix), passive=True)
        return queue.declaration_result.message_count or 0


async def _wait_dead(settings, n: int, timeout: float = 30) -> bool:
    for _ in range(int(timeout * 10)):
        if await _dead_count(settings) >= n:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_reply_400_for_one_receiver_dead_letters_after_one_attempt(
        make_settings, start_ingress, fake_api):
    settings = make_settings()
    ingress = await start_ingress(settings)
    fake_api.fake.config.status_for_receiver = {"bad-user": 400}
    good = [text_callback(str(1000 + i), f"good {i}", sender=f"user-{i % 5}") for i in range(40)]
    bad = [text_callback(str(2000 + i), f"bad {i}", sender="bad-user") for i in range(10)]
    async with Worker(settings, bot) as worker:
        assert set(await post_all(f"{ingress.url}/callback", good + bad)) == {200}
        assert await wait_for(lambda: len(fake_api.fake.replies) >= 40, timeout=30)
        assert await _wait_dead(settings, 10)
        await asyncio.wait_for(worker.until_idle(), 20)
    assert sorted(reply_counts(fake_api.fake)) == sorted(f"echo: good {i}" for i in range(40))
    letters = await dlq.list_letters(settings)
    assert len(letters) == 10
    assert {x.id.rsplit(":", 1)[1] for x in letters} == {str(2000 + i) for i in range(10)}
    for letter in letters:
        assert letter.attempts == 1
        assert letter.error_kind == "permanent"
        assert letter.error.startswith("ReplyRejected: reply API answered 400")
        assert letter.trigger == "after_message"
        # The partition queue it was taken from, where a replay returns it.
        assert letter.queue == topology.queue_of_inbound_key(
            settings.prefix, topology.inbound_key(settings, letter.conversation))
    # Exactly one request per bad callback: a 4xx is never retried.
    assert fake_api.fake.statuses[400] == 10
    # Listing returns everything to the queue.
    assert await _dead_count(settings) == 10


async def test_always_503_dead_letters_after_max_attempts_then_replay(
        make_settings, start_ingress, fake_api):
    settings = make_settings(max_attempts=3, reply_budget=0.3, reply_timeout=0.3)
    ingress = await start_ingress(settings)
    fake_api.fake.config.fail_rate = 1.0
    fake_api.fake.config.fail_status = 503
    docs = [text_callback(str(3000 + i), f"later {i}", sender=f"user-{i % 4}") for i in range(12)]
    docs.append(text_callback("3999", "edited one") | {"trigger": "message_sent",
                                                      "webhook": "wh-1"})
    del docs[-1]["bot"]
    async with Worker(settings, bot) as worker:
        assert set(await post_all(f"{ingress.url}/callback", docs)) == {200}
        assert await _wait_dead(settings, len(docs))
        await asyncio.wait_for(worker.until_idle(), 20)
        letters = await dlq.list_letters(settings)
        assert len(letters) == len(docs)
        assert {x.attempts for x in letters} == {3}
        assert {x.error_kind for x in letters} == {"transient"}
        assert all("503" in x.error for x in letters)
        assert fake_api.fake.replies == []

        # The API recovers.
        fake_api.fake.config.fail_rate = 0.0
        dry = await dlq.replay(settings, dlq.Selection(everything=True), dry_run=True)
        assert (len(dry.matched), dry.moved) == (len(docs), 0)
        assert await _dead_count(settings) == len(docs)

        one = next(x.id for x in letters if x.trigger == "after_message")
        picked = await dlq.replay(settings, dlq.Selection(ids=frozenset({one})))
        assert picked.moved == 1 and [x.id for x in picked.matched] == [one]
        by_trigger = await dlq.replay(settings, dlq.Selection(trigger="message_sent"))
        assert by_trigger.moved == 1
        assert by_trigger.matched[0].id == "2248348660ad9bd4:wh-1:message_sent:3999"
        assert await wait_for(lambda: len(fake_api.fake.replies) == 2, timeout=20)

        # Two operators replaying everything at once move each letter once.
        first, second = await asyncio.gather(
            dlq.replay(settings, dlq.Selection(everything=True)),
            dlq.replay(settings, dlq.Selection(everything=True)),
        )
        assert first.moved + second.moved == len(docs) - 2
        assert await wait_for(lambda: len(fake_api.fake.replies) == len(docs), timeout=20)
        await asyncio.wait_for(worker.until_idle(), 20)
    counts = reply_counts(fake_api.fake)
    assert len(counts) == len(docs) and set(counts.values()) == {1}
    assert await _dead_count(settings) == 0


async def test_replaying_an_already_answered_callback_sends_nothing(
        make_settings, start_ingress, fake_api):
    settings = make_settings()
    ingress = await start_ingress(settings)
    doc = text_callback("4000", "answered already")
    async with Worker(settings, bot) as worker:
        await post_all(f"{ingress.url}/callback", [doc])
        assert await wait_for(lambda: len(fake_api.fake.replies) == 1)
        # A copy of the same callback ends up in the DLQ (say, from a crash between reply and
        # ack on an old version); replaying it must not answer twice.
        assert worker.broker.exchange is not None
        await worker.broker.publish(make_message(
            orjson.dumps(doc), message_id="2248348660ad9bd4:demo_bot:after_message:4000",
            headers={ATTEMPT: 2, TRIGGER: "after_message", CONVERSATION: "c"}),
            topology.DEAD_KEY)
        report = await dlq.replay(settings, dlq.Selection(everything=True))
        assert report.moved == 1
        await asyncio.sleep(0.5)
        await asyncio.wait_for(worker.until_idle(), 20)
    assert len(fake_api.fake.replies) == 1
    assert worker.metrics.deliveries.labels("duplicate")._value.get() == 1


def _cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "botrelay.cli", "dlq", *args],
                          env=settings_env(settings), cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


async def test_dlq_cli_list_replay_purge(make_settings):
    settings = make_settings()
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await topology.declare(channel, settings)
        for i in range(3):
            await exchange.publish(make_message(
                b"not json at all", message_id=f"app:bot:after_message:{i}",
                headers={ATTEMPT: 1, TRIGGER: "after_message", CONVERSATION: f"c{i}",
                         "x-botrelay-error": "PayloadError: invalid JSON"}), topology.DEAD_KEY)

    listed = _cli(settings, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = orjson.loads(listed.stdout)
    assert sorted(r["id"] for r in rows) == [f"app:bot:after_message:{i}" for i in range(3)]
    assert rows[0]["error"] == "PayloadError: invalid JSON"

    text = _cli(settings, "list")
    assert "3 dead letter(s)" in text.stdout

    usage = _cli(settings, "replay")
    assert usage.returncode == 2 and "--all" in usage.stderr

    dry = _cli(settings, "replay", "--all", "--dry-run")
    assert dry.returncode == 0 and "would replay 3" in dry.stdout
    assert await _dead_count(settings) == 3

    purged = _cli(settings, "purge", "--id", "app:bot:after_message:1")
    assert purged.returncode == 0 and "purged 1" in purged.stdout
    assert await _dead_count(settings) == 2

    refused = _cli(settings, "purge")
    assert refused.returncode == 2
    everything = _cli(settings, "purge", "--yes")
    assert everything.returncode == 0 and "purged 2" in everything.stdout
    assert await _dead_count(settings) == 0


def test_dlq_cli_broker_unreachable_is_one_clear_line(make_settings):
    settings = make_settings(amqp_url="amqp://guest:guest@127.0.0.1:1/")
    result = _cli(settings, "list")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
