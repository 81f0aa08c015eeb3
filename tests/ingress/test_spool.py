"""The ingress's disk spool alone (no RabbitMQ): a restart keeps what it holds, a torn or damaged
record is skipped and counted, a full spool answers 503, and the forwarder hands records to the
broker oldest first, deleting each only after its confirm."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from botrelay.ingress.app import make_app
from botrelay.ingress.forwarder import Forwarder
from botrelay.ingress.spool import (
    DB_NAME,
    Spool,
    SpoolFull,
    SpoolLocked,
    SpoolUnavailable,
)
from botrelay.ingress.state import STATE
from botrelay.shared.broker import BrokerUnavailable
from botrelay.shared.headers import CONVERSATION
from botrelay.shared.metrics import IngressMetrics
from botrelay.shared.settings import Settings
from tests.helpers import text_callback, wait_for

APP = "2248348660ad9bd4"  # the fixtures' app, the one these ingresses serve


class FakeBroker:
    """Confirms every publish while ``ready``; ``fail`` names message ids refused once."""

    def __init__(self, ready: bool = True) -> None:
        self.ready = ready
        self.published: list[tuple[str, str, dict[str, Any], bytes]] = []
        self.fail: set[str] = set()
        self.gate = asyncio.Event()  # cleared: confirms wait
        self.gate.set()

    async def start(self, *, wait: bool = False) -> None:
        return None

    async def close(self) -> None:
        return None

    async def publish(self, message: aio_pika.Message, routing_key: str, *,
                      timeout: float | None = None) -> None:
        raise NotImplementedError

    async def publish_delayed(self, message: aio_pika.Message, delay: float,
                              routing_key: str) -> None:
        raise NotImplementedError

    async def publish_callback(self, body: bytes, routing_key: str, *, message_id: str,
                               headers: dict[str, Any], timeout: float | None = None) -> None:
        await asyncio.sleep(0)
        if not self.ready:
            raise BrokerUnavailable("down")
        await self.gate.wait()
        if message_id in self.fail:
            self.fail.discard(message_id)
            raise ConnectionError("lost on the way")
        self.published.append((message_id, routing_key, headers, body))


async def filled(directory: Path, n: int, max_bytes: int = 10_000_000,
                 metrics: IngressMetrics | None = None) -> Spool:
    spool = Spool(directory, max_bytes, metrics or IngressMetrics())
    await spool.open()
    for i in range(n):
        await spool.append(b'{"n": %d}' % i, f"m{i}", {CONVERSATION: f"c{i % 3}"})
    return spool


def metric(metrics: IngressMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


async def test_restart_keeps_every_record_in_order(tmp_path: Path) -> None:
    spool = await filled(tmp_path, 5)
    size = spool.bytes
    await spool.close()

    metrics = IngressMetrics()
    again = Spool(tmp_path, 10_000_000, metrics)
    await again.open()
    try:
        assert (again.depth, again.bytes) == (5, size)
        assert metric(metrics, "botrelay_spool_depth") == 5
        assert metric(metrics, "botrelay_spool_oldest_age_seconds") >= 0
        records = await again.oldest(10)
        assert [r.message_id for r in records] == [f"m{i}" for i in range(5)]
        assert records[2].body == b'{"n": 2}' and records[2].headers == {CONVERSATION: "c2"}
        await again.delete(records[:2])
        assert again.depth == 3
    finally:
        await again.close()
    third = Spool(tmp_path, 10_000_000, IngressMetrics())
    await third.open()
    try:
        assert [r.message_id for r in await third.oldest(10)] == ["m2", "m3", "m4"]
    finally:
        await third.close()


async def test_one_process_per_directory(tmp_path: Path) -> None:
    spool = await filled(tmp_path, 0)
    try:
        with pytest.raises(SpoolLocked, match="another process uses the spool"):
            await Spool(tmp_path, 1000, IngressMetrics()).open()
    finally:
        await spool.close()


async def test_a_directory_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SpoolUnavailable, match="cannot open the spool in"):
        await Spool(tmp_path / "file" / "spool", 1000, IngressMetrics()).open()


async def test_torn_last_record_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    """A crash in the middle of the last commit leaves a torn frame at the end of the log: the
    spool opens, the records committed before it are all there."""
    live = tmp_path / "live"
    spool = await filled(live, 6)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    # A copy of the files as they are on disk while the process runs (no checkpoint yet): what
    # a SIGKILL or a power cut leaves behind.
    for name in (DB_NAME, f"{DB_NAME}-wal"):
        shutil.copyfile(live / name, crashed / name)
    await spool.close()
    wal = crashed / f"{DB_NAME}-wal"
    assert wal.stat().st_size > 0, "the test needs the records in the log"
    os.truncate(wal, wal.stat().st_size - 100)  # the last frame cut short

    torn = Spool(crashed, 10_000_000, IngressMetrics())
    await torn.open()
    try:
        assert [r.message_id for r in await torn.oldest(10)] == [f"m{i}" for i in range(5)]
        assert torn.depth == 5
        await torn.append(b"{}", "after", {CONVERSATION: "c"})  # and it takes new ones
        assert torn.depth == 6
    finally:
        await torn.close()


async def test_damaged_record_is_skipped_logged_and_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = await filled(tmp_path, 4)
    await spool.close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # a bit flipped after the commit
        db.execute("UPDATE callbacks SET body = ? WHERE message_id = 'm1'", (b'{"n": 9}',))
        db.execute("UPDATE callbacks SET headers = ?, crc = 0 WHERE message_id = 'm2'",
                   (b"[not json",))
    db.close()

    metrics = IngressMetrics()
    again = Spool(tmp_path, 10_000_000, metrics)
    await again.open()
    try:
        with caplog.at_level(logging.ERROR, "botrelay.spool"):
            records = await again.oldest(10)
        assert [r.message_id for r in records] == ["m0", "m3"]
        assert metric(metrics, "botrelay_spool_corrupt_total") == 2
        assert again.depth == 2
        assert sum("is damaged" in r.getMessage() for r in caplog.records) == 2
        assert [r.message_id for r in await again.oldest(10)] == ["m0", "m3"]
    finally:
        await again.close()


async def test_a_file_that_is_no_database_is_moved_aside(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / DB_NAME).write_bytes(b"\x00garbage" * 1000)
    metrics = IngressMetrics()
    with caplog.at_level(logging.ERROR, "botrelay.spool"):
        spool = Spool(tmp_path, 10_000_000, metrics)
        await spool.open()
    try:
        assert spool.depth == 0
        assert metric(metrics, "botrelay_spool_corrupt_total") == 1
        assert [n for n in os.listdir(tmp_path) if n.startswith(f"{DB_NAME}.corrupt-")]
        assert any("not a readable database" in r.getMessage() for r in caplog.records)
        await spool.append(b"{}", "m", {CONVERSATION: "c"})
        assert [r.message_id for r in await spool.oldest(1)] == ["m"]
    finally:
        await spool.close()


async def test_full_spool_refuses_and_frees_room_when_forwarded(tmp_path: Path) -> None:
    spool = await filled(tmp_path, 1, max_bytes=200)
    try:
        with pytest.raises(SpoolFull):
            await spool.append(b"x" * 100, "big", {CONVERSATION: "c"})
        assert spool.depth == 1
        await spool.delete(await spool.oldest(1))
        assert (spool.depth, spool.bytes) == (0, 0)
        await spool.append(b"x" * 100, "big", {CONVERSATION: "c"})
    finally:
        await spool.close()


async def test_concurrent_appends_share_commits_and_keep_their_order(tmp_path: Path) -> None:
    spool = await filled(tmp_path, 0)
    try:
        ids = await asyncio.gather(*(spool.append(b"{}", f"m{i}", {CONVERSATION: "c"})
                                     for i in range(200)))
        assert ids == sorted(ids) and len(set(ids)) == 200
        assert [r.message_id for r in await spool.oldest(500)] == [f"m{i}" for i in range(200)]
    finally:
        await spool.close()


async def test_forwarder_sends_oldest_first_and_deletes_only_confirmed(tmp_path: Path) -> None:
    metrics = IngressMetrics()
    spool = await filled(tmp_path, 150, metrics=metrics)
    broker = FakeBroker(ready=False)
    broker.fail = {"m70"}  # refused once: stays in the spool and goes again
    settings = Settings(prefix="tspool", cometchat_app_id=APP, spool_dir=str(tmp_path))
    task = asyncio.create_task(Forwarder(spool, broker, settings, metrics).run())
    try:
        await asyncio.sleep(0.5)
        assert broker.published == [] and spool.depth == 150  # nothing goes while it is down
        broker.ready = True
        assert await wait_for(lambda: spool.empty, 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await spool.close()
    sent = [m for m, *_ in broker.published]
    assert sorted(sent, key=lambda m: int(m[1:])) == [f"m{i}" for i in range(150)]
    # In order, except that the refused one went again after the rest of its window.
    assert [m for m in sent if m != "m70"] == [f"m{i}" for i in range(150) if i != 70]
    assert sent.index("m70") > sent.index("m69")
    assert metric(metrics, "botrelay_spool_forwarded_total") == 150
    assert metric(metrics, "botrelay_spool_depth") == 0
    assert metric(metrics, "botrelay_spool_oldest_age_seconds") == 0
    (_, key, headers, _), = [p for p in broker.published if p[0] == "m4"]
    assert headers == {CONVERSATION: "c1"} and key.startswith("inbound")


# --- through the app -------------------------------------------------------------------------

@pytest.fixture
async def client_for() -> AsyncIterator[Any]:
    clients: list[TestClient[Any, Any]] = []

    async def make(settings: Settings, broker: FakeBroker) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(make_app(settings, broker=broker)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def callback_body(i: int) -> bytes:
    return orjson.dumps(text_callback(f"spool-{i}", f"hello {i}"))


async def post(client: TestClient[Any, Any], i: int) -> tuple[int, dict[str, Any]]:
    async with client.post("/callback", data=callback_body(i),
                           headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


async def test_app_spools_while_down_answers_503_when_full_and_forwards_on_restart(
        tmp_path: Path, client_for: Any) -> None:
    settings = Settings(prefix="tspool", cometchat_app_id=APP, spool_dir=str(tmp_path),
                        spool_max_bytes=5000)
    down = FakeBroker(ready=False)
    client = await client_for(settings, down)
    async with client.get("/readyz") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "spooling"})
    answers = [await post(client, i) for i in range(6)]
    spooled = [a for a in answers if a[0] == 200]
    assert spooled and all(doc["status"] == "spooled" for _, doc in spooled)
    # A few callbacks of about 800 bytes fill 5000 bytes; then 503, never a lost 200.
    assert answers[-1][0] == 503 and answers[-1][1]["error"] == "service unavailable"
    assert [a[0] for a in answers] == sorted([a[0] for a in answers])
    async with client.get("/readyz") as resp:
        assert resp.status == 503
    metrics = client.server.app[STATE].metrics
    assert metrics.registry.get_sample_value(
        "botrelay_callbacks_total", {"outcome": "unavailable", "reason": "spool_full"}) >= 1
    await client.close()

    # The same directory, a broker that is there: everything spooled goes, in order.
    up = FakeBroker(ready=True)
    await client_for(settings, up)
    assert await wait_for(lambda: len(up.published) == len(spooled), 10)
    assert [m for m, *_ in up.published] == [doc["id"] for _, doc in spooled]


async def test_callbacks_after_the_outage_queue_behind_the_spooled_ones(
        tmp_path: Path, client_for: Any) -> None:
    settings = Settings(prefix="tspool", cometchat_app_id=APP, spool_dir=str(tmp_path))
    broker = FakeBroker(ready=False)
    client = await client_for(settings, broker)
    first = [await post(client, i) for i in range(3)]
    assert {doc["status"] for _, doc in first} == {"spooled"}
    broker.gate.clear()  # the broker is back, the forwarder's first confirms are on their way
    broker.ready = True
    status, doc = await post(client, 3)
    assert (status, doc["status"]) == (200, "spooled")  # behind the three, not before them
    broker.gate.set()
    spool = client.server.app[STATE].spool
    assert spool is not None
    assert await wait_for(lambda: spool.empty, 10)  # confirmed, then deleted
    assert [m for m, *_ in broker.published] == [d["id"] for _, d in first] + [doc["id"]]
    status, doc = await post(client, 4)
    assert (status, doc["status"]) == (200, "queued")  # drained: straight to the broker


async def test_stopping_ingress_forwards_its_spool_first(tmp_path: Path, client_for: Any) -> None:
    """A pod's emptyDir goes with the pod: on a graceful stop with the broker reachable, the
    ingress hands its spool over before it exits."""
    await (await filled(tmp_path, 20)).close()
    settings = Settings(prefix="tspool", cometchat_app_id=APP, spool_dir=str(tmp_path))
    broker = FakeBroker(ready=True)
    broker.gate.clear()  # confirms arrive only once the stop has begun
    client = await client_for(settings, broker)
    asyncio.get_running_loop().call_later(0.3, broker.gate.set)
    await client.close()
    assert [m for m, *_ in broker.published] == [f"m{i}" for i in range(20)]
    left = Spool(tmp_path, 10_000_000, IngressMetrics())
    await left.open()
    try:
        assert left.depth == 0
    finally:
        await left.close()


async def test_a_failed_write_answers_503_and_counts_nothing(
        tmp_path: Path, client_for: Any, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(prefix="tspool", cometchat_app_id=APP, spool_dir=str(tmp_path))
    client = await client_for(settings, FakeBroker(ready=False))
    spool = client.server.app[STATE].spool
    assert spool is not None

    def disk_error(rows: Any) -> list[int]:
        raise sqlite3.OperationalError("disk I/O error")

    spool._insert_sync = disk_error  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, "botrelay.spool"):
        status, doc = await post(client, 1)
    assert status == 503 and doc["error"] == "service unavailable"
    assert (spool.depth, spool.bytes, spool.empty) == (0, 0, True)
    assert any("could not write 1 callbacks" in r.getMessage() for r in caplog.records)
    metrics = client.server.app[STATE].metrics
    assert metrics.registry.get_sample_value(
        "botrelay_callbacks_total", {"outcome": "unavailable", "reason": "spool_error"}) == 1
