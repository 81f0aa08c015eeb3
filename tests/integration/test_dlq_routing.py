"""Where dead letters and drained callbacks go back to: the queue they failed from, whatever
the replaying process's own ordering settings; and reading the DLQ changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import aio_pika
import aiormq
import pytest

from botrelay.shared import topology
from botrelay.shared.broker import make_message
from botrelay.shared.headers import CONVERSATION
from botrelay.shared.settings import Settings
from botrelay.worker import dlq
from botrelay.worker.drain import drain
from botrelay.worker.service import Worker
from tests.helpers import ROOT, post_all, settings_env, text_callback, wait_for
from tests.integration import failing_bot

pytestmark = pytest.mark.integration


@pytest.fixture
def healed():
    failing_bot.HEALED["value"] = False
    yield failing_bot.HEALED
    failing_bot.HEALED["value"] = False


async def _exists(settings: Settings, queue: str) -> bool:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        with contextlib.suppress(Exception):
            await channel.close()
        return True


async def _botrelay(settings: Settings, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "botrelay.cli", *args, env=settings_env(settings), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_replay_with_default_settings_reaches_workers_in_ordering_none(
        make_settings, start_ingress, fake_api, healed):
    workers = make_settings(ordering="none")
    operator = make_settings()  # the defaults: ordering=conversation
    assert operator.ordering == "conversation"
    ingress = await start_ingress(workers)
    async with Worker(workers, failing_bot.bot) as worker:
        await post_all(f"{ingress.url}/callback", [text_callback("7001", "perm one")])
        assert await wait_for(lambda: worker.metrics.deliveries.labels(
            "dead_lettered")._value.get() == 1, timeout=20)
        [letter] = await dlq.list_letters(workers)
        assert letter.queue == topology.inbound_queue(workers.prefix)
        healed["value"] = True
        code, out, err = await _botrelay(operator, "dlq", "replay", "--id", letter.id)
        assert code == 0, err
        assert "replayed 1" in out
        assert await wait_for(lambda: len(fake_api.fake.replies) == 1, timeout=20)
    assert fake_api.fake.replies[0].body["data"]["text"] == "echo: perm one"
    assert await dlq.dead_count(workers) == 0
    # The replaying process declared none of its own partition queues.
    assert not await _exists(operator, topology.partition_queue(operator.prefix, 0))


async def test_reading_the_dlq_declares_nothing(make_settings):
    settings = make_settings()
    assert await dlq.list_letters(settings) == []
    assert await dlq.dead_count(settings) is None
    code, out, err = await _botrelay(settings, "dlq", "list")
    assert code == 0, err
    assert "empty" in out
    for name in topology.all_queue_names(settings):
        assert not await _exists(settings, name), name


async def test_drain_with_default_settings_reaches_workers_in_ordering_none(
        make_settings, fake_api):
    workers = make_settings(ordering="none")
    old = make_settings(partitions=8)  # an earlier set-up left 8 partition queues
    operator = make_settings(partitions=4)  # drains 4..7 by the default ordering
    connection = await aio_pika.connect(old.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await topology.declare(channel, old)
        conversation = next(f"c{i}" for i in range(100)
                            if topology.partition_of(f"c{i}", 8) >= 4)
        key = topology.inbound_key(old, conversation)
        await exchange.publish(make_message(
            text_callback_bytes("7002", "stranded"), message_id="x:demo_bot:after_message:7002",
            headers={CONVERSATION: conversation}), key)
    async with Worker(workers, failing_bot.bot):
        report = await drain(operator, 8, idle=0.5)
        assert report.total == 1
        # Partition queues 0..3 exist but no worker reads them: the shared queue gets it.
        assert await wait_for(lambda: len(fake_api.fake.replies) == 1, timeout=20)
    assert fake_api.fake.replies[0].body["data"]["text"] == "echo: stranded"


def text_callback_bytes(msg_id: str, text: str) -> bytes:
    import orjson

    return orjson.dumps(text_callback(msg_id, text))
