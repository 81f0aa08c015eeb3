"""Replies through a real HTTPS server: nginx (Debian's nginx-light) with a certificate from a CA
this module makes, trusted through ``SSL_CERT_FILE``, in front of the fake reply API.

nginx keeps a connection for at most 3 requests and 1 s of idling, and answers in each of the
three HTTP/1.1 framings: Content-Length, chunked, and delimited by closing the connection.
Callbacks come in bursts with idle gaps longer than the keep-alive timeout, so connections end
both ways while replies are sent; every callback must get exactly one reply, with no request
sent twice.
"""

from __future__ import annotations

import asyncio

import pytest

from botrelay.shared.fake_cometchat import RunningFake
from botrelay.worker.http_client import HttpClient, HttpConnectionError
from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.helpers import generated, post_all, reply_counts, wait_for
from tests.integration.tls_servers import FRAMINGS, Authority, Nginx

pytestmark = pytest.mark.integration

BURSTS, PER_BURST, GAP = 4, 15, 1.4  # GAP > nginx's keepalive_timeout 1s


@pytest.fixture
def trust(monkeypatch: pytest.MonkeyPatch, authority: Authority) -> None:
    """The test CA is trusted the standard way, for the clients made from now on."""
    monkeypatch.setenv("SSL_CERT_FILE", str(authority.ca))


def _url(nginx: Nginx, port: int, framing: str, fake: RunningFake) -> str:
    return nginx.base(port, framing, fake.port).format(appId="app1") + "/bots/b1/messages"


async def test_the_private_ca_is_trusted_only_through_ssl_cert_file(
        nginx: Nginx, fake_api: RunningFake, monkeypatch: pytest.MonkeyPatch,
        authority: Authority) -> None:
    url = _url(nginx, nginx.http1_port, "length", fake_api)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    strict = HttpClient()
    with pytest.raises(HttpConnectionError, match="certificate"):
        await strict.post(url, b'{"receiver":"u1"}')
    await strict.close()
    monkeypatch.setenv("SSL_CERT_FILE", str(authority.ca))
    trusting = HttpClient()
    assert (await trusting.post(url, b'{"receiver":"u1"}')).status == 200
    await trusting.close()
    assert fake_api.fake.requests == 1  # the refused handshake never reached the API


async def test_http2_is_used_when_the_server_offers_it(nginx: Nginx, fake_api: RunningFake,
                                                       trust: None) -> None:
    client = HttpClient()
    offered = await client.post(_url(nginx, nginx.http2_port, "length", fake_api), b"{}")
    not_offered = await client.post(_url(nginx, nginx.http1_port, "length", fake_api), b"{}")
    await client.close()
    assert (offered.version, not_offered.version) == ("HTTP/2.0", "HTTP/1.1")


@pytest.mark.parametrize("framing", [*FRAMINGS, "http2"])
async def test_bursts_through_nginx_get_exactly_one_reply_each(
        nginx: Nginx, fake_api: RunningFake, make_settings, start_ingress, trust: None,
        framing: str) -> None:
    port = nginx.http2_port if framing == "http2" else nginx.http1_port
    base = nginx.base(port, "length" if framing == "http2" else framing, fake_api.port)
    settings = make_settings(cometchat_api_base=base, reply_timeout=2.0, reply_budget=2.5)
    ingress = await start_ingress(settings)
    docs = generated(BURSTS * PER_BURST, start=40_000)
    expected = [f"echo: {d['data']['data']['text']}" for d in docs]
    async with Worker(settings, bot) as worker:
        for burst in range(BURSTS):
            part = slice(burst * PER_BURST, (burst + 1) * PER_BURST)
            assert set(await post_all(f"{ingress.url}/callback", docs[part])) == {200}
            wanted = set(expected[part])
            await wait_for(lambda w=wanted: w <= set(reply_counts(fake_api.fake)), timeout=30)
            await asyncio.sleep(GAP)  # every kept-alive connection times out meanwhile
        await asyncio.wait_for(worker.until_idle(), 30)
        errors = worker.metrics.registry.get_sample_value(
            "botrelay_reply_requests_total", {"status": "error"}) or 0
    counts = reply_counts(fake_api.fake)
    assert sorted(counts) == sorted(expected)
    assert {n for n in counts.values()} == {1}, {t: n for t, n in counts.items() if n > 1}
    assert fake_api.fake.requests == len(expected)  # no reply was even sent twice
    assert errors == 0
