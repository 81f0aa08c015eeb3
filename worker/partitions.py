"""Spreading the inbound partitions over the live workers (``BOTRELAY_ORDERING=conversation``).

RabbitMQ's single active consumer keeps one consumer per partition but does not balance: the
first worker to subscribe would win every partition. So workers agree among themselves:

- **Membership**: each worker heartbeats into a Redis sorted set (score = expiry) under its
  liveness name (``worker.liveness``); a member whose liveness key is gone drops out at once, a
  silent one after ``MEMBER_TTL``.
- **Assignment**: rendezvous hashing over the live members, with a cap of ceil(partitions /
  members) each: every worker computes the same owners, the load is balanced even with few
  partitions (plain rendezvous can leave a worker idle), and a join or leave moves few
  partitions.
- **Hand-over**: a worker subscribes to a partition only while holding its lease (a Redis key
  with a TTL, renewed by the heartbeat). A worker giving a partition up cancels its consumer,
  waits until every delivery it took from that partition is settled, and only then deletes the
  lease; so the new owner never runs a conversation's next message while the old owner is still
  on the previous one. A lease names its holder's liveness: a dead or paused holder's lease is
  free as soon as its liveness key is gone, and its in-flight work never sends after that
  (fenced by the same key). The dedup claims put each in-flight message at the head of its
  conversation's pen, so a message the next owner receives early waits behind the one still in
  flight, wherever that one is.
- **Given back in order**: a message handed back to a partition queue (by a cancelled or lost
  consumer) returns to its head, thanks to the queue's delivery limit (``shared.topology``).
- **Safety net**: the partition queues keep ``x-single-active-consumer``, so even a worker that
  lost its lease without noticing (a long pause) cannot receive messages alongside the new owner.

Without Redis (one worker, memory dedup) the worker takes every partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

import redis.asyncio as aioredis

from botrelay.shared import topology
from botrelay.shared.settings import Settings
from botrelay.shared.transport import Delivery
from botrelay.worker.liveness import Live

log = logging.getLogger("botrelay.partitions")

HEARTBEAT = 0.5  # seconds between heartbeats and rebalances: a take-over waits at most this
MEMBER_TTL = 3.0  # a worker silent this long is gone, even if its liveness key lingers
LEASE_TTL = 5.0  # a backstop: a lease whose holder is not alive is free at once
# After its consumer is cancelled, the broker can still hold a message it had handed to that
# consumer but not sent yet (it never reaches the client). The consumer's channel gives it back
# asynchronously, and it goes back to the head of the queue only because the queue has a
# delivery limit (``shared.topology``; without one RabbitMQ 3.x appends it to the tail, behind
# its successors). The lease is kept this long after the cancel, so that the next owner, which
# subscribes only once it holds the lease, finds that message back in front of the rest.
RETURN_WINDOW = 2.0


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _score(member: str, partition: int) -> bytes:
    return hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()


def assign(partitions: int, members: list[str]) -> dict[int, str]:
    """Partition -> member. Pairs are taken by descending rendezvous score, skipping members
    that reached the cap; the same on every worker for the same member list."""
    cap = math.ceil(partitions / max(1, len(members)))
    pairs = sorted(((_score(m, p), p, m) for p in range(partitions) for m in members),
                   reverse=True)
    owners: dict[int, str] = {}
    load = dict.fromkeys(members, 0)
    for _, p, m in pairs:
        if p in owners or load[m] >= cap:
            continue
        owners[p] = m
        load[m] += 1
    return owners


# One hash tag, ``{prefix}``, for the members set, every lease and every liveness key
# (``worker.liveness.alive_prefix``): the renewal script takes all leases in one call, and the
# heartbeat and acquire scripts read liveness keys, which Redis Cluster allows only within one
# slot.
def members_key(prefix: str) -> str:
    return f"{prefix}:members:{{{prefix}}}"


def lease_key(prefix: str, partition: int) -> str:
    return f"{prefix}:partition:{{{prefix}}}:{partition}"


class Leases(Protocol):
    @property
    def me(self) -> str: ...

    async def heartbeat(self) -> list[str]: ...
    async def acquire(self, partition: int) -> bool: ...
    async def renew(self, partitions: set[int]) -> set[int]: ...
    async def release(self, partition: int) -> None: ...
    async def leave(self) -> None: ...


class SoloLeases:
    """One worker, no coordination: it owns everything."""

    def __init__(self, me: str) -> None:
        self.me = me

    async def heartbeat(self) -> list[str]:
        return [self.me]

    async def acquire(self, partition: int) -> bool:
        return True

    async def renew(self, partitions: set[int]) -> set[int]:
        return set(partitions)

    async def release(self, partition: int) -> None:
        return None

    async def leave(self) -> None:
        return None


# KEYS[1] members zset; ARGV[1] me, ARGV[2] now ms, ARGV[3] member ttl ms. Members are
# liveness keys: one whose key is gone is dropped (read by name: they share the set's slot).
_HEARTBEAT = """
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 10)
local live = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', m) == 1 then live[#live + 1] = m else redis.call('ZREM', KEYS[1], m) end
end
return live
"""
# KEYS[1] lease; ARGV[1] me (our liveness key), ARGV[2] ttl ms. Free, or held by a worker that
# is no longer alive: ours.
_ACQUIRE = """
if redis.call('EXISTS', ARGV[1]) == 0 then return 0 end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and redis.call('EXISTS', holder) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS = lease keys; ARGV[1] me, ARGV[2] ttl ms. Returns 1/0 per key: still ours.
_RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2]); out[i] = 1
  else out[i] = 0 end
