"""Replies through an egress proxy, as many production networks require: Debian's tinyproxy on
127.0.0.1, named the standard way (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``), in front of
nginx over TLS (tests/integration/tls_servers.py) and the fake reply API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from botrelay.shared.fake_cometchat import RunningFake
from botrelay.worker.http_client import HttpClient
from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.helpers import generated, post_all, reply_counts, wait_for
from tests.integration.tls_servers import Authority, Nginx, Tinyproxy

pytestmark = pytest.mark.integration

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, nginx: Nginx) -> Iterator[Tinyproxy]:
    server = Tinyproxy(Path(tmp_path_factory.mktemp("tinyproxy")), (nginx.http1_port,)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, authority: Authority) -> pytest.MonkeyPatch:
    """No proxy variable but what the test sets (in either case); the test CA trusted."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(authority.ca))
    return monkeypatch


def _tunnels(proxy: Tinyproxy, nginx: Nginx) -> int:
    return proxy.log().count(f"CONNECT localhost:{nginx.http1_port} ")


async def test_replies_go_through_the_https_proxy_exactly_once(
        nginx: Nginx, proxy: Tinyproxy, fake_api: RunningFake, make_settings, start_ingress,
        environment: pytest.MonkeyPatch) -> None:
    environment.setenv("HTTPS_PROXY", proxy.url)
    before = _tunnels(proxy, nginx)
    settings = make_settings(cometchat_api_base=nginx.base(nginx.http1_port, "chunked",
                                                           fake_api.port))
    ingress = await start_ingress(settings)
    docs = generated(30, start=60_000)
    expected = sorted(f"echo: {d['data']['data']['text']}" for d in docs)
    async with Worker(settings, bot) as worker:
        assert set(await post_all(f"{ingress.url}/callback", docs)) == {200}
        await wait_for(lambda: set(expected) <= set(reply_counts(fake_api.fake)), timeout=30)
        await asyncio.sleep(0.5)  # let a duplicate, if any, arrive
        await asyncio.wait_for(worker.until_idle(), 30)
    counts = reply_counts(fake_api.fake)
    assert sorted(counts) == expected and set(counts.values()) == {1}
    assert fake_api.fake.requests == len(expected)
    # keepalive_requests 3: ten or more connections, every one a tunnel through the proxy.
    assert _tunnels(proxy, nginx) - before >= len(expected) // 3


async def test_no_proxy_names_hosts_reached_directly(
        nginx: Nginx, proxy: Tinyproxy, fake_api: RunningFake,
        environment: pytest.MonkeyPatch) -> None:
    environment.setenv("HTTPS_PROXY", proxy.url)
    environment.setenv("NO_PROXY", "localhost")
    before = _tunnels(proxy, nginx)
    client = HttpClient()
    url = nginx.base(nginx.http1_port, "length", fake_api.port).format(appId="a1")
    assert (await client.post(f"{url}/bots/b1/messages", b'{"receiver":"u1"}')).status == 200
    await client.close()
    assert _tunnels(proxy, nginx) == before
    assert fake_api.fake.requests == 1


async def test_plain_http_goes_through_http_proxy(
        proxy: Tinyproxy, fake_api: RunningFake, environment: pytest.MonkeyPatch) -> None:
    environment.setenv("HTTP_PROXY", proxy.url)
    client = HttpClient()
    url = fake_api.base.format(appId="a1") + "/bots/b1/messages"
    assert (await client.post(url, b'{"receiver":"u1"}')).status == 200
    await client.close()
    assert f"POST {url} HTTP/1.1" in proxy.log()
    assert fake_api.fake.requests == 1
