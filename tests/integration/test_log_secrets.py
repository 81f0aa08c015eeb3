"""Log scan: an ingress and a worker run at DEBUG with Basic auth and an API key set; after
traffic (good callbacks, bad credentials, failing replies) no secret is in any log line, message
text shows only at debug level, and every message line names key, trigger, conversation, attempt
and outcome."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import orjson
import pytest

from tests.helpers import basic_auth, expected_reply, generated, post_all, wait_for
from tests.integration.processes import (
    IngressProcess,
    free_port,
    start_worker,
    terminate_worker,
)

pytestmark = pytest.mark.integration

USER = "cometchat-hook"
PASSWORD = "pw-Zq81-callback-secret"
API_KEY = "apikey-7f3c9e1d2b4a6f80"
WRONG = "pw-wrong-guess-4411"
MESSAGE_FIELDS = ("key", "trigger", "conversation", "attempt", "outcome")


async def test_no_secret_in_any_log_line(make_settings, fake_api, redis_url, redis_client,
                                         tmp_path):
    fake = fake_api.fake
    fake.config.status_for_receiver = {"user-3": 400}  # permanent failures get logged
    fake.config.fail_first = 3  # and a few 500s the reply client retries
    settings = make_settings(redis_url=redis_url, callback_username=USER,
                             callback_password=PASSWORD, cometchat_api_key=API_KEY,
                             log_level="DEBUG")
    ingress_log, worker_log = tmp_path / "ingress.log", tmp_path / "worker.log"
    ingress = await IngressProcess(settings, free_port(), ingress_log).start()
    worker = await start_worker(settings, worker_log)
    docs = generated(40, users=10)
    good, wrong = basic_auth(USER, PASSWORD), basic_auth(USER, WRONG)
    try:
        assert set(await post_all(f"{ingress.url}/callback", docs, auth=good)) == {200}
        assert set(await post_all(f"{ingress.url}/callback", docs[:5], auth=wrong,
                                  retry_503=False)) == {401}
        assert set(await post_all(f"{ingress.url}/callback", docs[:5],
                                  retry_503=False)) == {401}
        headers = {"Authorization": good, "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as session, session.post(  # garbage, right creds
                f"{ingress.url}/callback", data=b'{"apikey": "x"', headers=headers) as resp:
            assert resp.status == 400
        answered = [d for d in docs if expected_reply(d)[0] != "user-3"]
        assert await wait_for(lambda: len(fake.replies) >= len(answered), timeout=30)
        await asyncio.sleep(1.0)
    finally:
        worker_code = await terminate_worker(worker)
        await ingress.terminate()
    assert worker_code == 0
    assert {r.apikey for r in fake.replies} == {API_KEY}  # the key was really in use

    secrets = {
        "callback password": PASSWORD,
        "API key": API_KEY,
        "Authorization header": good.split()[1],
        "rejected Authorization header": wrong.split()[1],
        "rejected password": WRONG,
        "credentials": base64.b64decode(good.split()[1]).decode(),
    }
    lines = [(path.name, line) for path in (ingress_log, worker_log)
             for line in path.read_text(errors="replace").splitlines()]
    assert len(lines) > 50
    for name, line in lines:
        for what, secret in secrets.items():
            assert secret not in line, f"{what} in {name}: {line}"
        assert "authorization" not in line.lower(), f"an Authorization header in {name}: {line}"

    docs_json = [orjson.loads(line) for _, line in lines if line.startswith("{")]
    texts = {d["data"]["data"]["text"] for d in docs}
    for doc in docs_json:
        if any(text in orjson.dumps(doc).decode() for text in texts):
            assert doc["level"] == "debug", doc  # message text only at debug level
    settled = [d for d in docs_json if d.get("msg") == "settled"]
    failed = [d for d in docs_json if d.get("msg", "").startswith(("dead-lettered", "retrying"))]
    assert len(settled) == len(answered) and len(failed) == len(docs) - len(answered) > 0
    for doc in settled + failed:
        assert all(doc.get(name) is not None for name in MESSAGE_FIELDS), doc
    assert {d["outcome"] for d in settled} == {"replied"}
    assert {d["outcome"] for d in failed} == {"dead_lettered"}
    assert any(d.get("text") for d in docs_json if d["level"] == "debug")
