"""A worker's liveness: one Redis key with a short TTL, renewed by a heartbeat.

Claims (``worker.dedup``) and partition leases (``worker.partitions``) name their owner by this
key. Whoever finds the key gone treats what that owner held as free at once, whatever its lease:
a crashed worker's work is taken over within ``TTL`` instead of after ``BOTRELAY_DEDUP_LEASE``.

The other half is fencing. A worker that lost its liveness (paused, cut off from Redis) must
stop sending before another can take over. Its local deadline is the time the last successful
heartbeat was *sent* plus ``TTL``: Redis counts the key's TTL from when it *received* that
heartbeat, so the local deadline always comes first. ``Liveness.valid`` is true only before
that deadline (less ``MARGIN`` for the send about to start) and only for the session it was
given: once the deadline passes, the next heartbeat starts a new session under a new owner
name, so work claimed under the old one never sends, even after the worker resumes.

Without Redis (one worker) ``LocalLiveness`` is always alive: there is nobody to take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from typing import Protocol

import redis.asyncio as aioredis
import redis.exceptions

from botrelay.shared.logs import describe

log = logging.getLogger("botrelay.liveness")

TTL = 3.0  # a worker silent this long is dead to the others
HEARTBEAT = 0.5  # between heartbeats: several chances to renew within one TTL
# A reply starts only while at least this much liveness is left: a send that begins must, as
# a rule, end before another worker may take the claim over.
MARGIN = 1.0

_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


def alive_prefix(prefix: str) -> str:
    """What every liveness key starts with: ``P:alive:{P}:``. The hash tag puts the liveness
    keys in the slot of the partition leases and the members set (``worker.partitions``), whose
    scripts read them, so those scripts stay within one slot on Redis Cluster."""
    return f"{prefix}:alive:{{{prefix}}}:"


TAG_DIGITS = 4  # hex digits of the tag a restarted session adds to its name


def session_key(prefix: str, worker: str, session: int, tag: str = "") -> str:
    """A session's liveness key: ``P:alive:{P}:<worker>.<session>``, and ``.<tag>`` after a
    restart, so that a session name is never used twice."""
    return f"{alive_prefix(prefix)}{worker}.{session}" + (f".{tag}" if tag else "")


# The shortest worker id that leaves a session number and, maybe, a tag: a tag can be all
# decimal digits (1 in 6.5), which a greedy match would take for the session number.
_SESSION = re.compile(rf"^(?P<worker>.+?)\.\d+(?:\.[0-9a-f]{{{TAG_DIGITS}}})?$")


def worker_of(prefix: str, name: str) -> str:
    """The worker id in a session's liveness key (``session_key``), in a bare session name
    (``<worker>.<session>[.<tag>]``), or a worker id given alone."""
    alive = alive_prefix(prefix)
    if name.startswith(alive):
        name = name[len(alive):]
    found = _SESSION.match(name)
    return found["worker"] if found else name


class Live(Protocol):
    """What claims, leases and the consumer need to know about this worker's liveness."""

    @property
    def owner(self) -> str:
        """The key that names this worker's current session in claims and leases."""

    def valid(self, owner: str) -> bool:
        """May work claimed under ``owner`` still send?"""

    async def wait_valid(self, timeout: float) -> bool:
        """Until the current session is valid (a heartbeat renewed or restarted it), at most
        ``timeout`` seconds; whether it is."""


class LocalLiveness:
    """One worker, nothing shared: always alive, one session."""

    def __init__(self, owner: str = "local") -> None:
        self._owner = owner

    @property
    def owner(self) -> str:
        return self._owner

    def valid(self, owner: str) -> bool:
        return owner == self._owner

    async def wait_valid(self, timeout: float) -> bool:
        return True


class Liveness:
    """The heartbeat of one worker process: ``await start()``, then ``run()`` in a task."""

    def __init__(self, client: aioredis.Redis, prefix: str, worker: str, *,
                 ttl: float = TTL, interval: float = HEARTBEAT, margin: float = MARGIN) -> None:
        self.client = client
        self.prefix = prefix
        self.worker = worker
        self.ttl, self.interval, self.margin = ttl, interval, margin
        self._session = 0
        self._owner = session_key(prefix, worker, 0)
        self._until = 0.0  # monotonic deadline of the current session
        self._renewed = asyncio.Event()  # set by each successful heartbeat
        self.sessions_lost = 0
        self.last_error: str | None = None  # why the last heartbeat failed, for ``start``

    @property
    def owner(self) -> str:
        return self._owner

    def valid(self, owner: str) -> bool:
        return owner == self._owner and time.monotonic() < self._until - self.margin

    def remaining(self) -> float:
        return max(0.0, self._until - time.monotonic())

    async def wait_valid(self, timeout: float) -> bool:
        stop_at = time.monotonic() + timeout
        while not self.valid(self._owner):
            left = stop_at - time.monotonic()
            if left <= 0:
                return False
            self._renewed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renewed.wait(), left)
        return True

    async def start(self) -> None:
        """Register the first session; raises if Redis cannot be reached."""
        if not await self.beat():
            # The reason goes with it: the CLI prints this as its last line before exiting.
            reason = f": {self.last_error}" if self.last_error else ""
            raise ConnectionError(f"could not register this worker's liveness in Redis{reason}")

    async def beat(self) -> bool:
        """Renew the session, or start a new one if it lapsed; True once renewed."""
        sent = time.monotonic()
        lapsed = sent >= self._until
        self.last_error = None
        try:
            if not lapsed:
                # XX: renew only a key that is still there; if it expired (Redis counts from
                # its own receipt), the others may already have taken our work.
                lapsed = not await self.client.set(self._owner, "1", px=int(self.ttl * 1000),
                                                   xx=True)
            if lapsed:
                await self._new_session()
                return await self._register(sent)
        except _ERRORS as exc:
            # The cause, not only the class: a certificate Redis's client does not trust must
            # not read like Redis being down.
            self.last_error = describe(exc)
            log.warning("liveness heartbeat failed: %s", self.last_error)
            return False
        self._until = sent + self.ttl
        self._renewed.set()
        return True

    async def _new_session(self) -> None:
        if self._until:  # not the first: say so, the old session's work is given up
            self.sessions_lost += 1
            log.warning("liveness lapsed: work claimed before is given up, a new session starts",
                        extra={"worker": self.worker})
            with contextlib.suppress(*_ERRORS):
                await self.client.delete(self._owner)
        self._session += 1
        self._owner = session_key(self.prefix, self.worker, self._session,
                                  uuid.uuid4().hex[:TAG_DIGITS])

    async def _register(self, sent: float) -> bool:
        ok = await self.client.set(self._owner, "1", px=int(self.ttl * 1000), nx=True)
        if ok:
            self._until = sent + self.ttl
            self._renewed.set()
        return bool(ok)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.beat()

    async def stop(self) -> None:
        """Gone for good (after the work in flight settled): what it held is free now."""
        self._until = 0.0
        with contextlib.suppress(*_ERRORS):
            await self.client.delete(self._owner)
