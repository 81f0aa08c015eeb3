"""The lookup by tag, against the fake reply API (which lists messages by tag like CometChat)."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from botrelay.shared.fake_cometchat import RunningFake
from botrelay.shared.settings import Settings
from botrelay.worker.reply_client import ReplyClient, UnknownApp
from botrelay.worker.reply_lookup import LookupFailed, ReplyLookup, listed, lookup_request


def _body(muid: str, receiver: str = "user-1", kind: str = "user") -> dict:
    return {"receiver": receiver, "receiverType": kind, "category": "message", "type": "text",
            "data": {"text": "hi"}, "muid": muid, "tags": [muid]}


def test_the_request_names_the_conversation_and_the_bot():
    url = "https://app1.api-us.cometchat.io/v3/bots/demo_bot/messages"
    assert lookup_request(url, _body("m1")) == (
        "https://app1.api-us.cometchat.io/v3/messages",
        {"tags": "m1", "conversationId": "demo_bot_user_user-1", "sender": "demo_bot"})
    assert lookup_request(url, _body("m2", "g1", "group"))[1]["conversationId"] == "group_g1"


def test_an_answer_that_is_no_list_is_a_failure_not_a_no():
    with pytest.raises(LookupFailed):
        listed(b"<html>", "m1")
    with pytest.raises(LookupFailed):
        listed(b'{"error": {}}', "m1")
    assert listed(orjson.dumps({"data": [{"muid": "x", "tags": ["m1"]}]}), "m1")


async def test_a_stored_reply_is_found_by_its_tag_and_only_in_its_conversation():
    async with RunningFake() as fake:
        client = ReplyClient(Settings(cometchat_api_base=fake.base, cometchat_app_id="app1",
                                      cometchat_api_key="k"))
        url = client.url("app1", "demo_bot")
        async with aiohttp.ClientSession() as session, session.post(
                url, data=orjson.dumps(_body("m1"))) as resp:
            assert resp.status == 200
        lookup = ReplyLookup(client.get)
        try:
            assert await lookup(url, _body("m1"))
            assert not await lookup(url, _body("m2"))
            assert not await lookup(url, _body("m1", receiver="user-2"))  # another conversation
            other_app = url.replace("/app1/", "/app2/")
            with pytest.raises(UnknownApp):  # the key goes to its own app's API only
                await lookup(other_app, _body("m1"))
        finally:
            await client.close()
        assert fake.fake.lookups == 3


async def test_a_non_200_answer_raises():
    async def get(url: str, params: object) -> tuple[int, bytes]:
        return 500, b"{}"

    with pytest.raises(LookupFailed):
        await ReplyLookup(get)("http://x/v3/bots/b/messages", _body("m1"))
