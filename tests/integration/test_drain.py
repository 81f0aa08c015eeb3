"""Lowering the partition count or switching ordering off strands nothing: ``botrelay drain``
moves what the old partition queues hold to the current routing."""

from __future__ import annotations

import asyncio

import pytest

from botrelay.shared import topology
from botrelay.worker.drain import drain
from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.helpers import publish_as_ingress, text_callback, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("new_mode", ["conversation", "none"])
async def test_drain_moves_stranded_partitions_and_workers_answer_them(
        make_settings, fake_api, new_mode):
    old = make_settings(partitions=8)
    new = make_settings(partitions=2, ordering=new_mode)
    docs = [text_callback(str(7000 + i), f"stranded {i}", sender=f"user-{i}") for i in range(40)]
    await publish_as_ingress(old, docs)
    stranded = topology.partition_queues(old)[2 if new_mode == "conversation" else 0:]
    assert stranded

    report = await drain(new, old_partitions=8, idle=0.5)
    moved_from = {name for name, n in report.moved.items() if n}
    assert moved_from <= set(stranded)
    kept = 40 - report.total  # those already in partitions the new settings still consume
    assert report.total > 0 and kept >= 0
    again = await drain(new, old_partitions=8, delete=True, idle=0.5)
    assert again.total == 0 and set(again.deleted) == set(stranded)

    async with Worker(new, bot) as worker:
        assert await wait_for(lambda: len(fake_api.fake.replies) == 40, timeout=30)
        await asyncio.wait_for(worker.until_idle(), 20)
    assert sorted(r.body["data"]["text"] for r in fake_api.fake.replies) == sorted(
        f"echo: stranded {i}" for i in range(40))
