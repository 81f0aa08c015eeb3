"""The dedup store's done record: one field of the conversation's hash in ordered mode, the state
key otherwise; either way a done callback is answered DONE until its TTL has passed."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from botrelay.worker.dedup import RedisDedup, Status, done_field
from botrelay.worker.liveness import Liveness

pytestmark = pytest.mark.integration

PEN = "app:user:someone_user_bot"


async def _live(client: aioredis.Redis, prefix: str) -> Liveness:
    # Long enough to need no heartbeat within a test: every claim names this key.
    live = Liveness(client, prefix, "w", ttl=60.0)
    await live.start()
    return live


async def test_done_in_the_conversation_hash(redis_client: aioredis.Redis, prefix: str) -> None:
    store = RedisDedup(redis_client, prefix, lease=5.0, ttl=60.0,
                       liveness=await _live(redis_client, prefix))
    claim = await store.claim("k1", PEN)
    assert claim.status is Status.CLAIMED
    await store.done("k1", claim.token, PEN)
    # The lease key is gone; the mark is a field of the conversation's hash.
    assert await redis_client.exists(store.keys("k1", PEN)[0]) == 0
    assert await redis_client.hexists(store.done_key(PEN), done_field("k1"))
    assert 0 < await redis_client.pttl(store.done_key(PEN)) <= 60_000
    assert (await store.claim("k1", PEN)).status is Status.DONE
    # Another message of the conversation is unaffected.
    assert (await store.claim("k2", PEN)).status is Status.CLAIMED


async def test_without_a_pen_the_state_key_says_done(redis_client: aioredis.Redis,
                                                     prefix: str) -> None:
    store = RedisDedup(redis_client, prefix, lease=5.0, ttl=60.0,
                       liveness=await _live(redis_client, prefix))
    claim = await store.claim("k1")
    await store.done("k1", claim.token)
    assert await redis_client.get(store.keys("k1")[0]) == b"done"
    assert (await store.claim("k1")).status is Status.DONE


async def test_expired_fields_are_forgotten_and_pruned(redis_client: aioredis.Redis,
                                                       prefix: str) -> None:
    live = await _live(redis_client, prefix)
    store = RedisDedup(redis_client, prefix, lease=5.0, ttl=1.0, liveness=live)
    claim = await store.claim("old", PEN)
    await store.done("old", claim.token, PEN)
    await asyncio.sleep(2.1)  # past the whole second the field expires at
    store_long = RedisDedup(redis_client, prefix, lease=5.0, ttl=60.0, liveness=live)
    # Expired: claimable again, as a key past its TTL would be.
    again = await store_long.claim("old", PEN)
    assert again.status is Status.CLAIMED
    # A claim in ordered mode heads its pen until done or dead-lettered: let it go.
    await store_long.release("old", again.token, pen=PEN)
    await store_long.unhold("old", PEN)
    for i in range(40):  # the hash reaches 32 fields: the expired one is pruned then
        c = await store_long.claim(f"new{i}", PEN)
        await store_long.done(f"new{i}", c.token, PEN)
    assert not await redis_client.hexists(store.done_key(PEN), done_field("old"))
    assert await redis_client.hlen(store.done_key(PEN)) == 40
