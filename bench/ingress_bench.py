"""Ingress throughput and latency: botrelay's ingress (auth, validation, metrics on) against
baseline (1), loaded by wrk (or ``bench.loadgen`` when wrk is missing) from another core."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from bench.common import (
    AMQP_URL,
    PASSWORD,
    USERNAME,
    Child,
    apps_file,
    bench_settings,
    cleanup,
    core,
    free_port,
    new_prefix,
    python,
    spawn,
    wait_http,
)

CONNECTIONS = 64
HERE = Path(__file__).resolve().parent


def _auth() -> str:
    import base64

    return "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()


def _load(url: str, duration: float, auth: str | None, cpu: int, logdir: Path
          ) -> dict[str, Any]:
    """Closed-loop load for ``duration`` seconds; the figures."""
    if shutil.which("wrk"):
        argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(duration))}s",
                "--timeout", "5s", "-s", str(HERE / "wrk_callback.lua"), url, "--",
                auth or "-", "2000", "64"]
        if shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
        (logdir / "wrk.log").write_text(out.stdout + out.stderr)
        line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no figures:\n{out.stdout}\n{out.stderr}")
        doc = orjson.loads(line.split(" ", 1)[1])
        return {"tool": "wrk", "requests": doc["requests"],
                "throughput": doc["requests"] / doc["duration_s"],
                "errors": doc["errors"] + doc["non_2xx"], "p50_ms": doc["p50_ms"],
                "p90_ms": doc["p90_ms"], "p99_ms": doc["p99_ms"], "max_ms": doc["max_ms"]}
    argv = python("-m", "bench.loadgen", "--url", url, "--count", "10000000",
                  "--duration", str(duration), "--concurrency", str(CONNECTIONS))
    if auth:
        argv += ["--auth", auth]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", str(cpu), *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    line = next(x for x in out.stdout.splitlines() if x.startswith("LOADGEN_JSON "))
    doc = orjson.loads(line.split(" ", 1)[1])
    return {"tool": "aiohttp client", "requests": doc["sent"], "throughput": doc["rate"],
            "errors": doc["sent"] - doc["ok"], "p50_ms": doc["p50_ms"],
            "p90_ms": doc["p90_ms"], "p99_ms": doc["p99_ms"], "max_ms": doc["max_ms"]}


async def run(contender: str, duration: float, logdir: Path, warmup: float = 1.0,
              ordering: str = "conversation", spool: bool = False) -> dict[str, Any]:
    """``contender``: ``baseline`` (1) or ``botrelay``; ``spool``: botrelay with
    BOTRELAY_SPOOL_DIR set. The broker stays up, so the spool is idle: what it costs a callback
    then is one look at its depth."""
    prefix = new_prefix(f"ingress-{contender}")
    port = free_port()
    server_cpu, load_cpu = core(0), core(1)
    settings = bench_settings(prefix, ordering)
    queue = f"{prefix}.q"
    auth: str | None = None
    if contender == "baseline":
        child = spawn("ingress-baseline", python(
            "-m", "bench.baselines.ingress_baseline", "--port", str(port), "--queue", queue,
            "--amqp", AMQP_URL), {}, server_cpu, logdir)
        ready = f"http://127.0.0.1:{port}/healthz"
    else:
        auth = _auth()
        env = {"BOTRELAY_AMQP_URL": AMQP_URL, "BOTRELAY_PREFIX": prefix,
               "BOTRELAY_ORDERING": ordering, "BOTRELAY_PORT": str(port),
               "BOTRELAY_HOST": "127.0.0.1", "BOTRELAY_CALLBACK_USERNAME": USERNAME,
               "BOTRELAY_CALLBACK_PASSWORD": PASSWORD,
               "BOTRELAY_COMETCHAT_APPS_FILE": apps_file(), "BOTRELAY_METRICS_PORT": "0"}
        if spool:
            env["BOTRELAY_SPOOL_DIR"] = str(logdir / f"spool-{prefix}")
        child = spawn("ingress-botrelay", python("-m", "botrelay", "ingress"), env, server_cpu,
                      logdir)
        ready = f"http://127.0.0.1:{port}/readyz"
    try:
        await wait_http(ready, child=child)
        url = f"http://127.0.0.1:{port}/callback"
        if warmup:
            await asyncio.to_thread(_load, url, warmup, auth, load_cpu, logdir)
        started, cpu = time.monotonic(), child.cpu_seconds()
        figures = await asyncio.to_thread(_load, url, duration, auth, load_cpu, logdir)
        figures["wall_s"] = time.monotonic() - started
        figures["server_cpu_us_per_request"] = (child.cpu_seconds() - cpu) / max(
            1, figures["requests"]) * 1e6
        _check(child)
    finally:
        child.stop()
        await cleanup(prefix, queues=[queue], settings=settings)
    name = _name(contender) + ("" if contender == "baseline" else f", ordering={ordering}")
    name += ", spool idle" if spool else ""
    return {"scenario": "ingress", "contender": name, **figures,
            "cores": {"server": server_cpu, figures["tool"]: load_cpu,
                      "rabbitmq": "unpinned"}}


def _name(contender: str) -> str:
    return "baseline (1) aiohttp+aio-pika" if contender == "baseline" else \
        "botrelay (auth, validation, metrics)"


def _check(child: Child) -> None:
    if not child.alive():
        raise RuntimeError(f"{child.name} died during the load:\n{child.tail()}")
