"""``python -m bench --profile [--only ingress,memory,redis]``: py-spy samples botrelay's ingress
under wrk load and a worker (memory, then Redis dedup) draining a preloaded queue, and prints
the top costs: by function (own time) and by package (own time of the frames in it). Raw
stacks go to ``bench/results/``."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import ingress_bench, worker_bench
from bench.common import (
    AMQP_URL,
    ECHO,
    PASSWORD,
    RESULTS,
    USERNAME,
    apps_file,
    bench_settings,
    botrelay_env,
    cleanup,
    core,
    free_port,
    new_prefix,
    python,
    spawn,
    wait_http,
    wait_log,
)
from botrelay.shared.fake_cometchat import RunningFake

SECONDS = 6


def _py_spy() -> str | None:
    """py-spy from PATH, or beside this interpreter (a venv's bin/)."""
    here = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(here) if here.exists() else None)


def _record(pid: int, out: Path, seconds: int) -> None:
    subprocess.run([_py_spy() or "py-spy", "record", "--pid", str(pid), "--duration", str(seconds),
                    "--rate", "250", "--format", "raw", "--output", str(out), "--nonblocking"],
                   capture_output=True, timeout=seconds + 30, check=False)


def _package(frame: str) -> str:
    """``send (aiohttp/client.py:600)`` -> ``aiohttp``; botrelay's own code by module."""
    where = frame.rsplit("(", 1)[-1].rstrip(")")
    path = where.split(":", 1)[0]
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for own in ("shared/", "ingress/", "worker/", "examples/"):
        if own in path:
            return own + path.split(own, 1)[1]
    if "python3" in path:
        return "stdlib " + path.rsplit("/", 1)[-1]
    return path or frame


def summarise(path: Path, top: int = 12) -> str:
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or not stack:
            continue
        n = int(count)
        leaf = stack.split(";")[-1]
        name = leaf.rsplit(":", 1)[0] + ")" if ":" in leaf else leaf
        own[name] += n
        packages[_package(leaf)] += n
        total += n
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples", "  own time by function:"]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("  own time by package / module:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in packages.most_common(top)]
    return "\n".join(lines)


async def profile_ingress(logdir: Path) -> Path:
    prefix = new_prefix("profile-ingress")
    port = free_port()
    env = {"BOTRELAY_AMQP_URL": AMQP_URL, "BOTRELAY_PREFIX": prefix,
           "BOTRELAY_ORDERING": "conversation", "BOTRELAY_PORT": str(port),
           "BOTRELAY_HOST": "127.0.0.1", "BOTRELAY_CALLBACK_USERNAME": USERNAME,
           "BOTRELAY_CALLBACK_PASSWORD": PASSWORD,
               "BOTRELAY_COMETCHAT_APPS_FILE": apps_file(), "BOTRELAY_METRICS_PORT": "0"}
    child = spawn("profile-ingress", python("-m", "botrelay", "ingress"), env, core(0), logdir)
    out = RESULTS / f"profile-ingress-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", child=child)
        url = f"http://127.0.0.1:{port}/callback"
        load = asyncio.create_task(asyncio.to_thread(
            ingress_bench._load, url, SECONDS + 2, ingress_bench._auth(), core(1), logdir))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(_record, child.proc.pid, out, SECONDS)
        await load
    finally:
        child.stop()
        await cleanup(prefix, settings=bench_settings(prefix, "conversation"))
    return out


async def profile_worker(logdir: Path, count: int, *, redis: bool) -> Path:
    dedup = "redis" if redis else "memory"
    prefix = new_prefix(f"profile-worker-{dedup}")
    settings = bench_settings(prefix, "none")
    out = RESULTS / f"profile-worker-{dedup}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    async with RunningFake() as fake:
        try:
            await worker_bench.preload_botrelay(settings, count, 2000)
            env = botrelay_env(prefix, fake, redis=redis, ordering="none")
            argv = python("-m", "botrelay", "worker", "--app", ECHO)
            child = spawn("profile-worker", argv, env, core(0), logdir)
            try:
                await wait_log(child, "consuming")
                await asyncio.to_thread(_record, child.proc.pid, out, SECONDS)
            finally:
                child.stop()
        finally:
            await cleanup(prefix, settings=settings)
    return out


async def main(args: argparse.Namespace) -> int:
    if _py_spy() is None:
        print("py-spy is not installed: pip install py-spy")
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    logdir = RESULTS / f"logs-profile-{time.strftime('%Y%m%d-%H%M%S')}"
    count = max(args.count, 30000)
    only = set(args.only.split(",")) if args.only else {"ingress", "memory", "redis"}
    results: list[Any] = []
    if "ingress" in only:
        results.append(await profile_ingress(logdir))
    for dedup in ("memory", "redis"):
        if dedup in only:
            results.append(await profile_worker(logdir, count, redis=dedup == "redis"))
    for path in results:
        print(summarise(path))
        print()
    return 0
