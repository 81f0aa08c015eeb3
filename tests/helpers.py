"""Building callbacks, posting them, and waiting for replies, shared by the integration tests."""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson

from botrelay.shared import topology
from botrelay.shared.broker import make_message
from botrelay.shared.fake_cometchat import FakeCometChat, Recorded
from botrelay.shared.headers import ATTEMPT, CONVERSATION, TRIGGER
from botrelay.shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "cometchat"


def basic_auth(username: str, password: str) -> str:
    """An ``Authorization`` header value for HTTP Basic auth."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {token}"


def fixture(name: str) -> dict[str, Any]:
    return orjson.loads((FIXTURES / f"{name}.json").read_bytes())  # type: ignore[no-any-return]


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


def text_callback(msg_id: str, text: str, *, sender: str = "cometchat-uid-1",
                  group: str | None = None, bot: str = "demo_bot",
                  app_id: str = "2248348660ad9bd4") -> dict[str, Any]:
    """A bot callback for a text message: 1:1 with the bot, or in ``group``."""
    doc = copy.deepcopy(fixture("bot_user_text"))
    data = doc["data"]
    data["id"] = msg_id
    data["sender"] = sender
    data["data"]["text"] = text
    doc["bot"] = bot
    doc["appId"] = app_id
    if group is None:
        data["receiverType"], data["receiver"] = "user", bot
        data["conversationId"] = "_user_".join(sorted((sender, bot)))
    else:
        data["receiverType"], data["receiver"] = "group", group
        data["conversationId"] = f"group_{group}"
    return doc


def generated(n: int, *, start: int = 100_000, groups: int = 5, users: int = 40
              ) -> list[dict[str, Any]]:
    """``n`` distinct callbacks over many users and some groups."""
    out = []
    for i in range(n):
        msg_id = str(start + i)
        sender = f"user-{i % users}"
        group = f"group-{i % groups}" if i % 3 == 0 else None
        out.append(text_callback(msg_id, f"hello {msg_id}", sender=sender, group=group))
    return out


def expected_reply(doc: dict[str, Any]) -> tuple[str, str, str]:
    """(receiver, receiverType, text) the echo bot must send for a text callback."""
    data = doc["data"].get("message", doc["data"])
    if data["receiverType"] == "group":
        return data["receiver"], "group", f"echo: {data['data']['text']}"
    return data["sender"], "user", f"echo: {data['data']['text']}"


async def post_all(url: str, docs: Iterable[dict[str, Any]], *, concurrency: int = 32,
                   auth: str | None = None, retry_503: bool = True,
                   deadline: float = 120.0) -> list[int]:
    """POST every callback, ``concurrency`` at a time, re-posting on 503 or refused connections
    (as CometChat would) until ``deadline``; the final statuses."""
    docs = list(docs)
    statuses = [0] * len(docs)
    sem = asyncio.Semaphore(concurrency)
    stop_at = time.monotonic() + deadline

    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    async with aiohttp.ClientSession() as session:
        async def one(i: int, doc: dict[str, Any]) -> None:
            body = orjson.dumps(doc)
            async with sem:
                while True:
                    try:
                        async with session.post(url, data=body, headers=headers) as resp:
                            await resp.read()
                            statuses[i] = resp.status
                            if resp.status != 503 or not retry_503:
                                return
                    except aiohttp.ClientConnectionError:
                        statuses[i] = -1
                        if not retry_503:
                            return
                    if time.monotonic() > stop_at:
                        return
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(one(i, d) for i, d in enumerate(docs)))
    return statuses


async def wait_for(condition: Callable[[], bool], timeout: float = 60.0,
                   interval: float = 0.05) -> bool:
    """Poll ``condition`` until true or ``timeout``; the last value."""
    stop_at = time.monotonic() + timeout
    while time.monotonic() < stop_at:
        if condition():
            return True
        await asyncio.sleep(interval)
    return condition()


def reply_counts(fake: FakeCometChat) -> Counter[str]:
    """How many replies each text got (texts are unique per callback in these tests)."""
    return Counter(r.body["data"].get("text", "") for r in fake.replies)


def muid_counts(fake: FakeCometChat) -> Counter[str]:
    return Counter(r.body.get("muid", "") for r in fake.replies)


def first_replies(fake: FakeCometChat) -> list[tuple[int, int, Recorded]]:
    """(conversation, message, reply) for the first reply of each muid, in arrival order, in
    tests whose callbacks say ``c<conversation> m<message>`` to the echo bot."""
    seen: set[str] = set()
    firsts: list[tuple[int, int, Recorded]] = []
    for reply in fake.replies:
        if reply.body["muid"] in seen:
            continue
        seen.add(reply.body["muid"])
        c, m = reply.body["data"]["text"].removeprefix("echo: ").split()
        firsts.append((int(c[1:]), int(m[1:]), reply))
    return firsts


def order_by_conversation(fake: FakeCometChat) -> dict[int, list[int]]:
    """Each conversation's message numbers in the order their first reply reached the API."""
    order: dict[int, list[int]] = defaultdict(list)
    for c, m, _ in first_replies(fake):
        order[c].append(m)
    return order


