"""Was this reply already stored? Asked only when an earlier attempt's outcome is unknown.

Every reply carries ``tags: [muid]`` (``worker.reply``). When the attempt that sent a reply may
have succeeded without it being recorded (its worker died holding the claim, the API's answer
was lost, a timeout after the request was written), the next attempt lists the bot's messages
in that conversation with that tag before posting again:

    GET {base}/messages?tags={muid}&conversationId={conversation}&sender={bot}

and records the reply as sent when the API holds it.

**Assumption**: CometChat stores a message's ``tags`` and lists messages by tag, with the
``conversationId`` and ``sender`` filters, as its REST API documents; a message is listed as soon
as the POST that created it was answered. A lookup that fails or answers something else counts
as "not stored": the reply is sent (a rare duplicate is the lesser harm than no answer).

The happy path never gets here: no extra request. The HTTP call is injected (``Get``): the
worker passes ``ReplyClient.get``, which sends the lookup with the key of the app whose API base
the URL is on, and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

# GET url with query parameters -> (status, body).
Get = Callable[[str, Mapping[str, str]], Awaitable[tuple[int, bytes]]]


log = logging.getLogger("botrelay.reply")

# url, reply body -> whether the reply API holds it (``ReplyLookup``, or a stand-in).
Lookup = Callable[[str, dict[str, Any]], Awaitable[bool]]


async def stored(lookup: Lookup | None, url: str, body: dict[str, Any]) -> bool | None:
    """Was ``body`` stored by an attempt whose outcome is unknown? False without a lookup;
    None when the lookup could not tell (logged): the caller decides what that costs."""
    if lookup is None:
        return False
    try:
        return await lookup(url, body)
    except Exception as exc:
        log.warning("could not look up an earlier reply: %s", type(exc).__name__)
        return None


class LookupFailed(Exception):
    """The reply API did not answer the lookup usably."""


def lookup_request(url: str, body: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The list URL and query for a reply ``body`` posted to ``url``
    (``{base}/bots/{bot}/messages``)."""
    base, _, rest = url.partition("/bots/")
    bot = rest.split("/", 1)[0]
    receiver = str(body.get("receiver", ""))
    if body.get("receiverType") == "group":
        conversation = f"group_{receiver}"
    else:  # CometChat names a 1:1 conversation by both uids, sorted
        conversation = "_user_".join(sorted((receiver, bot)))
    return f"{base}/messages", {"tags": str(body.get("muid", "")),
                                "conversationId": conversation, "sender": bot}


def listed(raw: bytes, muid: str) -> bool:
    """Does a list answer hold the message tagged (or identified) ``muid``?"""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise LookupFailed("the message list is not JSON") from exc
    items = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise LookupFailed("the message list has no data")
    for item in items:
        if not isinstance(item, dict):
            continue
        tags = item.get("tags") or (item.get("data") or {}).get("tags") or []
        if item.get("muid") == muid or (isinstance(tags, list) and muid in tags):
            return True
    return False


class ReplyLookup:
    """``await lookup(url, body)``: True when the reply API already holds ``body``."""

    def __init__(self, get: Get, close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.get = get
        self._close = close

    async def __call__(self, url: str, body: dict[str, Any]) -> bool:
        list_url, params = lookup_request(url, body)
        status, raw = await self.get(list_url, params)
        if status != 200:
            raise LookupFailed(f"message list answered {status}")
        return listed(raw, params["tags"])

    async def close(self) -> None:
        if self._close is not None:
            await self._close()
