"""A queue setting changed on a live deployment: one clear line instead of a traceback or a 503
loop, and ``botrelay migrate`` recreating the queues without losing a callback."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from botrelay.shared import topology
from botrelay.shared.queue_changes import QueueMismatch
from botrelay.worker.migrate import migrate, plan
from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.helpers import (
    ROOT,
    muid_counts,
    publish_as_ingress,
    settings_env,
    text_callback,
    wait_for,
)
from tests.integration.processes import IngressProcess, free_port

pytestmark = pytest.mark.integration

COUNT = 30


async def test_a_changed_queue_setting_is_one_line_and_migrate_keeps_every_callback(
        make_settings, fake_api, tmp_path) -> None:
    old = make_settings(inbound_max_length=1000)
    new = make_settings(inbound_max_length=5000)
    docs = [text_callback(str(8000 + i), f"kept {i}", sender=f"user-{i}") for i in range(COUNT)]
    await publish_as_ingress(old, docs)

    # The worker: one line, naming the setting and the way out; nothing consumed, and nothing
    # it opened on the way left running.
    worker = Worker(new, bot)
    with pytest.raises(QueueMismatch) as raised:
        await asyncio.wait_for(worker.start(), 20)
    assert worker.broker.connection is None or worker.broker.connection.is_closed
    assert all(task.done() for task in worker._tasks)
    message = str(raised.value)
    assert "x-max-length=1000" in message and "BOTRELAY_INBOUND_MAX_LENGTH" in message
    assert "botrelay migrate" in message and "\n" not in message

    # The ingress process: exit 2 with that line, not a 503 loop.
    log = tmp_path / "ingress.log"
    ingress = IngressProcess(new, free_port(), log)
    with pytest.raises(RuntimeError, match="exited with 2"):
        await ingress.start(timeout=20)
    logged = log.read_text()
    assert "BOTRELAY_INBOUND_MAX_LENGTH" in logged and "Traceback" not in logged, logged

    # Dry run: says what would move, moves nothing.
    changes = await plan(new)
    assert {c.queue for c in changes} == set(topology.inbound_queues(new))
    run = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "botrelay", "migrate", "--dry-run"],
        env=settings_env(new), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    printed = run.stdout.splitlines()
    assert printed[0].startswith(f"would move {topology.inbound_queue(new.prefix)}: "), printed
    assert printed[-1].startswith(f"{len(changes)} queue(s) to move"), printed
    report = await migrate(new, dry_run=True)
    assert report.moved == {} and len(report.changes) == len(changes)

    report = await migrate(new, out=lambda line: None)
    assert sum(report.moved.values()) == COUNT
    assert await plan(new) == []  # every queue now has the new arguments

    async with Worker(new, bot):
        assert await wait_for(lambda: len(fake_api.fake.replies) == COUNT, timeout=30)
    assert sorted(muid_counts(fake_api.fake).values()) == [1] * COUNT
    assert sorted(r.body["data"]["text"] for r in fake_api.fake.replies) == sorted(
        f"echo: kept {i}" for i in range(COUNT))
