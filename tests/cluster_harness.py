"""A real 3-node RabbitMQ cluster and a Redis primary + replica + 3 sentinels, on 127.0.0.1.

They run beside the services the other tests use (RabbitMQ on 5672, Redis on 6379) and never
touch them: every node has its own name, ports, data and log directories, config file, and a
``HOME`` holding its own Erlang cookie (the same cookie for the 3 nodes, so they can cluster).
RabbitMQ is Debian's, started from ``/usr/lib/rabbitmq/bin`` directly, not through the service
manager (``tests/rabbit_node.RabbitNode``), so nothing system-wide changes. Everything lives in
one temporary directory that is removed at the end.

Measured on the 2-core test machine: the cluster forms in about 10-15 s and uses about 150 MB a
node; a Sentinel failover (``down-after-milliseconds 1000``) takes about 2.3 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.rabbit_node import RabbitNode, free_port, new_node

COOKIE = "botrelaytestclustercookie"


def _wait_port(port: int, timeout: float) -> None:
    stop_at = time.monotonic() + timeout
    while time.monotonic() < stop_at:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class RabbitCluster:
    nodes: list[RabbitNode]
    root: Path
    formed_in: float = 0.0

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def amqp_url(self) -> str:
        """``BOTRELAY_AMQP_URL`` for every node: a comma-separated list."""
        return ",".join(self.urls)

    def node_by_name(self, name: str) -> RabbitNode:
        return next(n for n in self.nodes if n.name == name)

    def alive_node(self) -> RabbitNode:
        return next(n for n in self.nodes if n.alive)

    def queue_leaders(self, prefix: str) -> dict[str, str]:
        """Queue name -> node leading it, for the queues under ``prefix``."""
        out = self.alive_node().ctl("list_queues", "name", "leader", "--quiet",
                                    "--formatter", "json")
        return {row["name"]: row["leader"] for row in json.loads(out)
                if str(row.get("name", "")).startswith(f"{prefix}.")}

    def memory_mb(self) -> dict[str, float]:
        """Resident memory of each node's VM, from /proc."""
        out: dict[str, float] = {}
        for node in self.nodes:
            pid = node.beam_pid()
            if pid is None:
                continue
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[node.name] = int(line.split()[1]) / 1024
        return out

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop(timeout=30)
            node.kill()


def start_rabbit_cluster(size: int = 3, timeout: float = 120.0) -> RabbitCluster:
    root = Path(tempfile.mkdtemp(prefix="botrelay-rmq-"))
    tag = os.urandom(3).hex()
    names = [f"brc{i}x{tag}@localhost" for i in range(1, size + 1)]
    nodes = [new_node(root / f"n{i}", name=name, cookie=COOKIE,
                      peers=[peer for peer in names if peer != name])
             for i, name in enumerate(names, 1)]
    cluster = RabbitCluster(nodes, root)
    started = time.monotonic()
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait(timeout)
        _wait_members(nodes[0], size, timeout - (time.monotonic() - started))
    except BaseException:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    cluster.formed_in = time.monotonic() - started
    return cluster


def _wait_members(node: RabbitNode, size: int, timeout: float) -> None:
    stop_at = time.monotonic() + max(timeout, 1.0)
    status = ""
    while time.monotonic() < stop_at:
        status = node.ctl("cluster_status", "--formatter", "json")
        running = json.loads(status).get("running_nodes", [])
        if len(running) == size:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the cluster did not form: {status}")


@dataclass
class RedisProcess:
    port: int
    base: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        log = open(self.base / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            ["redis-server", *self.args], cwd=self.base, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        _wait_port(self.port, 15)

    def sigkill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def redis_server(port: int, base: Path, *extra: str) -> RedisProcess:
    """A redis-server on 127.0.0.1:``port`` keeping nothing on disk; ``start()`` it."""
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(base), "--protected-mode", "no", *extra]
    return RedisProcess(port, base, args)


@dataclass
class SentinelGroup:
    master_name: str
    primary: RedisProcess
    replica: RedisProcess
    sentinels: list[RedisProcess]
    root: Path

    @property
    def sentinel_addresses(self) -> str:
        """``BOTRELAY_REDIS_SENTINELS``: host:port,host:port,..."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def stop(self) -> None:
        for proc in (*self.sentinels, self.replica, self.primary):
            proc.sigkill()


def start_sentinel_group(sentinels: int = 3) -> SentinelGroup:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed and apt is unavailable here")
    root = Path(tempfile.mkdtemp(prefix="botrelay-redis-"))
    name = f"brm{os.urandom(3).hex()}"
    primary_port, replica_port = free_port(), free_port()
    primary = redis_server(primary_port, root / "primary")
    # A replica refuses writes; the scripts only ever run on the primary Sentinel names.
    replica = redis_server(replica_port, root / "replica",
                            "--replicaof", "127.0.0.1", str(primary_port))
    group = SentinelGroup(name, primary, replica, [], root)
    try:
        primary.start()
        replica.start()
        for i in range(sentinels):
            port = free_port()
            base = root / f"sentinel{i}"
            base.mkdir(parents=True)
            conf = base / "sentinel.conf"
            conf.write_text("\n".join([
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {base}",
                f"sentinel monitor {name} 127.0.0.1 {primary_port} 2",
                f"sentinel down-after-milliseconds {name} 1000",
                f"sentinel failover-timeout {name} 5000",
                f"sentinel parallel-syncs {name} 1",
            ]) + "\n")
            sentinel = RedisProcess(port, base, [str(conf), "--sentinel"])
            sentinel.start()
            group.sentinels.append(sentinel)
    except BaseException:
        group.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return group


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    cluster = start_rabbit_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def sentinel_group() -> Iterator[SentinelGroup]:
    group = start_sentinel_group()
    try:
        yield group
    finally:
        group.stop()
        shutil.rmtree(group.root, ignore_errors=True)
