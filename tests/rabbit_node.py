"""A RabbitMQ node of a test's own on 127.0.0.1, beside the shared one on 5672 and never
touching it: Debian's RabbitMQ started from ``/usr/lib/rabbitmq/bin`` directly (not through the
service manager), with its own node name, AMQP and distribution ports, data, log and config
files, and a ``HOME`` holding its own Erlang cookie. Everything lives under one directory that
``remove`` deletes.

    with rabbit_node() as node:          # started and ready
        url = node.url
        node.stop()                      # a clean stop (rabbitmqctl stop), data kept
        node.start(); node.wait()        # the same node again, with its queues
        node.kill()                      # SIGKILL, as a crashed machine stops

``peers`` makes the node form a cluster with others (classic config peer discovery), so a
cluster test can start several of these with the same ``cookie``.

``tls`` adds an AMQPS listener beside the plain one (``ssl_url``), serving the given certificate:

    with rabbit_node(tls=TlsFiles(ca, cert, key)) as node:
        url = node.ssl_url               # amqps://guest:guest@127.0.0.1:PORT/
"""

from __future__ import annotations

import contextlib
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
DEFAULT_COOKIE = "botrelaytestnodecookie"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_dist_port() -> int:
    """A port P with P + 10000 free too: RabbitMQ's CLI tools take dist port + 10000 and up."""
    for _ in range(200):
        port = free_port()
        if port + 10_000 < 65_000 and _free(port + 10_000):
            return port
    raise RuntimeError("no free distribution port pair on 127.0.0.1")


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the node's AMQPS listener. The node's Erlang VM reads them as the user
    running the test (it is started directly, not as the ``rabbitmq`` system user), so a key
    readable by its owner only (as openssl writes it) is enough."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class SslListener:
    port: int
    files: TlsFiles


@dataclass
class RabbitNode:
    name: str  # e.g. brn1a2b3c@localhost
    port: int  # AMQP
    dist_port: int
    base: Path
    peers: list[str] = field(default_factory=list)  # other nodes' names, to cluster with
    cookie: str = DEFAULT_COOKIE
    proc: subprocess.Popen[bytes] | None = None
    ssl: SslListener | None = None  # an AMQPS listener too, when set

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def ssl_url(self) -> str:
        if self.ssl is None:
            raise ValueError(f"{self.name} has no TLS listener")
        return f"amqps://guest:guest@127.0.0.1:{self.ssl.port}/"

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
            # The system node's env file names it rabbit@localhost: ours must not read it.
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            # No plugins: the management plugin would want the system node's port 15672.
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        return env

    def write_config(self) -> None:
        for sub in ("home", "mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        cookie = self.base / "home" / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.port}",
            "distribution.listener.interface = 127.0.0.1",
            f"distribution.listener.port_range.min = {self.dist_port}",
            f"distribution.listener.port_range.max = {self.dist_port}",
            "loopback_users.guest = true",  # guest logs in from 127.0.0.1, where the tests are
            "log.console = false",
            "log.file.level = warning",
            "vm_memory_high_watermark.absolute = 400MB",
            "disk_free_limit.absolute = 50MB",
        ]
        if self.ssl is not None:
            for path in (self.ssl.files.ca, self.ssl.files.cert, self.ssl.files.key):
                # The node would start without the listener and say so only in its log.
                if not os.access(path, os.R_OK):
                    raise PermissionError(f"the node cannot read {path}")
            lines += [
                f"listeners.ssl.default = 127.0.0.1:{self.ssl.port}",
                f"ssl_options.cacertfile = {self.ssl.files.ca}",
                f"ssl_options.certfile = {self.ssl.files.cert}",
                f"ssl_options.keyfile = {self.ssl.files.key}",
                # Server authentication only: clients show no certificate of their own.
                "ssl_options.verify = verify_none",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        if self.peers:
            lines += ["cluster_formation.peer_discovery_backend = classic_config",
                      *(f"cluster_formation.classic_config.nodes.{i} = {peer}"
                        for i, peer in enumerate([self.name, *self.peers], 1))]
        (self.base / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "advanced.config").write_text("[].\n")

    def start(self) -> None:
        """Start the node (data kept from an earlier run); ``wait`` for it to be ready."""
        self.write_config()
        with open(self.base / "stdout.log", "ab") as log:
            # A session of its own, so ``kill`` reaches the start script and the VM together.
            self.proc = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")],
                                         env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.name, *args], env=self.env(),
            capture_output=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: "
                               f"{result.stdout.decode()} {result.stderr.decode()}")
        return result.stdout.decode()

    def wait(self, timeout: float = 90.0) -> float:
        """Block until the node has booted and its AMQP port listens; the seconds it took."""
        started = time.monotonic()
        self.ctl("wait", str(self.pid_file), "--timeout", str(int(timeout)), timeout=timeout + 5)
        stop_at = started + timeout
        ports = [self.port] if self.ssl is None else [self.port, self.ssl.port]
        for port in ports:
            while not _listening(port):
                if time.monotonic() > stop_at:
                    raise TimeoutError(f"{self.name} is not listening on {port}")
                time.sleep(0.05)
        return time.monotonic() - started

    def beam_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

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

    def stop(self, timeout: float = 60.0) -> None:
        """A clean stop: ``rabbitmqctl stop`` returns once the VM has exited."""
        if self.alive:
            self.ctl("stop", str(self.pid_file), timeout=timeout)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the VM and its start script, as a crashed machine stops."""
        pid = self.beam_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)

    def remove(self) -> None:
        """Stop the node however it is, and delete its files."""
        with contextlib.suppress(Exception):
            self.stop(timeout=30)
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)


def new_node(base: Path | None = None, *, peers: list[str] | None = None,
             cookie: str = DEFAULT_COOKIE, name: str | None = None,
             tls: TlsFiles | None = None) -> RabbitNode:
    """A node on free ports under ``base`` (a new temporary directory by default); not started.
    With ``tls``, an AMQPS listener on a free port too. Skips the test when RabbitMQ is not
    installed."""
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        pytest.skip("RabbitMQ is not installed under /usr/lib/rabbitmq (apt install "
                    "rabbitmq-server) and apt is unavailable here")
    base = base or Path(tempfile.mkdtemp(prefix="botrelay-rmq-"))
    name = name or f"brn{os.urandom(3).hex()}@localhost"
    ssl = SslListener(free_port(), tls) if tls is not None else None
    return RabbitNode(name, free_port(), free_dist_port(), base, list(peers or []), cookie,
                      ssl=ssl)


@contextlib.contextmanager
def rabbit_node(timeout: float = 90.0, *, tls: TlsFiles | None = None) -> Iterator[RabbitNode]:
    """A started, ready node, stopped and deleted when the block ends, however it ends."""
    node = new_node(tls=tls)
    try:
        node.start()
        node.wait(timeout)
        yield node
    finally:
        node.remove()
