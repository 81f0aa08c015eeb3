"""Conversation pens (the dedup store keeps order across retries) and partition assignment."""

from __future__ import annotations

from collections import Counter

import pytest

from botrelay.worker.dedup import MemoryDedup, Status
from botrelay.worker.partitions import PartitionManager, SoloLeases, assign


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


@pytest.mark.parametrize(("partitions", "workers"), [(16, 3), (16, 4), (64, 5), (4, 3)])
def test_assignment_is_balanced_and_moves_little(partitions: int, workers: int) -> None:
    members = [f"host-{i}-{i * 7919}" for i in range(workers)]
    before = assign(partitions, members)
    assert sorted(before) == list(range(partitions))
    load = Counter(before.values())
    cap = -(-partitions // workers)
    assert max(load.values()) <= cap
    assert sum(load.values()) == partitions
    # Everyone computes the same answer whatever order it sees the members in.
    assert assign(partitions, list(reversed(members))) == before
    after = assign(partitions, [*members, "host-new"])
    moved = [n for n in range(partitions) if before[n] != after[n]]
    assert Counter(after.values())["host-new"] >= 1
    assert len(moved) <= partitions // 2


@pytest.mark.parametrize("partitions", [1, 16])
async def test_solo_worker_takes_every_partition(partitions: int) -> None:
    from botrelay.shared.settings import Settings

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
