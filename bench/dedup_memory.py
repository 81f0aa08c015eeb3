"""``python -m bench.dedup_memory``: Redis memory per remembered callback in the dedup store.

Runs ``--cycles`` claim + done cycles (default 20,000) through ``RedisDedup``, the way a worker
does in the default ordering mode (a conversation's pen key beside each claim), and reads
``used_memory`` from ``INFO memory`` before and after. The difference divided by the cycles is
what one remembered callback costs for the whole ``BOTRELAY_DEDUP_TTL``: the sizing rule is
memory = callbacks per second x TTL x this figure.

By default it starts a private ``redis-server`` on a free 127.0.0.1 port (no persistence) so
nothing else shares the figure; ``--redis-url`` measures another server instead (keys are made
under a fresh prefix and deleted afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis

from botrelay.worker.dedup import RedisDedup
from botrelay.worker.liveness import Liveness

APP, BOT, TRIGGER = "2248348660ad9bd4", "demo_bot", "after_message"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1: its URL."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed; pass --redis-url")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="bench-dedup-")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), .1):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


async def used_memory(client: aioredis.Redis) -> int:
    info: dict[str, Any] = await client.info("memory")
    return int(info["used_memory"])


async def measure(url: str, cycles: int, conversations: int, ttl: float) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url, socket_timeout=5.0)
    prefix = f"bdm{uuid.uuid4().hex[:8]}"
    # One liveness key for the run, long enough to need no heartbeat: every claim names it.
    live = Liveness(client, prefix, "bench", ttl=3600.0)
    await live.start()
    store = RedisDedup(client, prefix, lease=30.0, ttl=ttl, liveness=live)
    try:
        # One warm-up cycle loads the scripts, so their cache is not counted.
        await _cycle(store, 10**9, 0)
        await asyncio.sleep(0.2)
        before = await used_memory(client)
        started = time.perf_counter()
        for start in range(0, cycles, 500):  # 500 at a time: as a busy worker's pipelines do
            await asyncio.gather(*(_cycle(store, i, i % conversations)
                                   for i in range(start, min(start + 500, cycles))))
        elapsed = time.perf_counter() - started
        after = await used_memory(client)
        keys = 0
        async for _ in client.scan_iter(match=f"{prefix}:*", count=1000):
            keys += 1
        return {"cycles": cycles, "conversations": conversations, "keys": keys,
                "bytes": after - before, "bytes_per_callback": (after - before) / cycles,
                "cycles_per_second": cycles / elapsed}
    finally:
        batch = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for i in range(0, len(batch), 1000):
            await client.delete(*batch[i:i + 1000])
        await store.close()


async def _cycle(store: RedisDedup, i: int, conversation: int) -> None:
    key = f"{APP}:{BOT}:{TRIGGER}:{100_000_000 + i}"
    pen = f"{APP}:user:bench-user-{conversation}_user_{BOT}"
    claim = await store.claim(key, pen)
    await store.done(key, claim.token, pen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20_000)
    parser.add_argument("--conversations", type=int, default=2_000)
    parser.add_argument("--ttl", type=float, default=86_400.0)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    if args.redis_url:
        result = asyncio.run(measure(args.redis_url, args.cycles, args.conversations, args.ttl))
    else:
        with private_redis() as url:
            result = asyncio.run(measure(url, args.cycles, args.conversations, args.ttl))
    print(f"{result['cycles']} claim+done cycles over {result['conversations']} conversations: "
          f"{result['bytes']} bytes, {result['bytes_per_callback']:.1f} B per remembered "
          f"callback ({result['keys']} keys, {result['cycles_per_second']:.0f} cycles/s)")
    per_day = result["bytes_per_callback"] * 1000 * 86_400 / 1e9
    print(f"sizing: 1,000 callbacks/s x 24 h window -> {per_day:.1f} GB")


if __name__ == "__main__":
    main()
