"""Who may post callbacks: two pairs during a rotation, app-scoped pairs, refusals to start,
the unknown-setting report, and /metrics kept off the public port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from botrelay import cli
from botrelay.ingress.app import make_app, make_metrics_app
from tests.conftest import RunningIngress
from tests.helpers import basic_auth, text_callback

pytestmark = pytest.mark.integration

APP = "2248348660ad9bd4"


async def _post(url: str, doc: dict[str, Any], auth: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/callback", data=orjson.dumps(doc), headers=headers) as resp:
        return resp.status, await resp.json()


async def test_two_pairs_are_accepted_during_a_rotation(make_settings, start_ingress) -> None:
    settings = make_settings(callback_auth="basic", callback_username="new",
                             callback_password="new-pw", callback_previous_username="old",
                             callback_previous_password="old-pw")
    ingress = await start_ingress(settings)
    assert (await _post(ingress.url, text_callback("1", "a"), basic_auth("new", "new-pw")))[0] \
        == 200
    assert (await _post(ingress.url, text_callback("2", "b"), basic_auth("old", "old-pw")))[0] \
        == 200
    for wrong in (basic_auth("old", "new-pw"), basic_auth("new", "old-pw"), None):
        status, body = await _post(ingress.url, text_callback("3", "c"), wrong)
        assert status == 401 and body["error"] == "unauthorized"


async def test_an_apps_pair_admits_only_its_own_app(make_settings, start_ingress,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "apps.toml"
    path.write_text('[[app]]\nid = "other1"\nregion = "eu"\napi_key = "k2"\n'
                    'callback = [{ username = "o", password = "o-pw" }]\n')
    from botrelay.shared.apps import load_apps_file

    settings = make_settings(callback_auth="basic", callback_username="main",
                             callback_password="main-pw", cometchat_apps_file=str(path),
                             file_apps=load_apps_file(str(path), {}))
    ingress = await start_ingress(settings)
    other = text_callback("5", "x", app_id="other1")
    assert (await _post(ingress.url, other, basic_auth("o", "o-pw")))[0] == 200
    assert (await _post(ingress.url, other, basic_auth("main", "main-pw")))[0] == 200
    status, body = await _post(ingress.url, text_callback("6", "y"), basic_auth("o", "o-pw"))
    assert status == 403 and APP in body["detail"], body
    status, body = await _post(ingress.url, text_callback("7", "z", app_id="nope9"),
                               basic_auth("main", "main-pw"))
    assert status == 403 and "nope9" in body["detail"], body


async def test_metrics_are_not_on_the_callback_port(make_settings) -> None:
    settings = make_settings()
    app = make_app(settings, wait_for_broker=True)
    ingress = await RunningIngress(app).start()
    metrics = await RunningIngress(make_metrics_app(app)).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{ingress.url}/metrics") as resp:
                assert resp.status == 404
            async with session.get(f"{metrics.url}/metrics") as resp:
                assert resp.status == 200
                assert "botrelay_callbacks_total" in await resp.text()
    finally:
        await metrics.stop()
        await ingress.stop()


@pytest.mark.parametrize(("command", "env", "named"), [
    (["ingress"], {"BOTRELAY_COMETCHAT_APP_ID": APP}, "BOTRELAY_CALLBACK_USERNAME"),
    (["ingress"], {"BOTRELAY_CALLBACK_USERNAME": "u", "BOTRELAY_CALLBACK_PASSWORD": "p"},
     "BOTRELAY_COMETCHAT_APP_ID"),
    (["worker", "--app", "examples.echo_bot:bot"], {"BOTRELAY_COMETCHAT_API_KEY": "k"},
     "BOTRELAY_COMETCHAT_APP_ID"),
    (["worker", "--app", "examples.echo_bot:bot"], {"BOTRELAY_COMETCHAT_APP_ID": APP},
     "BOTRELAY_COMETCHAT_API_KEY"),
])
def test_refusals_to_start(monkeypatch, capsys, command: list[str], env: dict[str, str],
                           named: str) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("BOTRELAY_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err


def test_an_unknown_setting_is_reported_at_start(monkeypatch, capsys) -> None:
    monkeypatch.setenv("BOTRELAY_CALLBAK_USERNAME", "typo")
    monkeypatch.setenv("BOTRELAY_COMETCHAT_APP_ID", APP)
    monkeypatch.setenv("BOTRELAY_LOG_FORMAT", "text")
    assert cli.main(["ingress"]) == 2  # and it still refuses: the typo left it without a pair
    err = capsys.readouterr().err
    assert "BOTRELAY_CALLBAK_USERNAME is not a botrelay setting (did you mean " \
           "BOTRELAY_CALLBACK_USERNAME?)" in err, err
