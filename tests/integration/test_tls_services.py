"""TLS to the broker and to Redis, end to end: ``amqps://`` in ``BOTRELAY_AMQP_URL`` and
``rediss://`` in ``BOTRELAY_REDIS_URL``.

A certificate authority no system trusts signs a certificate for 127.0.0.1; a RabbitMQ node of
the test's own (``tests/rabbit_node.py``) serves it on an AMQPS listener beside its plain one,
and a redis-server of the test's own serves it on a TLS port with its plain port turned off. An
ingress and a worker, as child processes, trust the authority through ``SSL_CERT_FILE`` only
(the default SSL context of both aio-pika and redis-py reads it). Callbacks go through them and
the servers are asked what the connections were: every one TLS, none on the plain listener.

And the other way round: a worker that does not trust the authority refuses the connection,
logs why (the certificate failed verification), and sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from botrelay.shared.fake_cometchat import RunningFake
from botrelay.shared.settings import Settings
from tests.helpers import WorkerProcess, post_all, reply_counts, text_callback, wait_for
from tests.integration.processes import IngressProcess, free_port, start_worker, terminate_worker
from tests.integration.tls_servers import Authority, installed, make_authority, stop, wait_listening
from tests.rabbit_node import RabbitNode, TlsFiles, rabbit_node

pytestmark = pytest.mark.integration

CONVERSATIONS = 5
PER_CONVERSATION = 10
# How long a worker that does not trust the CA has to say so: its first attempt fails at once.
REFUSAL_WAIT = 15.0
# The environment variables through which OpenSSL finds CAs beyond the system's.
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")


class TlsRedis:
    """redis-server on a TLS port of 127.0.0.1, no plain port, nothing written to disk."""

    def __init__(self, folder: Path, authority: Authority) -> None:
        self.binary = installed("redis-server", "redis-server")
        self.cli_binary = installed("redis-cli", "redis-tools")
        self.folder = folder
        self.authority = authority
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def start(self) -> TlsRedis:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "redis.log"
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", "0",
             "--tls-port", str(self.port),
             "--tls-cert-file", str(self.authority.cert),
             "--tls-key-file", str(self.authority.key),
             "--tls-ca-cert-file", str(self.authority.ca),
             # Server authentication only, as for the broker: clients show no certificate.
             "--tls-auth-clients", "no",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder),
             "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.process, log)
        assert self.cli("PING") == "PONG"
        return self

    def cli(self, *args: str) -> str:
        """A command sent over TLS, verifying the server against the authority."""
        result = subprocess.run(
            [self.cli_binary, "--tls", "--cacert", str(self.authority.ca), "-h", "127.0.0.1",
             "-p", str(self.port), *args],
            capture_output=True, timeout=10, check=True)
        return result.stdout.decode().strip()

    def clients(self) -> list[dict[str, str]]:
        """``CLIENT LIST``, one dict per client, without the redis-cli asking."""
        rows = [dict(field.split("=", 1) for field in line.split() if "=" in field)
                for line in self.cli("CLIENT", "LIST").splitlines()]
        return [row for row in rows if row.get("cmd") != "client|list"]

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


@dataclass(frozen=True)
class TlsServices:
    folder: Path  # everything of the module's: the CA, Redis's files, the processes' logs
    authority: Authority
    node: RabbitNode
    redis: TlsRedis

    @property
    def trust(self) -> dict[str, str]:
        """What a child process needs in its environment to trust the servers."""
        return {"SSL_CERT_FILE": str(self.authority.ca)}

    def broker_connections(self) -> list[dict[str, Any]]:
        """Every AMQP connection the node has, as ``rabbitmqctl list_connections`` tells."""
        out = self.node.ctl("list_connections", "--formatter", "json", "port", "ssl",
                            "ssl_protocol", "client_properties")
        rows: list[dict[str, Any]] = json.loads(out)
        for row in rows:
            # client_properties is a list of [key, type, value]; the process names itself there.
            names = [v for k, _, v in row.pop("client_properties") if k == "connection_name"]
            row["name"] = names[0] if names else ""
        return rows


@pytest.fixture(scope="module")
def tls_services() -> Iterator[TlsServices]:
    """The CA, the node and redis-server, started once for the module and deleted after."""
    folder = Path(tempfile.mkdtemp(prefix="botrelay-tls-"))
    try:
        authority = make_authority(folder / "ca")
        redis = TlsRedis(folder / "redis", authority).start()
        try:
            with rabbit_node(tls=TlsFiles(authority.ca, authority.cert, authority.key)) as node:
                yield TlsServices(folder, authority, node, redis)
        finally:
            redis.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def log_dir(tls_services: TlsServices, request: pytest.FixtureRequest) -> Path:
    """Where this test's processes log: in the module's folder, deleted with it."""
    path = tls_services.folder / "logs" / re.sub(r"\W+", "-", request.node.name)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def untrusting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes inherit no CA of the test runner's (settings_env copies os.environ)."""
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _docs() -> list[dict[str, Any]]:
    """The conversations' messages interleaved: conversation c's m-th message is "tls c m"."""
    return [text_callback(f"{7_000_000 + c * 1000 + m}", f"tls {c} {m}", sender=f"tls-user-{c}")
            for m in range(PER_CONVERSATION) for c in range(CONVERSATIONS)]


