"""Conversation pens (the dedup store keeps order across retries) and partition assignment."""

from __future__ import annotations

from collections import Counter

import pytest

from worker.dedup import MemoryDedup, Status
from worker.partitions import PartitionManager, SoloLeases, owner


async def test_pen_parks_later_messages_until_the_head_settles() -> None:
    store = MemoryDedup(lease=30, ttl=60)
    first = await store.claim("k1", "conv")
    assert first.status is Status.CLAIMED
    # k1 fails and waits 5 s: later messages of the conversation wait behind it.
    await store.release("k1", first.token)
    await store.hold("k1", "conv", 5.0)
    parked = await store.claim("k2", "conv")
    assert (parked.status, parked.delay) == (Status.PARKED, 5.0)
    assert (await store.claim("k3", "conv")).status is Status.PARKED
    # Another conversation is not held up.
    assert (await store.claim("x1", "other")).status is Status.CLAIMED
    # k2 comes back before k1: still parked (k1 is the head).
    assert (await store.claim("k2", "conv")).status is Status.PARKED
    # k1 comes back, succeeds, and leaves the pen; k2 is the head now, k3 still waits.
    again = await store.claim("k1", "conv")
    assert again.status is Status.CLAIMED
    await store.done("k1", again.token, "conv")
    assert (await store.claim("k3", "conv")).status is Status.PARKED
    k2 = await store.claim("k2", "conv")
    assert k2.status is Status.CLAIMED
    await store.done("k2", k2.token, "conv")
    k3 = await store.claim("k3", "conv")
    assert k3.status is Status.CLAIMED
    await store.done("k3", k3.token, "conv")
    # The pen is gone: new messages flow straight through.
    assert (await store.claim("k4", "conv")).status is Status.CLAIMED


async def test_dead_lettered_head_releases_the_pen() -> None:
    store = MemoryDedup(lease=30, ttl=60)
    await store.hold("k1", "conv", 1.0)
    assert (await store.claim("k2", "conv")).status is Status.PARKED
    await store.unhold("k1", "conv")
    assert (await store.claim("k2", "conv")).status is Status.CLAIMED


def test_rendezvous_spreads_and_moves_little() -> None:
    members = ["w-a", "w-b", "w-c"]
    before = {n: owner(n, members) for n in range(64)}
    share = Counter(before.values())
    assert set(share) == set(members) and min(share.values()) >= 10
    after = {n: owner(n, [*members, "w-d"]) for n in range(64)}
    moved = [n for n in range(64) if before[n] != after[n]]
    assert all(after[n] == "w-d" for n in moved)  # only the new worker's share moves
    assert 8 <= len(moved) <= 24


@pytest.mark.parametrize("partitions", [1, 16])
async def test_solo_worker_takes_every_partition(partitions: int) -> None:
    from shared.settings import Settings

    subscribed: list[str] = []

    async def subscribe(name: str, prefetch: int, callback: object) -> str:
        subscribed.append(name)
        return f"tag-{name}"

    async def cancel(name: str, tag: str) -> None:
        subscribed.remove(name)

    async def deliver(delivery: object) -> None:
        return None

    manager = PartitionManager(Settings(prefix="p", partitions=partitions), SoloLeases("me"),
                               deliver, subscribe, cancel)
    await manager.rebalance()
    assert manager.owned == list(range(partitions))
    assert len(subscribed) == partitions
    await manager.stop()
    assert subscribed == []
