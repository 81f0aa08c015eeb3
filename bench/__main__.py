"""``python -m bench``: every scenario against its baselines; a table, a JSON file and a PNG chart
under ``bench/results/``. ``--smoke`` runs each scenario for about a second (CI checks that the
suite works; its figures mean nothing). ``--profile`` samples the ingress and a worker under load
with py-spy and names the top costs.

All traffic goes to 127.0.0.1; each load is bounded in time and count; each scenario uses its own
queue prefix and deletes its queues, exchanges and Redis keys afterwards."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from bench import e2e_bench, failover_bench, ingress_bench, report, worker_bench
from bench.common import REDIS_URL, RESULTS, connect, core, no_gc_pauses

Step = tuple[str, Callable[[], Awaitable[dict[str, Any]]]]


def plan(args: argparse.Namespace, logdir: Path) -> tuple[list[Step], list[str]]:
    smoke = args.smoke
    duration = 1.0 if smoke else args.duration
    count = 300 if smoke else args.count
    drain_timeout = 1.5 if smoke else 90.0
    skipped: list[str] = []
    steps: list[Step] = []
    only = set(args.only.split(",")) if args.only else None

    def want(name: str) -> bool:
        return only is None or name in only

    if want("ingress"):
        # botrelay twice: on one quorum queue like the baseline (ordering=none), and on the 16
        # partition queues of the default ordering=conversation.
        # The last one has BOTRELAY_SPOOL_DIR set: the idle spool's cost on the hot path.
        for who, ordering, spool in (("baseline", "none", False), ("botrelay", "none", False),
                                     ("botrelay", "conversation", False),
                                     ("botrelay", "conversation", True)):
            steps.append((f"ingress {who} {ordering}" + (" spool" if spool else ""),
                          lambda who=who, ordering=ordering, spool=spool:
                          ingress_bench.run(who, duration, logdir, warmup=0.0 if smoke else 2.0,
                                            ordering=ordering, spool=spool)))
    if want("drain"):
        contenders = ["baseline", "faststream", "memory", "redis"]
        if importlib.util.find_spec("faststream") is None:
            contenders.remove("faststream")
            skipped.append("FastStream not installed: the FastStream scenario is skipped "
                           "(pip install -e '.[bench]')")
        for who in contenders:
            steps.append((f"drain {who}", lambda who=who: worker_bench.run(
                who, count=count, timeout=drain_timeout, logdir=logdir)))
    if want("scaling"):
        steps.append(("scaling 2 workers", lambda: worker_bench.run(
            "redis", count=count, timeout=drain_timeout, logdir=logdir, workers=2,
            scenario="scaling")))
    if want("ordering"):
        steps.append(("ordering conversation", lambda: worker_bench.run(
            "redis", count=count, timeout=drain_timeout, logdir=logdir,
            ordering="conversation", scenario="ordering")))
    if want("e2e"):
        steps += e2e_steps(duration, logdir)
    if want("failover"):
        steps += failover_steps(smoke, duration, logdir)
    return steps, skipped


def e2e_steps(duration: float, logdir: Path) -> list[Step]:
    return [(f"e2e {rate}/s {who}", lambda rate=rate, workers=workers, who=who:
             e2e_bench.run(rate, duration, workers=workers, logdir=logdir, contender=who))
            for rate, workers in ((500, 1), (2000, 2)) for who in ("baseline", "botrelay")]


def failover_steps(smoke: bool, duration: float, logdir: Path) -> list[Step]:
    """Kill the busiest of three workers mid-stream; the smoke run checks one ordering only
    (each run starts three workers)."""
    return [(f"failover {ordering}", lambda ordering=ordering: failover_bench.run(
                max(duration, 4.0), logdir=logdir, ordering=ordering))
            for ordering in (("conversation",) if smoke else ("conversation", "none"))]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


async def machine() -> dict[str, Any]:
    model = cpu_model()
    info: dict[str, Any] = {"nproc": os.cpu_count(), "cpu": model,
                            "python": platform.python_version(), "wrk": bool(shutil.which("wrk"))}
    with contextlib.suppress(Exception):
        connection = await connect()
        async with connection:
            props = connection.transport.connection.server_properties  # type: ignore[union-attr]
            info["rabbitmq"] = props["version"].decode() if isinstance(
                props["version"], bytes) else str(props["version"])
    with contextlib.suppress(Exception):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        info["redis"] = (await client.info("server"))["redis_version"]
        await client.aclose()
    with contextlib.suppress(OSError):
        info["loadavg_start"] = os.getloadavg()
    return info


async def main(args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    logdir = RESULTS / f"logs-{stamp}"
    steps, skipped = plan(args, logdir)
    for line in skipped:
        print(line, flush=True)
    info = await machine()
    print(f"machine: {info.get('nproc')} cores, {info.get('cpu')}, RabbitMQ "
          f"{info.get('rabbitmq', '?')}, Redis {info.get('redis', '?')}", flush=True)
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    repeat = 1 if args.smoke else args.repeat
    for r in range(repeat):
        for name, step in steps:
            started = time.monotonic()
            try:
                with no_gc_pauses():
                    row = await step()
            except Exception as exc:  # one broken scenario must not hide the others
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                print(f"[{r + 1}/{repeat}] {name}: FAILED {type(exc).__name__}: {exc}",
                      flush=True)
                continue
            row["run"] = r + 1
            runs.append(row)
            print(f"[{r + 1}/{repeat}] {name}: {row.get('throughput', 0):.0f}/s "
                  f"({time.monotonic() - started:.1f}s)", flush=True)
    rows = report.medians(runs)
    goal_rows = report.goals(rows)
    with contextlib.suppress(OSError):
        info["loadavg_end"] = os.getloadavg()
    kind = "smoke" if args.smoke else "bench"
    json_path = RESULTS / f"{kind}-{stamp}.json"
    report.write_json(json_path, {"machine": info, "smoke": args.smoke, "repeat": repeat,
                                  "rows": rows, "goals": goal_rows, "runs": runs,
                                  "skipped": skipped, "failures": failures})
    chart_path = RESULTS / f"{kind}-{stamp}.png"
    drawn = report.chart(chart_path, rows)
    print()
    print(report.table(rows, goal_rows))
    print()
    for line in skipped:
        print(line)
    print(f"results: {json_path}")
    print(f"chart: {chart_path}" if drawn else "chart: matplotlib not installed, no chart")
    if failures:
        print("failed scenarios:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="about 1 s per scenario (CI)")
    parser.add_argument("--profile", action="store_true",
                        help="sample the ingress and a worker under load with py-spy")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the whole suite; "
                        "the table shows medians")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of load per ingress and e2e run")
    parser.add_argument("--count", type=int, default=20000,
                        help="callbacks preloaded per drain run")
    parser.add_argument("--only", help="comma-separated: "
                        "ingress,drain,scaling,ordering,e2e,failover")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {core(1)})  # the driver and the fake reply API: core 1
    if arguments.profile:
        from bench import profile

        sys.exit(uvloop.run(profile.main(arguments)))
    sys.exit(uvloop.run(main(arguments)))
