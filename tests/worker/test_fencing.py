"""Claims, pens and partition leases fenced to a live worker (``worker.liveness``), on Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from botrelay.worker.dedup import NotAlive, RedisDedup, Status
from botrelay.worker.liveness import Liveness
from botrelay.worker.partitions import RedisLeases


@pytest.fixture
async def client(redis_url: str, redis_client: aioredis.Redis) -> aioredis.Redis:
    return redis_client  # its fixture deletes every key under the test's prefix


async def _worker(client: aioredis.Redis, prefix: str, name: str, ttl: float = 3.0
                  ) -> tuple[Liveness, RedisDedup]:
    live = Liveness(client, prefix, name, ttl=ttl, margin=min(1.0, ttl / 5))
    await live.start()
    # Lease 30 s: a dead owner's claim must not wait it out.
    store = RedisDedup(client, prefix, lease=30.0, ttl=60.0, liveness=live)
    return live, store


async def test_a_dead_owners_claim_is_free_at_once_and_marked_unsure(client, prefix) -> None:
    a_live, a = await _worker(client, prefix, "a")
    _, b = await _worker(client, prefix, "b")
    mine = await a.claim("k1")
    assert mine.status is Status.CLAIMED and not mine.unsure
    busy = await b.claim("k1")
    assert busy.status is Status.BUSY and 0 < busy.delay <= 3.0  # until a's liveness lapses
    await client.delete(a_live.owner)  # a dies (its key would expire within 3 s)
    taken = await b.claim("k1")
    assert taken.status is Status.CLAIMED and taken.unsure  # a reply may have gone out
    await b.done("k1", taken.token)
    assert (await b.claim("k1")).status is Status.DONE


async def test_a_release_after_a_send_of_unknown_outcome_leaves_the_next_claim_unsure(
        client, prefix) -> None:
    _, a = await _worker(client, prefix, "a")
    first = await a.claim("k2")
    await a.release("k2", first.token, unsure=True)
    again = await a.claim("k2")
    assert again.status is Status.CLAIMED and again.unsure
    await a.done("k2", again.token)
    await a.release("k3", "nothing")
    assert not (await a.claim("k3")).unsure


async def test_a_worker_whose_liveness_lapsed_neither_claims_nor_may_send(client, prefix
                                                                          ) -> None:
    live, a = await _worker(client, prefix, "a", ttl=1.5)
    claim = await a.claim("k4")
    assert live.valid(claim.owner)
    await asyncio.sleep(1.6)  # no heartbeat: paused past its liveness
    assert not live.valid(claim.owner)
    with pytest.raises(NotAlive):
        await a.claim("k5")
    # The next heartbeat starts a new session: the old claim stays invalid for sending.
    assert await live.beat()
    assert live.owner != claim.owner and not live.valid(claim.owner)
    assert live.sessions_lost == 1
    assert (await a.claim("k5")).status is Status.CLAIMED


async def test_with_a_wait_a_claim_waits_for_a_new_session_under_a_bound(client, prefix
                                                                           ) -> None:
    # Sentinel mode: a failover outlasts the liveness TTL; a claim waits for the next session
    # instead of being refused (and its message delayed outside its conversation's pen).
    live, _ = await _worker(client, prefix, "a", ttl=1.0)
    store = RedisDedup(client, prefix, lease=30.0, ttl=60.0, liveness=live, claim_wait=2.0)
    old = live.owner
    await asyncio.sleep(1.1)  # lapsed

    async def beat_later() -> None:
        await asyncio.sleep(0.3)
        await live.beat()

    beating = asyncio.create_task(beat_later())
    started = asyncio.get_running_loop().time()
    claim = await store.claim("w1", "conv")
    waited = asyncio.get_running_loop().time() - started
    await beating
    assert claim.status is Status.CLAIMED and claim.owner == live.owner != old
    assert 0.25 < waited < 1.5
    # Nobody renews it: the wait is bounded, then refused as before.
    bounded = RedisDedup(client, prefix, lease=30.0, ttl=60.0, liveness=live, claim_wait=0.3)
    await asyncio.sleep(1.1)
    started = asyncio.get_running_loop().time()
    with pytest.raises(NotAlive):
        await bounded.claim("w2")
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_a_message_in_flight_parks_the_next_one_of_its_conversation_anywhere(
        client, prefix) -> None:
    _, a = await _worker(client, prefix, "a")
    _, b = await _worker(client, prefix, "b")
    m1 = await a.claim("m1", "conv")
    assert m1.status is Status.CLAIMED
    assert (await b.claim("m2", "conv")).status is Status.PARKED  # m1 is still in flight
    await a.release("m1", m1.token)  # failed: m1 stays the head until it is done
    assert (await b.claim("m2", "conv")).status is Status.PARKED
    again = await b.claim("m1", "conv")
    await b.done("m1", again.token, "conv")
    assert (await b.claim("m2", "conv")).status is Status.CLAIMED


async def test_a_dead_holders_partition_lease_is_free_at_once(client, prefix) -> None:
    a_live, _ = await _worker(client, prefix, "a")
    b_live, _ = await _worker(client, prefix, "b")
    a, b = RedisLeases(client, prefix, a_live), RedisLeases(client, prefix, b_live)
    assert await a.acquire(3)
    assert not await b.acquire(3)
    assert set(await a.heartbeat()) == {a.me}
    assert set(await b.heartbeat()) == {a.me, b.me}
    await client.delete(a_live.owner)
    assert await b.heartbeat() == [b.me]  # gone from the members at once
    assert await b.acquire(3)
    assert await a.renew({3}) == set()
