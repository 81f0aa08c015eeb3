"""Ingress and worker child processes for the operations tests (signals, restarts, log scans)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from botrelay.shared.settings import Settings
from tests.helpers import ROOT, WorkerProcess, settings_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def count_lines(path: Path, needle: str) -> int:
    """How many times a process's log mentions ``needle``."""
    return path.read_text(errors="replace").count(needle) if path.exists() else 0


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> None:
    for _ in range(int(timeout / 0.05)):
        if proc.poll() is not None:
            return
        await asyncio.sleep(0.05)


async def start_worker(settings: Settings, log_path: Path,
                       extra_env: dict[str, str] | None = None,
                       app: str = "examples.echo_bot:bot") -> WorkerProcess:
    """A worker child process, returned once it consumes."""
    before = count_lines(log_path, " consuming ")
    worker = WorkerProcess(settings, app, extra_env=extra_env, log_path=log_path)
    stop_at = time.monotonic() + 30
    while time.monotonic() < stop_at:
        if count_lines(log_path, " consuming ") > before:
            return worker
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.proc.returncode}")
        await asyncio.sleep(0.05)
    worker.kill()
    raise TimeoutError("worker did not start consuming within 30s")


class IngressProcess:
    """``python -m ingress`` on ``port``; ``start`` returns once /readyz answers 200."""

    def __init__(self, settings: Settings, port: int, log_path: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.port = port
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()  # /metrics is served apart from the callback port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_base(self) -> str:
        """Where ``GET /metrics`` of this ingress is served."""
        return f"http://127.0.0.1:{self.metrics_port}"

    def spawn(self) -> subprocess.Popen[bytes]:
        env = settings_env(self.settings)
        env.update({"BOTRELAY_HOST": "127.0.0.1", "BOTRELAY_PORT": str(self.port),
                    "BOTRELAY_METRICS_PORT": str(self.metrics_port), **self.extra_env})
        with open(self.log_path, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "botrelay", "ingress"], env=env,
                                    cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    async def start(self, timeout: float = 30.0) -> IngressProcess:
        self.proc = self.spawn()
        stop_at = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < stop_at:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"ingress exited with {self.proc.returncode}")
                try:
                    async with session.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return self
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError("ingress not ready")

    async def terminate(self, timeout: float = 40.0) -> int:
        """SIGTERM, then wait (without blocking the loop) for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        await wait_exit(self.proc, timeout)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def terminate_worker(worker: WorkerProcess, timeout: float = 40.0) -> int:
    """SIGTERM a worker without blocking the event loop; its exit code."""
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
    await wait_exit(worker.proc, timeout)
    if worker.proc.poll() is None:
        worker.kill()
    return worker.proc.returncode
