"""What every scenario shares: child processes pinned to a core, callbacks, the fake reply API's
figures, percentiles, and tearing down a scenario's queues, exchanges and Redis keys."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import redis.asyncio as aioredis

from botrelay.shared import topology
from botrelay.shared.fake_cometchat import FakeCometChat, RunningFake
from botrelay.shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
USERNAME, PASSWORD = "bench", "bench-secret"
API_KEY = "bench-api-key"
BOT = "bench_bot"
APPS = 64  # callbacks are spread over this many apps, as on a multi-tenant relay
CORES = os.cpu_count() or 1


# The bot every scenario's workers run (from the repository root, where examples/ is).
ECHO = "examples.echo_bot:bot"

def core(n: int) -> int:
    """Core ``n``, folded onto the machine's cores."""
    return n % CORES


def new_prefix(name: str) -> str:
    return f"bench-{name}-{uuid.uuid4().hex[:6]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- callbacks ---------------------------------------------------------------------------------

def callback(i: int, *, conversations: int = 2000, text: str | None = None) -> dict[str, Any]:
    """Bot callback number ``i``: a 1:1 text message, over many users and apps."""
    user = f"user-{i % conversations}"
    app = f"app{(i % conversations) % APPS:03d}"
    return {
        "trigger": "after_message",
        "data": {
            "id": str(i),
            "conversationId": f"{user}_user_{BOT}",
            "sender": user,
            "receiverType": "user",
            "receiver": BOT,
            "category": "message",
            "type": "text",
            "data": {
                "text": text if text is not None else f"hello {i}",
                "entities": {"sender": {"entity": {"uid": user, "name": f"User {i}"},
                                        "entityType": "user"}},
            },
            "sentAt": 1700000000 + i,
        },
        "appId": app,
        "region": "eu",
        "bot": BOT,
    }


def stamped_text(i: int) -> str:
    """A text that carries its send time, so the reply's arrival gives the end-to-end latency."""
    return f"t{time.time_ns()} #{i}"


def latency_of(reply_text: str, accepted_at: float) -> tuple[int, float] | None:
    """(i, seconds from the stamp in ``echo: t<ns> #i`` to when the fake accepted the reply)."""
    _, _, rest = reply_text.partition(" t")
    stamp, _, number = rest.partition(" #")
    if not stamp.isdigit() or not number.isdigit():
        return None
    return int(number), accepted_at - int(stamp) / 1e9


# --- figures -----------------------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def drain_rate(fake: FakeCometChat, skip: int = 0) -> tuple[int, float]:
    """(replies, replies/s between the first and the last accepted reply)."""
    ats = sorted(r.at for r in fake.replies)[skip:]
    if len(ats) < 2 or ats[-1] <= ats[0]:
        return len(fake.replies), 0.0
    return len(fake.replies), (len(ats) - 1) / (ats[-1] - ats[0])


def e2e_latencies(fake: FakeCometChat, warmup: int = 0) -> list[tuple[float, float]]:
    """(accepted at, latency) of every reply that carries a send stamp, but the first
    ``warmup`` callbacks'."""
    out = []
    for r in fake.replies:
        value = latency_of(str((r.body.get("data") or {}).get("text", "")), r.at)
        if value is not None and value[0] >= warmup:
            out.append((r.at, value[1]))
    return out


def by_second(samples: list[tuple[float, float]]) -> list[tuple[int, int, float]]:
    """(second of the run, replies, p99 ms) for each second: shows transients and stalls."""
    if not samples:
        return []
    t0 = min(at for at, _ in samples)
    buckets: dict[int, list[float]] = {}
    for at, value in samples:
        buckets.setdefault(int(at - t0), []).append(value)
    return [(sec, len(v), round(percentile(v, 99) * 1000, 1)) for sec, v in sorted(buckets.items())]


async def wait_replies(fake: FakeCometChat, count: int, timeout: float,
                       stall: float = 5.0) -> None:
    """Until ``count`` replies arrived, ``timeout`` passed, or nothing arrived for ``stall`` s."""
    stop_at = time.monotonic() + timeout
    seen, seen_at = -1, time.monotonic()
    while time.monotonic() < stop_at and len(fake.replies) < count:
        if len(fake.replies) != seen:
            seen, seen_at = len(fake.replies), time.monotonic()
        elif time.monotonic() - seen_at > stall:
            return
        await asyncio.sleep(0.05)


