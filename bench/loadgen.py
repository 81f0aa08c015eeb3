"""A load generator process: POSTs callbacks to an ingress, either open-loop at a fixed rate
(each callback's text carries its send time, for end-to-end latency) or closed-loop as fast as
``--concurrency`` connections allow (the fallback when wrk is not installed). Bounded by
``--count`` and ``--duration``; prints one JSON line of figures.

    python -m bench.loadgen --url http://127.0.0.1:8080/callback --rate 500 --count 5000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections import Counter

import aiohttp
import orjson
import uvloop

from bench.common import callback, percentile, stamped_text


async def run(args: argparse.Namespace) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if args.auth:
        headers["Authorization"] = args.auth
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    stop_at = time.monotonic() + args.duration
    sem = asyncio.Semaphore(args.concurrency)
    sent = 0

    async with aiohttp.ClientSession(connector=connector) as session:
        async def post(i: int) -> None:
            text = stamped_text(i) if args.rate else None
            body = orjson.dumps(callback(args.start + i, conversations=args.conversations,
                                         text=text))
            started = time.perf_counter()
            try:
                async with session.post(args.url, data=body, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
            except (aiohttp.ClientError, OSError, TimeoutError):
                statuses[-1] += 1
            finally:
                latencies.append(time.perf_counter() - started)
                sem.release()

        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        for i in range(args.count):
            if args.rate:
                delay = t0 + i / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if time.monotonic() > stop_at:
                break
            await sem.acquire()
            task = asyncio.create_task(post(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        elapsed = time.monotonic() - t0
        if tasks:
            await asyncio.wait(tasks, timeout=10)
    return {
        "sent": sent,
        "elapsed_s": elapsed,
        "rate": sent / elapsed if elapsed else 0.0,
        "statuses": {str(k): v for k, v in statuses.items()},
        "ok": statuses.get(200, 0),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies, default=0.0) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="callbacks/s; 0 = closed loop")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--auth")
    args = parser.parse_args()
    # A cyclic-collector pass here would delay sends after their time was stamped and count as
    # the pipeline's latency; the run is bounded, so memory stays small without it.
    gc.disable()
    result = uvloop.run(run(args))
    sys.stdout.write("LOADGEN_JSON " + orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
