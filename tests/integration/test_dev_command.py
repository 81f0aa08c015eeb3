"""``botrelay dev`` as a user runs it: a subprocess on a free port, a curl-like POST of the fixture,
and the echo reply printed on stdout within a second or two."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.helpers import FIXTURES, ROOT, text_callback

# The console script a user runs; ``python -m botrelay`` is the same entry point.
BOTRELAY = [str(Path(sys.executable).with_name("botrelay"))] \
    if Path(sys.executable).with_name("botrelay").exists() else [sys.executable, "-m", "botrelay"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DevProcess:
    def __init__(self, port: int, *extra: str, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("BOTRELAY_")}
        base.update(env or {})
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*BOTRELAY, "dev", "--host", "127.0.0.1",
             "--port", str(port), *extra],
            cwd=cwd, env=base, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)
        self._buffer = b""

    def wait_for_line(self, needle: str, timeout: float, start: int = 0) -> str | None:
        """The first stdout line from index ``start`` on containing ``needle``, reading for at
        most ``timeout`` s. Pass ``start=len(self.lines)`` to see only lines printed from now on:
        the lines already read stay in ``self.lines``."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[start:]:
                if needle in line:
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not self._selector.select(0)):
                return None
            if self._selector.select(min(left, 0.05)):
                assert self.proc.stdout is not None
                chunk = self.proc.stdout.read() or b""
                self._buffer += chunk
                *complete, self._buffer = self._buffer.split(b"\n")
                self.lines.extend(x.decode() for x in complete)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._selector.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@pytest.fixture
def dev() -> Iterator[DevProcess]:
    port = _free_port()
    process = DevProcess(port)
    process.port = port  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        process.stop()


async def _post(url: str, body: bytes) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.post(
            url, data=body, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


async def test_dev_prints_the_echo_reply_within_a_second(dev: DevProcess) -> None:
    assert dev.wait_for_line("listening on", timeout=20), dev.lines
    assert any("nothing survives a restart" in line.lower() for line in dev.lines)
    url = f"http://127.0.0.1:{dev.port}/callback"  # type: ignore[attr-defined]
    body = (FIXTURES / "bot_user_text.json").read_bytes()

    started = time.monotonic()
    status, answer = await _post(url, body)
    line = dev.wait_for_line("reply ->", timeout=2.0)
    elapsed = time.monotonic() - started

    assert status == 200 and answer["status"] == "queued"
    assert line == "reply -> user cometchat-uid-1: echo: hi"
    assert elapsed < 1.0, f"the reply took {elapsed:.2f}s"

    # The same callback again (CometChat retrying) is deduplicated: no second reply. Only the
    # lines printed after the second POST count; a second reply would be one of them.
    seen = len(dev.lines)
    status, _ = await _post(url, body)
    assert status == 200
    assert dev.wait_for_line("reply ->", timeout=1.0, start=seen) is None, dev.lines[seen:]
    assert sum("reply ->" in x for x in dev.lines) == 1
    assert dev.stop() == 0


async def test_dev_ignores_unknown_triggers_with_200(dev: DevProcess) -> None:
    assert dev.wait_for_line("listening on", timeout=20)
    url = f"http://127.0.0.1:{dev.port}/callback"  # type: ignore[attr-defined]
    body = b'{"trigger": "meeting_started", "data": {"sessionId": "s1"}, "appId": "a", ' \
           b'"webhook": "w"}'
    status, answer = await _post(url, body)
    assert status == 200 and answer["status"] == "ignored"


def test_dev_with_an_unknown_app_exits_1_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [*BOTRELAY, "dev", "--app", "no_such_module:bot"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("BOTRELAY_")},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "botrelay: unknown app 'no_such_module:bot': cannot import 'no_such_module'"]


async def test_dev_also_sends_replies_when_an_api_key_is_set(fake_api) -> None:
    port = _free_port()
    dev = DevProcess(port, env={"BOTRELAY_COMETCHAT_API_KEY": "dev-key",
                                "BOTRELAY_COMETCHAT_APP_ID": "2248348660ad9bd4",
                                "BOTRELAY_COMETCHAT_API_BASE": fake_api.base})
    try:
        assert dev.wait_for_line("listening on", timeout=20), dev.lines
        assert any("printed and sent" in line for line in dev.lines)
        body = (FIXTURES / "webhook_message_sent.json").read_bytes()
        status, _ = await _post(f"http://127.0.0.1:{port}/callback", body)
        assert status == 200
        line = await asyncio.to_thread(dev.wait_for_line, "reply ->", 5.0)
        assert line == "reply -> user cometchat-uid-1: echo: hi"
        [sent] = fake_api.fake.replies
        assert sent.apikey == "dev-key"
        assert sent.path == "/2248348660ad9bd4/v3/bots/demo_bot/messages"
        assert sent.body["data"]["text"] == "echo: hi"

        # A reply the API refuses: the dead letter is printed too.
        fake_api.fake.config.status_for_receiver = {"bad-user": 400}
        status, _ = await _post(f"http://127.0.0.1:{port}/callback",
                                orjson.dumps(text_callback("9100", "hi", sender="bad-user")))
        assert status == 200
        line = await asyncio.to_thread(dev.wait_for_line, "dead letter <-", 5.0)
        assert line == ("dead letter <- 2248348660ad9bd4:demo_bot:after_message:9100: "
                        "ReplyRejected: reply API answered 400: ERR_400 injected failure "
                        "(permanent, attempt 1)")
    finally:
        dev.stop()


async def test_a_bot_folder_with_its_own_worker_shared_and_ingress_modules_runs(
        tmp_path: Path) -> None:
    """botrelay lives under one namespace, so a user's ``worker.py``, ``shared.py`` and
    ``ingress.py`` beside the bot are the user's own: importing one of them would fail here."""
    for name in ("worker", "shared", "ingress"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\'s {name}.py')\n")
    (tmp_path / "mybot.py").write_text(
        "from botrelay import Bot, Message\n\nbot = Bot()\n\n\n@bot.on_text()\n"
        "async def shout(msg: Message) -> str:\n    return msg.text.upper()\n")
    port = _free_port()
    dev = DevProcess(port, "--app", "mybot:bot", cwd=tmp_path)
    try:
        assert await asyncio.to_thread(dev.wait_for_line, "listening on", 20), dev.lines
        status, answer = await _post(f"http://127.0.0.1:{port}/callback",
                                     (FIXTURES / "bot_user_text.json").read_bytes())
        assert status == 200 and answer["status"] == "queued"
        line = await asyncio.to_thread(dev.wait_for_line, "reply ->", 5.0)
        assert line == "reply -> user cometchat-uid-1: HI"
    finally:
        dev.stop()