@contextlib.contextmanager
def no_gc_pauses() -> Iterator[None]:
    """The fake reply API keeps every reply it accepts in this process: without this, the
    cyclic collector's full passes over them would stall it for tens of ms now and then and
    show up as the pipeline's tail latency. Each run is bounded, so memory stays small."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# --- processes ---------------------------------------------------------------------------------

@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    cpu: int | None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def cpu_seconds(self) -> float:
        """User + system CPU time the child used so far (Linux)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def spawn(name: str, argv: list[str], env: dict[str, str], cpu: int | None,
          logdir: Path) -> Child:
    """``argv`` as a child process, pinned to ``cpu`` with taskset (when there is one)."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    full = dict(os.environ)
    full.update(env)
    full["PYTHONPATH"] = str(ROOT)
    if cpu is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", str(cpu), *argv]
    out = open(log, "wb")  # noqa: SIM115 - closed when the child exits
    proc = subprocess.Popen(argv, env=full, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return Child(name, proc, log, cpu)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


async def wait_log(child: Child, text: str, timeout: float = 30.0) -> None:
    stop_at = time.monotonic() + timeout
    while time.monotonic() < stop_at:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
        with contextlib.suppress(OSError):
            if text in child.log.read_text(errors="replace"):
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{child.name} did not log {text!r} within {timeout}s:\n{child.tail()}")


async def wait_http(url: str, timeout: float = 30.0, child: Child | None = None) -> None:
    import aiohttp

    stop_at = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < stop_at:
            if child is not None and not child.alive():
                raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not ready within {timeout}s")


def apps_file() -> str:
    """A BOTRELAY_COMETCHAT_APPS_FILE with the APPS apps the callbacks are spread over."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"botrelay-bench-apps-{APPS}.toml"
    path.write_text("".join(f'[[app]]\nid = "app{n:03d}"\nregion = "eu"\napi_key = "{API_KEY}"\n'
                            for n in range(APPS)))
    return str(path)


def botrelay_env(prefix: str, fake: RunningFake, *, redis: bool, ordering: str = "none",
                 **extra: str) -> dict[str, str]:
    env = {
        "BOTRELAY_COMETCHAT_APPS_FILE": apps_file(),
        "BOTRELAY_CALLBACK_AUTH": "none",  # loopback only: the ingress bench measures auth
        "BOTRELAY_AMQP_URL": AMQP_URL,
        "BOTRELAY_PREFIX": prefix,
        "BOTRELAY_ORDERING": ordering,
        "BOTRELAY_COMETCHAT_API_BASE": fake.base,
        "BOTRELAY_COMETCHAT_API_KEY": API_KEY,
        "BOTRELAY_METRICS_PORT": "0",
        "BOTRELAY_LOG_FORMAT": "json",
        "BOTRELAY_HOST": "127.0.0.1",
        "BOTRELAY_REDIS_URL": REDIS_URL if redis else "",
    }
    env.update(extra)
    return env


def bench_settings(prefix: str, ordering: str = "none") -> Settings:
    return Settings.from_env({"BOTRELAY_AMQP_URL": AMQP_URL, "BOTRELAY_PREFIX": prefix,
                              "BOTRELAY_ORDERING": ordering,
                              "BOTRELAY_COMETCHAT_APPS_FILE": apps_file()})


# --- broker and Redis --------------------------------------------------------------------------

async def connect() -> aio_pika.abc.AbstractConnection:
    return await aio_pika.connect(AMQP_URL, client_properties={"connection_name": "bench"})


async def queue_depth(channel: aio_pika.abc.AbstractChannel, names: Sequence[str]) -> int:
    total = 0
    for name in names:
        with contextlib.suppress(Exception):
            result = await channel.declare_queue(name, passive=True)
            total += result.declaration_result.message_count or 0
    return total


async def cleanup(prefix: str, *, queues: Sequence[str] = (),
                  settings: Settings | None = None) -> None:
    """Delete a scenario's queues and exchanges (botrelay's topology or the named queues) and
    its Redis keys."""
    connection = await connect()
    async with connection:
        for name in queues:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()
        if settings is not None:
            for s in (settings.replace(ordering="conversation"), settings.replace(ordering="none")):
                for name in topology.all_queue_names(s):
                    channel = await connection.channel()
                    with contextlib.suppress(Exception):
                        await channel.queue_delete(name)
                for name in topology.all_exchange_names(s):
                    channel = await connection.channel()
                    with contextlib.suppress(Exception):
                        await channel.exchange_delete(name)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start:start + 1000])
    finally:
        await client.aclose()


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)
