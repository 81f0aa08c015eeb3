"""End-to-end latency at a fixed offered rate: load generator -> ingress -> RabbitMQ -> worker(s)
-> the fake reply API. Each callback's text carries its send time; the latency is from that send
to the fake accepting the echo reply. The inbound queues' depth is sampled throughout to show
whether the workers keep up.

Contenders: botrelay (Redis dedup, default ordering), and the bare baselines (1) and (2) wired the
same way (one quorum queue, no dedup), on the same cores."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    AMQP_URL,
    API_KEY,
    ECHO,
    ROOT,
    Child,
    bench_settings,
    botrelay_env,
    by_second,
    cleanup,
    connect,
    core,
    e2e_latencies,
    free_port,
    new_prefix,
    percentile,
    python,
    queue_depth,
    spawn,
    wait_http,
    wait_log,
    wait_replies,
)
from botrelay.shared import topology
from botrelay.shared.fake_cometchat import RunningFake


async def _sample_depth(names: list[str], samples: list[tuple[float, int]],
                        stop: asyncio.Event) -> None:
    connection = await connect()
    async with connection:
        channel = await connection.channel()
        t0 = time.monotonic()
        while not stop.is_set():
            samples.append((time.monotonic() - t0, await queue_depth(channel, names)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


async def _start(contender: str, workers: int, ordering: str, prefix: str, port: int,
                 fake: RunningFake, children: list[Child], logdir: Path) -> list[str]:
    """Ingress on core 0; worker 1 on core 1, worker 2 on core 0; load and fake on core 1.
    The queues to watch."""
    settings = bench_settings(prefix, ordering)
    if contender == "baseline":
        queue = f"{prefix}.q"
        ingress = spawn(f"e2e-{contender}-ingress", python(
            "-m", "bench.baselines.ingress_baseline", "--port", str(port), "--queue", queue,
            "--amqp", AMQP_URL), {}, core(0), logdir)
        children.append(ingress)
        await wait_http(f"http://127.0.0.1:{port}/healthz", child=ingress)
        for w in range(workers):
            worker = spawn(f"e2e-{contender}-worker-{w + 1}", python(
                "-m", "bench.baselines.worker_baseline", "--queue", queue, "--api-base",
                fake.base, "--api-key", API_KEY, "--prefetch", "64", "--amqp", AMQP_URL),
                {}, core(w + 1), logdir)
            children.append(worker)
            await wait_log(worker, "consuming")
        return [queue]
    env = botrelay_env(prefix, fake, redis=True, ordering=ordering, BOTRELAY_PORT=str(port))
    ingress = spawn("e2e-ingress", python("-m", "botrelay", "ingress"), env, core(0), logdir)
    children.append(ingress)
    await wait_http(f"http://127.0.0.1:{port}/readyz", child=ingress)
    for w in range(workers):
        argv = python("-m", "botrelay", "worker", "--app", ECHO)
        worker = spawn(f"e2e-worker-{w + 1}", argv, env, core(w + 1), logdir)
        children.append(worker)
        await wait_log(worker, "consuming")
    if ordering == "conversation" and workers > 1:
        await asyncio.sleep(3.0)  # let the partitions settle over the workers
    return topology.inbound_queues(settings)


async def run(rate: float, duration: float, *, workers: int, logdir: Path,
              ordering: str = "conversation", contender: str = "botrelay") -> dict[str, Any]:
    """``contender``: ``botrelay`` or ``baseline`` (baselines (1) and (2))."""
    prefix = new_prefix(f"e2e-{contender}-{int(rate)}")
    settings = bench_settings(prefix, ordering)
    port = free_port()
    count = int(rate * (duration + 1))  # one second of warm-up first
    children: list[Child] = []
    async with RunningFake() as fake:
        try:
            queues = await _start(contender, workers, ordering, prefix, port, fake, children,
                                  logdir)
            depth_log: list[tuple[float, int]] = []
            stop = asyncio.Event()
            sampler = asyncio.create_task(_sample_depth(queues, depth_log, stop))
            argv = python("-m", "bench.loadgen", "--url", f"http://127.0.0.1:{port}/callback",
                          "--rate", str(rate), "--count", str(count),
                          "--duration", str(duration + 5), "--concurrency", "512")
            loadgen = await asyncio.create_subprocess_exec(
                "taskset", "-c", str(core(1)), *argv, stdout=asyncio.subprocess.PIPE,
                cwd=str(ROOT))
            out, _ = await asyncio.wait_for(loadgen.communicate(), duration + 60)
            line = next(x for x in out.decode().splitlines() if x.startswith("LOADGEN_JSON "))
            sent = orjson.loads(line.split(" ", 1)[1])
            await wait_replies(fake.fake, sent["ok"], timeout=30, stall=3)
            stop.set()
            await sampler
            for child in children:
                if not child.alive():
                    raise RuntimeError(f"{child.name} died:\n{child.tail()}")
        finally:
            for child in children:
                child.stop()
            await cleanup(prefix, queues=[f"{prefix}.q"] if contender == "baseline" else (),
                          settings=settings)
        # The first second warms up connections and caches: left out of the figures.
        warmup = int(rate) if duration > 2 else 0
        samples = e2e_latencies(fake.fake, warmup)
    latencies = [value for _, value in samples]
    depths = [d for _, d in depth_log]
    half = len(depths) // 2
    plural = "s" if workers > 1 else ""
    name = (f"baselines (1)+(2), {workers} worker{plural}" if contender == "baseline" else
            f"botrelay, Redis dedup, {workers} worker{plural}, ordering={ordering}")
    return {
        "scenario": f"e2e {int(rate)}/s",
        "contender": name,
        "offered_rate": rate,
        "sent_rate": sent["rate"],
        "throughput": len(fake.fake.replies) / sent["elapsed_s"] if sent["elapsed_s"] else 0.0,
        "sent": sent["sent"], "accepted": sent["ok"], "replies": len(fake.fake.replies),
        "warmup_callbacks": warmup,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
        "ingress_p99_ms": sent["p99_ms"],
        "by_second": by_second(samples),
        "depths": [(round(t, 2), d) for t, d in depth_log],
        "queue_depth_max": max(depths, default=0),
        "queue_depth_first_half_max": max(depths[:half], default=0),
        "queue_depth_second_half_max": max(depths[half:], default=0),
        "cores": {"ingress": core(0), **{f"worker {w + 1}": core(w + 1) for w in range(workers)},
                  "loadgen, fake API + driver": core(1), "rabbitmq, redis": "unpinned"},
    }