end
return out
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLeases:
    """Leases named for this worker's current liveness session (``me`` changes with it)."""

    def __init__(self, client: aioredis.Redis, prefix: str, liveness: Live) -> None:
        self.client = client
        self.prefix = prefix
        self.liveness = liveness
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def me(self) -> str:
        return self.liveness.owner

    def _members_key(self) -> str:
        return members_key(self.prefix)

    def _lease_key(self, partition: int) -> str:
        return lease_key(self.prefix, partition)

    async def heartbeat(self) -> list[str]:
        members = await self._heartbeat(
            keys=[self._members_key()],
            args=[self.me, int(time.time() * 1000), int(MEMBER_TTL * 1000)])
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    async def acquire(self, partition: int) -> bool:
        return bool(await self._acquire(keys=[self._lease_key(partition)],
                                        args=[self.me, int(LEASE_TTL * 1000)]))

    async def renew(self, partitions: set[int]) -> set[int]:
        if not partitions:
            return set()
        ordered = sorted(partitions)
        flags = await self._renew(keys=[self._lease_key(p) for p in ordered],
                                  args=[self.me, int(LEASE_TTL * 1000)])
        return {p for p, ok in zip(ordered, flags, strict=True) if int(ok)}

    async def release(self, partition: int) -> None:
        await self._release(keys=[self._lease_key(partition)], args=[self.me])

    async def leave(self) -> None:
        await self.client.zrem(self._members_key(), self.me)


Subscribe = Callable[[str, int, Callable[[Delivery], Awaitable[None]]], Awaitable[str]]
Cancel = Callable[[str, str], Awaitable[None]]


