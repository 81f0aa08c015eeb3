"""A local stand-in for CometChat's "send bot message" API, for trying bots, tests and benchmarks.

It records every accepted reply and can misbehave on demand:

- ``fail_rate`` + ``fail_status``: answer that status (500, 429, ...) to a random share of requests;
- ``status_for_receiver``: always answer a status for one receiver (e.g. 400);
- ``latency``: answer slowly; ``hang_first``: never answer the first N requests;
- ``rate_limit``: at most N requests per second per app (path prefix), else 429 with
  ``Retry-After`` and ``X-RateLimit-Reset``;
- ``fail_first``: answer ``fail_status`` to the first N requests;
- ``reset_first``: reset the connection of the first N requests without answering;
- ``garbage_first``: answer the first N requests with bytes that are not HTTP;
- ``lose_answer_first``: store the first N replies, then reset the connection (the reply was
  taken but its answer is lost on the way back).

Like the real API it stores each message's ``tags`` and lists messages by tag:
``GET .../messages?tags=<tag>`` with optional ``conversationId`` and ``sender`` filters answers
``{"data": [messages]}``, the messages stored under that app whose tags hold the tag. A reply
is listed as soon as it is stored, before its answer goes back (so a resend is caught).

Control it in-process (``FakeCometChat.config``) or over HTTP: ``GET /_fake/replies``,
``POST /_fake/config`` (JSON of the fields above), ``POST /_fake/reset``.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import struct
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson
from aiohttp import web


@dataclass
class FakeConfig:
    fail_rate: float = 0.0
    fail_status: int = 500
    fail_first: int = 0
    status_for_receiver: dict[str, int] = field(default_factory=dict)
    latency: float = 0.0
    hang_first: int = 0
    rate_limit: int = 0  # requests per second per app; 0 = unlimited
    seed: int | None = None
    reset_first: int = 0
    garbage_first: int = 0
    lose_answer_first: int = 0


@dataclass
class Recorded:
    path: str
    apikey: str | None
    body: dict[str, Any]
    at: float
    agent: str = ""  # the sender's User-Agent: which worker sent it
    id: str = ""  # the message id the API gave it
    sender: str = ""  # the bot that sent it
    conversation: str = ""  # CometChat's conversationId for it

    @property
    def app(self) -> str:
        """The path before ``bots/``: it names the app (``/{appId}/v3/``)."""
        return self.path.split("bots/", 1)[0]


class FakeCometChat:
    def __init__(self, config: FakeConfig | None = None, *, echo: bool = False) -> None:
        self.config = config or FakeConfig()
        self.echo = echo  # print each reply (the CLI command)
        self.replies: list[Recorded] = []
        self.requests = 0
        self.lookups = 0  # GET .../messages requests (lookups by tag)
        self.statuses: dict[int, int] = defaultdict(int)
        self._windows: dict[str, tuple[int, int]] = {}  # app -> (second, count)
        self._rng = random.Random(self.config.seed)
        self._id = 0

    def reset(self) -> None:
        self.replies.clear()
        self.requests = 0
        self.lookups = 0
        self.statuses.clear()
        self._windows.clear()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(r"/{prefix:.*}bots/{bot}/messages", self.handle)
        app.router.add_get(r"/{prefix:.*}messages", self.list_messages)
        app.router.add_get("/_fake/replies", self.list_replies)
        app.router.add_post("/_fake/config", self.set_config)
        app.router.add_post("/_fake/reset", self.reset_handler)
        return app

    def _answer(self, status: int, code: str, message: str,
                headers: dict[str, str] | None = None) -> web.Response:
        self.statuses[status] += 1
        body = {"error": {"code": code, "message": message}}
        return web.json_response(body, status=status, headers=headers, dumps=_dumps)

    def _rate_limited(self, app_key: str) -> web.Response | None:
        limit = self.config.rate_limit
        if not limit:
            return None
        now = time.time()
        second = int(now)
        window, count = self._windows.get(app_key, (second, 0))
        if window != second:
            window, count = second, 0
        if count >= limit:
            reset = math.ceil(now) if math.ceil(now) > now else second + 1
            return self._answer(429, "ERR_TOO_MANY_REQUESTS", "rate limit exceeded", {
                "Retry-After": "1", "X-RateLimit-Reset": str(reset),
                "X-RateLimit-Limit": str(limit)})
        self._windows[app_key] = (window, count + 1)
        return None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        number = self.requests
        cfg = self.config
        if number <= cfg.hang_first:
            await asyncio.sleep(3600)
        if cfg.latency:
            await asyncio.sleep(cfg.latency)
        raw = await request.read()
        if number <= cfg.reset_first:
            return _drop(request)
        if number <= cfg.garbage_first:
            return _drop(request, b"\x00\xffHTTP/9.9 OK?\r\n\r\n<html>not an answer")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._answer(400, "ERR_BAD_REQUEST", "body is not JSON")
        if not isinstance(body, dict) or not body.get("receiver"):
            return self._answer(400, "ERR_BAD_REQUEST", "receiver is required")
        limited = self._rate_limited(request.match_info["prefix"])
        if limited is not None:
            return limited
        status = cfg.status_for_receiver.get(str(body["receiver"]))
        if status is None and (number <= cfg.fail_first or (
                cfg.fail_rate and self._rng.random() < cfg.fail_rate)):
            status = cfg.fail_status
        if status is not None:
            headers = {"Retry-After": "1"} if status == 429 else None
            return self._answer(status, f"ERR_{status}", "injected failure", headers)
        self._id += 1
        message_id = str(self._id)
        bot = request.match_info["bot"]
        receiver = str(body["receiver"])
        conversation = (f"group_{receiver}" if body.get("receiverType") == "group"
                        else "_user_".join(sorted((receiver, bot))))
        self.replies.append(Recorded(request.path, request.headers.get("apikey"), body,
                                     at=time.time(),
                                     agent=request.headers.get("User-Agent", ""),
                                     id=message_id, sender=bot, conversation=conversation))
        self.statuses[200] += 1
        if number <= cfg.lose_answer_first:
            return _drop(request)
        if self.echo:
            data = body.get("data") or {}
            print(f"reply -> {body.get('receiverType')} {body.get('receiver')}: "
                  f"{data.get('text', body.get('type'))}", flush=True)
        return web.json_response({"data": {"id": message_id, **body}}, dumps=_dumps)

    async def list_messages(self, request: web.Request) -> web.Response:
        """Messages of this app by tag, as CometChat's "list messages" answers them."""
        self.lookups += 1
        tag = request.query.get("tags")
        if not tag:
            return self._answer(400, "ERR_BAD_REQUEST", "tags is required")
        app = f"/{request.match_info['prefix']}"
        conversation = request.query.get("conversationId")
        sender = request.query.get("sender")
        found = [
            {"id": r.id, "conversationId": r.conversation, "sender": r.sender, **r.body,
             "tags": r.body.get("tags") or []}
            for r in self.replies
            if r.app == app and tag in (r.body.get("tags") or [])
            and (conversation is None or r.conversation == conversation)
            and (sender is None or r.sender == sender)]
        return web.json_response({"data": found}, dumps=_dumps)

    async def list_replies(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"replies": [asdict(r) for r in self.replies], "requests": self.requests,
             "statuses": dict(self.statuses)}, dumps=_dumps)

    async def set_config(self, request: web.Request) -> web.Response:
        doc = await request.json(loads=orjson.loads)
        known = {f.name for f in fields(FakeConfig)}
        unknown = set(doc) - known
        if unknown:
            return web.json_response({"error": f"unknown fields: {sorted(unknown)}"}, status=400)
        for name, value in doc.items():
            setattr(self.config, name, value)
        return web.json_response(asdict(self.config), dumps=_dumps)

    async def reset_handler(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"status": "reset"})


def _drop(request: web.Request, data: bytes = b"") -> web.Response:
    """Write ``data`` (if any), then reset the connection; aiohttp drops the returned answer."""
    transport = request.transport
    if transport is None:
        return web.Response(status=204)
    if data:
        transport.write(data)
        transport.close()
    else:
        sock = transport.get_extra_info("socket")
        if sock is not None:  # SO_LINGER 0: the close is a TCP reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=204)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


class RunningFake:
    """A fake served on 127.0.0.1 on a free port, for tests and benchmarks."""

    def __init__(self, fake: FakeCometChat | None = None) -> None:
        self.fake = fake or FakeCometChat()
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        """Value for ``BOTRELAY_COMETCHAT_API_BASE``."""
        return f"http://127.0.0.1:{self.port}/{{appId}}/v3"

    async def __aenter__(self) -> RunningFake:
        # A short shutdown: a test that made the fake hang must not wait a minute to stop it.
        self.runner = web.AppRunner(self.fake.app(), access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
