"""How the whole pipeline (ingress, broker, worker) treats the reply API's less common answers:
a 408 is retried like a 5xx, and a 429 that names its reset time only through
``X-RateLimit-Reset`` holds the next attempt until that time."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from botrelay.worker.service import Worker
from examples.echo_bot import bot
from tests.helpers import post_all, reply_counts, text_callback, wait_for

pytestmark = pytest.mark.integration


async def test_408_from_the_reply_api_is_retried(make_settings, start_ingress, fake_api):
    fake = fake_api.fake
    fake.config.fail_first, fake.config.fail_status = 1, 408
    settings = make_settings()
    ingress = await start_ingress(settings)
    async with Worker(settings, bot) as worker:
        assert await post_all(f"{ingress.url}/callback", [text_callback("8001", "timeout")]) \
            == [200]
        assert await wait_for(lambda: len(fake.replies) == 1, timeout=15)
        await asyncio.wait_for(worker.until_idle(), 15)
    # One 408, then the same reply again and accepted: not dead-lettered as a 4xx would be.
    assert dict(fake.statuses) == {408: 1, 200: 1}
    assert reply_counts(fake) == {"echo: timeout": 1}


class ResetOnlyApi:
    """A reply API that answers its first request 429 with no ``Retry-After``, only
    ``X-RateLimit-Reset`` (Unix seconds, a whole second or two ahead), and takes the rest; it
    notes when each request arrived (wall clock, as the reset is)."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.reset_at = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.arrivals.append(time.time())
        if len(self.arrivals) == 1:
            self.reset_at = float(math.ceil(time.time()) + 1)
            return web.json_response(
                {"error": {"code": "ERR_TOO_MANY_REQUESTS", "message": "slow down"}},
                status=429, headers={"X-RateLimit-Reset": str(int(self.reset_at))})
        return web.json_response({"data": {"id": "1", **body}})


@pytest.fixture
async def reset_api() -> AsyncIterator[tuple[ResetOnlyApi, str]]:
    api = ResetOnlyApi()
    app = web.Application()
    app.router.add_post(r"/{prefix:.*}bots/{bot}/messages", api.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield api, f"http://127.0.0.1:{port}/{{appId}}/v3"
    await runner.cleanup()


# Two paths honour the reset: the reply client's own wait before its next attempt, and the
# outbound rate limiter holding the app back after a 429. Each must do it alone.
@pytest.mark.parametrize("rate_limit_app", [0.0, 20_000.0], ids=["client-alone", "with-limiter"])
async def test_x_ratelimit_reset_holds_the_next_attempt_until_the_reset(
        make_settings, start_ingress, reset_api, rate_limit_app):
    api, base = reset_api
    # The budget covers the wait, so the retry happens inline and its timing is the client's
    # own; a client ignoring the header would retry after its ~0.1 s backoff.
    settings = make_settings(cometchat_api_base=base, reply_budget=4.0, dedup_lease=15.0,
                             handler_timeout=2.0, rate_limit_app=rate_limit_app)
    ingress = await start_ingress(settings)
    async with Worker(settings, bot) as worker:
        assert await post_all(f"{ingress.url}/callback", [text_callback("8002", "later")]) \
            == [200]
        assert await wait_for(lambda: len(api.arrivals) >= 2, timeout=15)
        await asyncio.wait_for(worker.until_idle(), 15)
    assert len(api.arrivals) == 2
    waited_until = api.arrivals[1]
    print(f"429 at {api.arrivals[0]:.3f}, reset {api.reset_at:.0f}, retried at "
          f"{waited_until:.3f} ({waited_until - api.reset_at:+.3f}s after the reset)")
    # Not before the reset (a few ms of clock rounding aside), and not much after it.
    assert api.reset_at - 0.05 <= waited_until <= api.reset_at + 1.0
