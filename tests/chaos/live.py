"""A real ingress process (``python -m ingress``) for hostile-input tests, driven with raw HTTP.

It runs in its own process so its memory can be measured apart from the test's, and so the tests
can talk to it synchronously (hypothesis runs plain functions, and shrinks what fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from botrelay.shared import topology
from botrelay.shared.settings import Settings
from tests.helpers import ROOT, settings_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class LiveIngress:
    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.settings.port

    def start(self, timeout: float = 20.0) -> LiveIngress:
        env = settings_env(self.settings)
        if self.settings.metrics_port is None:
            env["BOTRELAY_METRICS_PORT"] = "0"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "botrelay", "ingress"], env=env, cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT,
            )
        stop_at = time.monotonic() + timeout
        while time.monotonic() < stop_at:
            assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
            with contextlib.suppress(OSError):
                if self.request("GET", "/readyz").status == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"ingress not ready: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                          resp.read())
        finally:
            conn.close()

    def post(self, body: bytes, content_type: str | None = "application/json",
             headers: dict[str, str] | None = None) -> Answer:
        all_headers = dict(headers or {})
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        return self.request("POST", "/callback", body, all_headers)

    def raw(self, data: bytes, *, read_timeout: float = 10.0) -> bytes:
        """Send raw bytes (end them with ``Connection: close``) on a fresh connection; all the
        server answers until it closes or ``read_timeout`` passes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=read_timeout) as sock:
            sock.sendall(data)
            chunks = []
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            return b"".join(chunks)

    # --- what reached the broker --------------------------------------------------------------

    def published(self) -> int:
        """Messages waiting in the inbound queue (nothing consumes it in these tests)."""
        return asyncio.run(_queue_count(self.settings))

    def drain(self) -> list[bytes]:
        return asyncio.run(_drain(self.settings))

    def delete_topology(self) -> None:
        asyncio.run(_delete(self.settings))


def inbound_queues(settings: Settings) -> list[str]:
    """Every queue callbacks wait in for a worker (all but the dead-letter and retry queues)."""
    side = {topology.dead_queue(settings.prefix)}
    side.update(topology.retry_queue(settings.prefix, d) for d in settings.retry_delays)
    return [name for name in topology.all_queue_names(settings) if name not in side]


async def _queue_count(settings: Settings) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    total = 0
    async with connection:
        channel = await connection.channel()
        for name in inbound_queues(settings):
            queue = await channel.declare_queue(name, passive=True)
            total += int(queue.declaration_result.message_count or 0)
    return total


async def _drain(settings: Settings) -> list[bytes]:
    bodies: list[bytes] = []
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in inbound_queues(settings):
            queue = await channel.declare_queue(name, passive=True)
            waiting = int(queue.declaration_result.message_count or 0)
            if not waiting:
                continue
            # Consume rather than basic.get: single-active-consumer queues refuse basic.get.
            async with queue.iterator() as messages:
                async for message in messages:
                    bodies.append(message.body)
                    await message.ack()
                    waiting -= 1
                    if not waiting:
                        break
    return bodies


async def _delete(settings: Settings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        with contextlib.suppress(Exception):
            await topology.delete(channel, settings)