class PartitionManager:
    """Keeps this worker subscribed to exactly the partitions it owns."""

    def __init__(self, settings: Settings, leases: Leases, on_delivery: Callable[
                 [Delivery], Awaitable[None]], subscribe: Subscribe, cancel: Cancel) -> None:
        self.settings = settings
        self.leases = leases
        self.on_delivery = on_delivery
        self.subscribe = subscribe
        self.cancel = cancel
        self.active: dict[int, str] = {}  # partition -> consumer tag
        self.releasing: set[int] = set()
        self.in_flight: dict[int, int] = {}
        self._settled: dict[int, asyncio.Event] = {}
        self._members: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def owned(self) -> list[int]:
        return sorted(self.active)

    def _callback(self, partition: int) -> Callable[[Delivery], Awaitable[None]]:
        async def deliver(delivery: Delivery) -> None:
            self.in_flight[partition] = self.in_flight.get(partition, 0) + 1
            self._settled.setdefault(partition, asyncio.Event()).clear()
            try:
                await self.on_delivery(delivery)
            finally:
                self.in_flight[partition] -= 1
                if self.in_flight[partition] == 0:
                    self._settled[partition].set()

        return deliver

    def _prefetch(self) -> int:
        # Quorum queues take no channel-wide prefetch: split the worker's concurrency over the
        # share of partitions it should hold, so in-flight stays near BOTRELAY_CONCURRENCY.
        members = max(1, len(self._members))
        share = max(1, math.ceil(self.settings.partitions / members))
        return max(1, math.ceil(self.settings.concurrency / share))

    async def rebalance(self) -> None:
        self._members = members = await self.leases.heartbeat()
        me = self.leases.me
        wanted = {n for n, m in assign(self.settings.partitions, members).items() if m == me}
        # Partitions being handed over stay leased until their deliveries settle: a lease that
        # lapsed meanwhile would let the next owner start a conversation's next message while
        # this worker is still on the one before.
        still_ours = await self.leases.renew(set(self.active) | self.releasing)
        for n in list(self.active):
            if n not in wanted or n not in still_ours:
                self._start_release(n, lost=n not in still_ours)
        for n in sorted(wanted - set(self.active) - self.releasing):
            if await self.leases.acquire(n):
                queue = topology.partition_queue(self.settings.prefix, n)
                self.active[n] = await self.subscribe(queue, self._prefetch(), self._callback(n))
                log.info("took partition %d", n, extra={"worker": me})

    def _start_release(self, n: int, *, lost: bool, settle: float | None = None,
                       hold: bool = True) -> None:
        """``settle``: how long to wait for the partition's deliveries; by default as long as
        one may hold its dedup claim (``BOTRELAY_DEDUP_LEASE``), past which it could be
        answered elsewhere anyway."""
        tag = self.active.pop(n)
        self.releasing.add(n)
        wait = self.settings.dedup_lease if settle is None else settle
        task = asyncio.create_task(self._release(n, tag, lost=lost, settle=wait, hold=hold),
                                   name=f"release-{n}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, n: int, tag: str, *, lost: bool, settle: float,
                       hold: bool = True) -> None:
        """``hold``: keep the lease for ``RETURN_WINDOW`` after the cancel. A stopping worker
        does not: closing its connection moments later puts back at once whatever the broker
        still held for it."""
        try:
            await self.cancel(topology.partition_queue(self.settings.prefix, n), tag)
            cancelled = time.monotonic()
            deadline = cancelled + settle
            # Deliveries that arrived before the cancel was confirmed start as tasks of their
            # own: let them start (and count themselves) before looking at what is in flight.
            for _ in range(3):
                await asyncio.sleep(0)
            if self.in_flight.get(n):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled[n].wait(),
                                           max(0.0, deadline - time.monotonic()))
            if not lost:
                until = min(cancelled + (RETURN_WINDOW if hold else 0.0), deadline)
                await asyncio.sleep(max(0.0, until - time.monotonic()))
                await self.leases.release(n)
            log.info("handed over partition %d", n)
        finally:
            self.releasing.discard(n)

    async def run(self) -> None:
        while True:
            try:
                await self.rebalance()
            except Exception as exc:  # Redis or broker hiccup: keep what we have, try again
                log.warning("partition rebalance failed: %s", exc)
            await asyncio.sleep(HEARTBEAT)

    async def _keep_leased(self) -> None:
        """While stopping (no more rebalances): keep renewing what is being handed over."""
        while True:
            with contextlib.suppress(Exception):
                await self.leases.renew(set(self.releasing))
            await asyncio.sleep(HEARTBEAT)

    async def stop(self, settle: float | None = None) -> None:
        """Hand every partition back (after its deliveries settle, waiting at most ``settle``
        seconds: the worker's share of its shutdown grace) and leave the group."""
        wait = self.settings.shutdown_grace if settle is None else settle
        for n in list(self.active):
            self._start_release(n, lost=False, settle=wait, hold=False)
        if self._tasks:
            keeper = asyncio.create_task(self._keep_leased(), name="keep-leased")
            try:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
        with contextlib.suppress(Exception):
            await self.leases.leave()
