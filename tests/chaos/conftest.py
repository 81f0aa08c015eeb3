"""Fault tests: a TCP proxy per service, and the figures table printed at the end of the run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.chaos.report import ROWS, table
from tests.chaos.tcp_proxy import TCPProxy


def _proxied(url: str, port: int) -> str:
    parsed = urlparse(url)
    netloc = parsed.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return parsed._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host).geturl()


@pytest.fixture
async def amqp_proxy(amqp_url: str) -> AsyncIterator[tuple[TCPProxy, str]]:
    """A proxy in front of RabbitMQ and the AMQP URL that goes through it."""
    parsed = urlparse(amqp_url)
    async with TCPProxy(parsed.hostname or "127.0.0.1", parsed.port or 5672) as proxy:
        yield proxy, _proxied(amqp_url, proxy.port)


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[tuple[TCPProxy, str]]:
    """A proxy in front of Redis and the Redis URL that goes through it."""
    parsed = urlparse(redis_url)
    async with TCPProxy(parsed.hostname or "127.0.0.1", parsed.port or 6379) as proxy:
        yield proxy, _proxied(redis_url, proxy.port)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    terminalreporter.section("botrelay faults and hostile input")
    for line in table(ROWS):
        terminalreporter.write_line(line)
    lost = sum(r.lost for r in ROWS)
    duplicated = sum(r.duplicated for r in ROWS)
    terminalreporter.write_line(f"total: {lost} lost, {duplicated} duplicated")
