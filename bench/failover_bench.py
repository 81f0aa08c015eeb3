"""Failover: three workers (Redis dedup, a bot that takes 0.3 s) under about 100 callbacks/s;
half-way through, the busiest worker is SIGKILLed. Each callback's text carries its send time, so
the wait of every message is known; the figures are the worst and p99 wait of the replies that
arrived after the kill (the messages the dead worker held, and those queued behind them), and
how many replies were lost or sent twice."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    ROOT,
    Child,
    bench_settings,
    botrelay_env,
    cleanup,
    core,
    free_port,
    latency_of,
    new_prefix,
    percentile,
    python,
    spawn,
    wait_http,
    wait_log,
    wait_replies,
)
from botrelay.shared.fake_cometchat import RunningFake
from botrelay.worker import Bot, Message

HANDLER = 0.3  # seconds per message, as a bot calling a model would take (and more)

bot = Bot()


@bot.on_text()
async def slow_echo(msg: Message) -> str:
    await asyncio.sleep(HANDLER)
    return f"echo: {msg.text}"


APP = "bench.failover_bench:bot"


def _busiest(workers: list[Child], fake: RunningFake) -> Child:
    by_agent = Counter(r.agent for r in fake.fake.replies)
    return max(workers, key=lambda w: sum(n for agent, n in by_agent.items()
                                          if f"-{w.proc.pid}-" in agent))


async def run(duration: float, *, logdir: Path, ordering: str = "conversation",
              rate: float = 100.0, workers: int = 3) -> dict[str, Any]:
    prefix = new_prefix(f"failover-{ordering}")
    settings = bench_settings(prefix, ordering)
    port = free_port()
    count = int(rate * duration)
    children: list[Child] = []
    async with RunningFake() as fake:
        try:
            env = botrelay_env(prefix, fake, redis=True, ordering=ordering,
                               BOTRELAY_PORT=str(port))
            ingress = spawn(f"failover-{ordering}-ingress", python("-m", "botrelay", "ingress"),
                            env, core(0), logdir)
            children.append(ingress)
            await wait_http(f"http://127.0.0.1:{port}/readyz", child=ingress)
            pool: list[Child] = []
            for w in range(workers):
                worker = spawn(f"failover-{ordering}-worker-{w + 1}",
                               python("-m", "botrelay", "worker", "--app", APP), env,
                               core(w + 1), logdir)
                children.append(worker)
                pool.append(worker)
                await wait_log(worker, "consuming")
            if ordering == "conversation":
                await asyncio.sleep(3.0)  # let the partitions settle over the workers
            argv = python("-m", "bench.loadgen", "--url", f"http://127.0.0.1:{port}/callback",
                          "--rate", str(rate), "--count", str(count),
                          "--duration", str(duration + 5), "--concurrency", "128",
                          "--conversations", "200")
            loadgen = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, cwd=str(ROOT))
            await asyncio.sleep(duration / 2)
            victim = _busiest(pool, fake)
            victim.proc.kill()
            killed = time.time()
            out, _ = await asyncio.wait_for(loadgen.communicate(), duration + 60)
            line = next(x for x in out.decode().splitlines() if x.startswith("LOADGEN_JSON "))
            sent = orjson.loads(line.split(" ", 1)[1])
            await wait_replies(fake.fake, sent["ok"], timeout=30, stall=6)
            await asyncio.sleep(1.0)  # a late resend would show now
        finally:
            for child in children:
                child.stop()
            await cleanup(prefix, settings=settings)
    counts = Counter(r.body.get("muid") for r in fake.fake.replies)
    first: dict[Any, tuple[float, float]] = {}
    for r in fake.fake.replies:
        value = latency_of(str((r.body.get("data") or {}).get("text", "")), r.at)
        if value is not None:
            first.setdefault(r.body.get("muid"), (r.at, value[1]))
    waits = [lat for _, lat in first.values()]
    after = [lat for at, lat in first.values() if at >= killed]
    worst, p99 = max(after, default=float("nan")), percentile(after, 99)
    duplicates = sum(n - 1 for n in counts.values())
    print(f"failover ordering={ordering}: worst wait after the kill {worst:.2f}s, "
          f"p99 {p99:.2f}s; {duplicates} sent twice, {sent['ok'] - len(counts)} lost",
          flush=True)
    return {
        "scenario": "failover",
        "contender": f"botrelay, Redis dedup, {workers} workers, kill 1, ordering={ordering}",
        "offered_rate": rate,
        "throughput": len(counts) / sent["elapsed_s"] if sent["elapsed_s"] else 0.0,
        "accepted": sent["ok"], "replies": len(fake.fake.replies), "unique": len(counts),
        "duplicates": duplicates, "lost": sent["ok"] - len(counts),
        "p50_ms": percentile(waits, 50) * 1000,
        "p99_ms": p99 * 1000, "max_ms": worst * 1000,
        "after_kill_p99_s": p99, "after_kill_worst_s": worst,
        "handler_s": HANDLER,
    }