def settings_env(settings: Settings) -> dict[str, str]:
    """The env vars that reproduce ``settings`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTRELAY_")}
    names = settings.env_names()
    for field_name, env_name in names.items():
        value = getattr(settings, field_name)
        if value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(f"{v:g}" for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[env_name] = str(value)
    env["PYTHONPATH"] = str(ROOT)
    return env


class WorkerProcess:
    """``python -m worker`` in a child process, killed (or stopped) by the test."""

    def __init__(self, settings: Settings, app: str = "examples.echo_bot:bot",
                 extra_env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        env = settings_env(settings)
        env["BOTRELAY_METRICS_PORT"] = "0"
        env.update(extra_env or {})
        self.log_path = log_path
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "botrelay", "worker", "--app", app, "--metrics-port", "0"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


async def publish_as_ingress(settings: Settings, docs: Iterable[dict[str, Any]]) -> None:
    """Callbacks published (with confirms) as an ingress with ``settings`` would route them,
    skipping the ingress: for tests that need messages an older configuration left behind."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await topology.declare(channel, settings)
        for doc in docs:
            conversation = doc["data"]["conversationId"]
            await exchange.publish(make_message(
                orjson.dumps(doc), message_id=f"k{doc['data']['id']}",
                headers={ATTEMPT: 1, TRIGGER: "after_message", CONVERSATION: conversation}),
                topology.inbound_key(settings, conversation))


async def inbound_depth(settings: Settings) -> int:
    """Messages ready in every inbound queue (shared and partitions)."""
    connection = await aio_pika.connect(settings.amqp_url)
    total = 0
    async with connection:
        channel = await connection.channel()
        for name in topology.inbound_queues(settings):
            queue = await channel.declare_queue(name, passive=True)
            total += queue.declaration_result.message_count or 0
    return total


def resends_around(fake: FakeCometChat, kill_time: float) -> int:
    """How many replies were sent twice, after checking each was first accepted within moments
    of ``kill_time``: the API took it and the worker died before the answer reached it (the one
    duplicate no client can rule out; the resend carries the same muid). A resend of anything
    accepted earlier would be a dedup bug."""
    first_seen: dict[str, float] = {}
    for reply in fake.replies:
        first_seen.setdefault(reply.body["muid"], reply.at)
    resent = [m for m, n in muid_counts(fake).items() if n > 1]
    print(f"resent after the kill (API answer lost with the worker): {len(resent)}")
    late = [m for m in resent if not kill_time - 1.0 <= first_seen[m] <= kill_time + 0.5]
    assert late == [], f"replies sent twice that were not in flight at the kill: {late}"
    return len(resent)


class WorkerGroup:
    """Worker processes started together, each logging to its own file in ``log_dir``, and all
    stopped with SIGTERM when the ``with`` block ends, however it ends."""

    def __init__(self, settings: Settings, count: int, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []
        for _ in range(count):
            self.add()

    def add(self) -> WorkerProcess:
        worker = WorkerProcess(self.settings, log_path=self.log_dir / f"w{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def __getitem__(self, index: int) -> WorkerProcess:
        return self.workers[index]

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.terminate(timeout=15)
