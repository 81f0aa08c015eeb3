"""The chaos stream's reckoning lets nothing off: a callback answered 4xx, or still 503 at the
deadline, counts as lost just like an accepted callback never replied to."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from botrelay.shared.fake_cometchat import FakeCometChat, Recorded
from tests.chaos.stream import Stream, reckon
from tests.helpers import expected_reply

REFUSED, STUCK, DROPPED = 0, 1, 2  # indexes of the stream's callbacks the ingress mistreats


class MisbehavingIngress:
    """Answers 400 to one callback, 503 forever to another, takes a third without replying,
    and "replies" to every other one by recording it on ``fake``."""

    def __init__(self, stream: Stream, fake: FakeCometChat) -> None:
        self.fake = fake
        self.ids = {doc["data"]["id"]: i for i, doc in enumerate(stream.docs)}
        self.docs = stream.docs

    async def handle(self, request: web.Request) -> web.Response:
        doc = orjson.loads(await request.read())
        index = self.ids[doc["data"]["id"]]
        if index == REFUSED:
            return web.json_response({"error": {"code": "bad"}}, status=400)
        if index == STUCK:
            return web.json_response({"error": {"code": "unavailable"}}, status=503)
        if index != DROPPED:
            receiver, kind, text = expected_reply(self.docs[index])
            self.fake.replies.append(Recorded("/", None, {
                "receiver": receiver, "receiverType": kind, "data": {"text": text}}, at=0.0))
        return web.json_response({"status": "queued"})


@pytest.fixture
async def ingress_url() -> AsyncIterator[tuple[str, list[MisbehavingIngress]]]:
    holder: list[MisbehavingIngress] = []

    async def handle(request: web.Request) -> web.Response:
        return await holder[0].handle(request)

    app = web.Application()
    app.router.add_post("/callback", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/callback", holder
    await runner.cleanup()


async def test_refused_and_stuck_callbacks_count_as_lost(ingress_url):
    url, holder = ingress_url
    fake = FakeCometChat()
    stream = Stream(url, 8, interval=0.0, deadline=1.0)
    holder.append(MisbehavingIngress(stream, fake))
    await stream.run()
    figures = reckon("reckoning", stream, fake, seconds=1.0)
    assert figures.sent == 8
    assert figures.accepted == 6  # all but the refused and the stuck one
    assert figures.answered == 5  # all accepted but the dropped one
    assert figures.extra["refused"] == 1 and figures.extra["unanswered"] == 1
    assert figures.lost == 3  # dropped + refused + stuck
    assert stream.refused == {400: 1}
    assert "1 refused 4xx, 1 unanswered" in figures.note
