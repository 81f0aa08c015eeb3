"""A real 3-node RabbitMQ cluster and a Redis primary + replica + 3 sentinels, on 127.0.0.1.

They run beside the services the other tests use (RabbitMQ on 5672, Redis on 6379) and never
touch them: every node has its own name, ports, data and log directories, config file, and a
``HOME`` holding its own Erlang cookie (the same cookie for the 3 nodes, so they can cluster).
RabbitMQ is Debian's, started from ``/usr/lib/rabbitmq/bin`` directly, not through the service
manager, so nothing system-wide changes. Everything lives in one temporary directory that is
removed at the end.

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

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
COOKIE = "botrelaytestclustercookie"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> int:
    """A port P with P and P + 10000 free: RabbitMQ's CLI tools use dist port + 10000 up."""
    for _ in range(200):
        port = free_port()
        if port + 10_000 < 65_000 and _free(port + 10_000):
            return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_port(port: int, timeout: float) -> None:
    stop_at = time.monotonic() + timeout
    while time.monotonic() < stop_at:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class RabbitNode:
    name: str  # e.g. brc1@localhost
    port: int  # AMQP
    dist_port: int
    base: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.base / "node.pid"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(self.base / "home"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            # The system node's env file names it rabbit@localhost; ours must not read it.
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            # No plugins: the management plugin would want port 15672.
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        return env

    def write_config(self, peers: list[str]) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        cookie = self.base / "home" / ".erlang.cookie"
        cookie.write_text(COOKIE)
        cookie.chmod(0o400)
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.port}",
            "distribution.listener.interface = 127.0.0.1",
            f"distribution.listener.port_range.min = {self.dist_port}",
            f"distribution.listener.port_range.max = {self.dist_port}",
            "cluster_formation.peer_discovery_backend = classic_config",
            *(f"cluster_formation.classic_config.nodes.{i} = {peer}"
              for i, peer in enumerate(peers, 1)),
            # guest may log in from 127.0.0.1 only, which is where the tests are.
            "loopback_users.guest = true",
            "log.console = false",
            "log.file.level = warning",
            "vm_memory_high_watermark.absolute = 400MB",
            "disk_free_limit.absolute = 50MB",
        ]
        (self.base / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "advanced.config").write_text("[].\n")

    def start(self) -> None:
        log = open(self.base / "stdout.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")], env=self.env(), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.name, *args], env=self.env(),
            capture_output=True, timeout=timeout, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: "
                               f"{result.stdout.decode()} {result.stderr.decode()}")
        return result.stdout.decode()

    def wait(self, timeout: float = 90.0) -> None:
        self.ctl("wait", str(self.pid_file), "--timeout", str(int(timeout)), timeout=timeout + 5)
        _wait_port(self.port, timeout)

    def beam_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def sigkill(self) -> None:
        """Kill the Erlang VM outright, as a crashed machine would stop."""
        pid = self.beam_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    @property
    def alive(self) -> bool:
        pid = self.beam_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        if self.alive:
            with contextlib.suppress(Exception):
                self.ctl("stop", timeout=30)
        self.sigkill()


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
            node.stop()


def start_rabbit_cluster(size: int = 3, timeout: float = 120.0) -> RabbitCluster:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        pytest.skip("RabbitMQ is not installed under /usr/lib/rabbitmq (apt install "
                    "rabbitmq-server) and apt is unavailable here")
    root = Path(tempfile.mkdtemp(prefix="botrelay-rmq-"))
    tag = os.urandom(3).hex()
    nodes = [RabbitNode(f"brc{i}x{tag}@localhost", free_port(), free_port_pair(), root / f"n{i}")
             for i in range(1, size + 1)]
    peers = [n.name for n in nodes]
    cluster = RabbitCluster(nodes, root)
    started = time.monotonic()
    try:
        for node in nodes:
            node.write_config(peers)
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


def _redis_server(port: int, base: Path, *extra: str) -> RedisProcess:
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
    primary = _redis_server(primary_port, root / "primary")
    # A replica refuses writes; the scripts only ever run on the primary Sentinel names.
    replica = _redis_server(replica_port, root / "replica",
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
