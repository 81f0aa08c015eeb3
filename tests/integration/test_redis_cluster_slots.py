"""Every Redis script botrelay runs stays within one Redis Cluster slot.

A Redis of the test's own runs in cluster mode, alone, with all 16384 slots: every command is
served locally (no redirects, so the workers' single-node client works), and Redis checks slots
anyway. A script whose declared keys span slots is refused (``CROSSSLOT``); and every script is
run here with a ``#!lua`` shebang, which makes Redis 7 refuse one that touches any key outside
its declared slot too. Two workers then run the real pipeline on it, ordered by conversation,
with a partition hand-over, the outbound rate limiter, a dead holder's claim taken over, and
retries holding a conversation's pen.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

import botrelay.worker
from botrelay.shared.errors import Retry
from botrelay.shared.fake_cometchat import RunningFake
from botrelay.worker import Bot, Message
from botrelay.worker.dedup import RedisDedup, Status
from botrelay.worker.liveness import Liveness
from botrelay.worker.service import Worker
from tests.cluster_harness import redis_server
from tests.helpers import muid_counts, order_by_conversation, post_all, text_callback, wait_for
from tests.integration.tls_servers import installed
from tests.rabbit_node import free_dist_port

pytestmark = pytest.mark.integration

CONVERSATIONS, PER_CONVERSATION = 12, 12
ROUND_GAP = 0.25  # seconds between rounds: the stream outlasts the join's hand-over


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    installed("redis-server", "redis-server")
    folder = Path(tempfile.mkdtemp(prefix="botrelay-redis-cluster-"))
    port = free_dist_port()  # its cluster bus listens on port + 10000: free too
    server = redis_server(port, folder, "--cluster-enabled", "yes",
                          "--cluster-config-file", str(folder / "nodes.conf"))
    try:
        server.start()
        with redis.Redis(port=port) as client:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            stop_at = time.monotonic() + 15
            while client.cluster("INFO").get("cluster_state") != "ok":
                if time.monotonic() > stop_at:
                    raise TimeoutError("the one-node cluster did not become ready")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.sigkill()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def slot_checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every Lua script of the worker's modules, run with a ``#!lua`` shebang: Redis 7 then
    refuses any key access outside the slot of the keys the script declares."""
    patched = []
    for module_info in pkgutil.walk_packages(botrelay.worker.__path__, "botrelay.worker."):
        module = importlib.import_module(module_info.name)
        for name, value in list(vars(module).items()):
            if isinstance(value, str) and "redis.call(" in value:
                monkeypatch.setattr(module, name, "#!lua\n" + value)
                patched.append(f"{module_info.name}.{name}")
    return patched


async def _post_in_rounds(url: str) -> list[int]:
    """Message m of every conversation, then m + 1: each conversation's order is the posting
    order, whatever runs concurrently."""
    statuses: list[int] = []
    for m in range(PER_CONVERSATION):
        statuses += await post_all(url, [
            text_callback(f"{c:03d}{m:03d}", f"c{c} m{m}", sender=f"user-{c}")
            for c in range(CONVERSATIONS)])
        await asyncio.sleep(ROUND_GAP)
    return statuses


async def test_the_pipeline_runs_on_redis_cluster_slots(
        cluster_url, slot_checked, make_settings, start_ingress, fake_api: RunningFake
) -> None:
    assert {"botrelay.worker.dedup._CLAIM", "botrelay.worker.partitions._HEARTBEAT",
            "botrelay.worker.rate_limit._ACQUIRE", "botrelay.worker.pens._HOLD"} <= set(
        slot_checked)
    settings = make_settings(redis_url=cluster_url, partitions=8, rate_limit_app=60_000,
                             retry_delays=(0.2, 0.5))
    bot = Bot()
    failed_once: set[str] = set()

    @bot.on_text()
    async def echo(msg: Message) -> str:
        if msg.text in ("c1 m2", "c5 m0") and msg.text not in failed_once:
            failed_once.add(msg.text)
            raise Retry(delay=0.2)  # held: the conversation waits in its pen behind it
        return f"echo: {msg.text}"

    ingress = await start_ingress(settings)
    async with Worker(settings, bot):
        posting = asyncio.create_task(_post_in_rounds(f"{ingress.url}/callback"))
        await wait_for(lambda: len(fake_api.fake.replies) >= 20, timeout=30)
        async with Worker(settings, bot) as second:  # joins: partitions are handed over
            assert await wait_for(lambda: bool(second.partitions and second.partitions.owned),
                                  timeout=15)
            assert not posting.done()  # the hand-over happened under traffic
            statuses = await posting
            total = CONVERSATIONS * PER_CONVERSATION
            assert statuses.count(200) == total
            assert await wait_for(lambda: len(fake_api.fake.replies) >= total, timeout=60)
            await asyncio.sleep(0.5)
    assert set(muid_counts(fake_api.fake).values()) == {1}  # exactly one reply each
    assert order_by_conversation(fake_api.fake) == {
        c: list(range(PER_CONVERSATION)) for c in range(CONVERSATIONS)}
    assert failed_once == {"c1 m2", "c5 m0"}


async def test_a_dead_holders_claim_is_taken_over_on_cluster_slots(
        cluster_url, slot_checked, prefix) -> None:
    client = aioredis.Redis.from_url(cluster_url)
    try:
        stores = []
        lives = []
        for name in ("a", "b"):
            live = Liveness(client, prefix, name)
            await live.start()
            lives.append(live)
            stores.append(RedisDedup(client, prefix, lease=30.0, ttl=60.0, liveness=live))
        a, b = stores
        held = await a.claim("k1", "conv")
        assert held.status is Status.CLAIMED
        busy = await b.claim("k1", "conv")
        assert busy.status is Status.BUSY and 0 < busy.delay <= 3.0
        await client.delete(lives[0].owner)  # a dies
        taken = await b.claim("k1", "conv")
        assert taken.status is Status.CLAIMED and taken.unsure
        assert (await a.claim("k2", "conv")).status is Status.PARKED  # k1 still heads the pen
        await b.progress("k1", 1, "conv")
        await b.done("k1", taken.token, "conv")
        assert (await b.claim("k1", "conv")).status is Status.DONE
        nxt = await b.claim("k2", "conv")
        assert nxt.status is Status.CLAIMED
        await b.hold("k2", "conv", 0.2)
        await b.unhold("k2", "conv")
        await b.release("k2", nxt.token, pen="conv")
        for live in lives:
            await live.stop()
    finally:
        await client.flushall()
        await client.aclose()