def _order(fake: RunningFake) -> dict[int, list[int]]:
    """Each conversation's message numbers in the order their replies reached the API."""
    order: dict[int, list[int]] = defaultdict(list)
    for reply in fake.fake.replies:
        _, c, m = reply.body["data"]["text"].removeprefix("echo: ").split()
        order[int(c)].append(int(m))
    return order


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _refusal(log: str) -> str:
    """The first line of ``log`` that names the certificate error."""
    return next((line for line in log.splitlines() if "certificate verify failed" in line), "")


@contextlib.asynccontextmanager
async def _ingress(settings: Settings, log: Path, env: dict[str, str]
                   ) -> AsyncIterator[IngressProcess]:
    ingress = IngressProcess(settings, free_port(), log, extra_env=env)
    try:
        yield await ingress.start()
    finally:
        await ingress.terminate(timeout=15)


async def test_callbacks_over_amqps_and_rediss_get_one_reply_each_in_order(
        tls_services: TlsServices, make_settings: Callable[..., Settings],
        fake_api: RunningFake, log_dir: Path, untrusting: None) -> None:
    services = tls_services
    settings = make_settings(amqp_url=services.node.ssl_url, redis_url=services.redis.url)
    docs = _docs()
    async with _ingress(settings, log_dir / "ingress.log", services.trust) as ingress:
        worker = await start_worker(settings, log_dir / "worker.log", extra_env=services.trust)
        try:
            # One at a time: the posting order is each conversation's order.
            statuses = await post_all(f"{ingress.url}/callback", docs, concurrency=1)
            assert await wait_for(lambda: len(fake_api.fake.replies) >= len(docs), timeout=30)
            await asyncio.sleep(0.5)  # a duplicate would show up by now
            connections = services.broker_connections()
            redis_clients = services.redis.clients()
        finally:
            await terminate_worker(worker, timeout=15)

    assert all(200 <= s < 300 for s in statuses), statuses
    expected = {f"echo: {d['data']['data']['text']}": 1 for d in docs}
    assert dict(reply_counts(fake_api.fake)) == expected
    assert _order(fake_api) == {c: list(range(PER_CONVERSATION)) for c in range(CONVERSATIONS)}

    # The broker's view: the ingress and the worker are connected, every connection of the node
    # is TLS and on the AMQPS listener; none came in on the plain one.
    assert services.node.ssl is not None
    names = {c["name"] for c in connections}
    assert {"botrelay-ingress", "botrelay-worker"} <= names, connections
    assert all(c["ssl"] is True and c["port"] == services.node.ssl.port for c in connections), \
        connections
    assert not [c for c in connections if c["port"] == services.node.port]
    print(f"\nbroker connections: {[(c['name'], c['ssl_protocol']) for c in connections]}")
    # Redis's view: the worker's clients (dedup, liveness, leases) came in on the TLS port, the
    # only port it has.
    assert redis_clients, "the worker had no Redis connection"
    assert {c["laddr"] for c in redis_clients} == {f"127.0.0.1:{services.redis.port}"}
    assert services.redis.cli("CONFIG", "GET", "port").split() == ["port", "0"]


@pytest.mark.parametrize("store", ["redis", "memory"])
async def test_a_worker_that_does_not_trust_the_ca_refuses_and_sends_nothing(
        store: str, tls_services: TlsServices, make_settings: Callable[..., Settings],
        fake_api: RunningFake, log_dir: Path, untrusting: None) -> None:
    """With Redis the worker meets Redis's certificate first (its liveness key) and exits; with
    the in-memory dedup store it meets only the broker's and keeps retrying, as it does for a
    broker that is down. Either way it says why, and gets no further."""
    services = tls_services
    settings = make_settings(amqp_url=services.node.ssl_url,
                             redis_url=services.redis.url if store == "redis" else None)
    docs = [text_callback(f"{8_000_000 + i}", f"untrusted {i}") for i in range(5)]
    # Work for the worker to take: queued through an ingress that does trust the CA.
    async with _ingress(settings, log_dir / "ingress.log", services.trust) as ingress:
        assert set(await post_all(f"{ingress.url}/callback", docs)) == {200}
        log = log_dir / "worker.log"
        worker = WorkerProcess(settings, log_path=log)
        try:
            refused = await wait_for(
                lambda: "certificate verify failed" in _log(log)
                and (store == "memory" or worker.proc.poll() is not None),
                timeout=REFUSAL_WAIT, interval=0.1)
            await asyncio.sleep(1.0)  # time enough for a reply, had it connected somehow
            connections = services.broker_connections()
            redis_clients = services.redis.clients()
            exit_code = worker.proc.poll()
        finally:
            worker.terminate(timeout=15)
    assert refused, f"no certificate error in the worker's log:\n{_log(log)[-3000:]}"
    print(f"\nthe worker's refusal: {_refusal(_log(log))}")
    assert exit_code == (1 if store == "redis" else None)
    assert fake_api.fake.replies == []
    # It did not get in some other way: only the ingress is connected to the broker, over TLS,
    # and Redis has no client.
    assert [c["name"] for c in connections] == ["botrelay-ingress"], connections
    assert all(c["ssl"] is True for c in connections)
    assert redis_clients == []
