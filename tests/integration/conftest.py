"""Servers several integration modules share, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.tls_servers import Authority, Nginx, make_authority


@pytest.fixture(scope="session")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    """A CA of the test session's own, and a server certificate for 127.0.0.1 and localhost."""
    return make_authority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory, authority: Authority) -> Iterator[Nginx]:
    """nginx over TLS in front of the fake reply API (``tls_servers.Nginx``)."""
    server = Nginx(Path(tmp_path_factory.mktemp("nginx")), authority).start()
    try:
        yield server
    finally:
        server.stop()
