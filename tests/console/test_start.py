"""``botrelay console`` refuses to run open, and the overview names the workers and the
partitions each holds."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from botrelay.shared.errors import SettingsError
from botrelay.shared.settings import Settings
from botrelay.worker.console.app import make_console
from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.console.conftest import AUTH, PASSWORD, USER, start_console, stop_process
from tests.helpers import ROOT, settings_env
from tests.integration.processes import free_port


@pytest.mark.parametrize("credentials", [
    {},
    {"BOTRELAY_CONSOLE_USERNAME": USER},
    {"BOTRELAY_CONSOLE_USERNAME": USER, "BOTRELAY_CONSOLE_PASSWORD": ""},
    {"BOTRELAY_CONSOLE_PASSWORD": PASSWORD},
])
def test_refuses_to_start_without_a_username_and_a_password(credentials: dict[str, str]) -> None:
    env = settings_env(Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/"))
    env.update(credentials)
    done = subprocess.run([sys.executable, "-m", "botrelay", "console", "--port",
                           str(free_port())], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert "BOTRELAY_CONSOLE_USERNAME" in done.stderr and "Traceback" not in done.stderr


def test_the_app_itself_refuses_an_empty_password() -> None:
    # Settings built in code skip the env parsing that drops empty values.
    with pytest.raises(SettingsError):
        make_console(Settings(console_username=USER, console_password=""))
    make_console(Settings(console_auth="none"))  # told to: behind a proxy that authenticates


@pytest.mark.integration
async def test_auth_none_starts_open(make_settings, tmp_path: Path) -> None:
    settings = make_settings()
    port = free_port()
    console = await start_console(settings, {"BOTRELAY_CONSOLE_AUTH": "none"},
                                  ["--host", "127.0.0.1", "--port", str(port)],
                                  tmp_path / "console.log")
    try:
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{port}/") as resp:
            assert resp.status == 200
            assert "data-dead-count" in await resp.text()
    finally:
        await stop_process(console)


@pytest.mark.integration
async def test_overview_shows_each_worker_and_the_partitions_it_holds(
        make_settings, redis_url, redis_client, tmp_path: Path) -> None:
    settings = make_settings(redis_url=redis_url, partitions=4)
    port = free_port()
    env = {"BOTRELAY_CONSOLE_USERNAME": USER, "BOTRELAY_CONSOLE_PASSWORD": PASSWORD,
           "BOTRELAY_PARTITIONS": "16"}  # not the workers' 4: the broker's queues tell
    console = await start_console(settings, env, ["--host", "127.0.0.1", "--port", str(port)],
                                  tmp_path / "console.log")
    url = f"http://127.0.0.1:{port}/"
    try:
        async with Worker(settings, bot) as one, Worker(settings, bot) as two, \
                aiohttp.ClientSession(headers={"Authorization": AUTH}) as session:
            async def held() -> dict[str, list[int]]:
                async with session.get(url) as resp:
                    page = await resp.text()
                rows: dict[str, list[int]] = {}
                for chunk in page.split("<tr data-worker='")[1:]:
                    worker, _, rest = chunk.partition("'")
                    parts = rest.split("data-partitions='", 1)[1].split("'", 1)[0]
                    rows[worker] = [int(p) for p in parts.split()]
                return rows

            rows: dict[str, list[int]] = {}

            async def balanced() -> bool:
                nonlocal rows
                rows = await held()
                return sorted(len(p) for p in rows.values()) == [2, 2]

            for _ in range(100):  # the two workers settle on two partitions each
                if await balanced():
                    break
                await asyncio.sleep(0.1)
            assert set(rows) == {one.id, two.id}
            assert sorted(p for parts in rows.values() for p in parts) == [0, 1, 2, 3]
            assert one.partitions is not None
            assert sorted(rows[one.id]) == sorted(one.partitions.owned)
    finally:
        await stop_process(console)


async def test_a_broker_that_does_not_answer_is_a_clear_503() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    settings = Settings(amqp_url="amqp://guest:secret-pw@127.0.0.1:1/", console_auth="none")
    async with TestClient(TestServer(make_console(settings, sample_every=60))) as client:
        for path in ("/", "/dead", "/dead/some-id"):
            resp = await client.get(path)
            assert resp.status == 503
            body = await resp.json()
            assert body["error"] == "broker unavailable" and "secret-pw" not in str(body)
