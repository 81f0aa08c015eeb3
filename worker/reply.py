"""``Reply``: what a handler returns, and the request body it becomes.

Everything is validated before sending: a reply the API must refuse (too large, no receiver) is
a ``ReplyInvalid`` (a permanent error, straight to the DLQ) rather than a retry loop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from botrelay.shared.errors import PermanentError
from botrelay.shared.model import Message

# CometChat's published limits: a message under 65 KB, its ``data`` under 10 KB.
MAX_MESSAGE_BYTES = 65 * 1024
MAX_DATA_BYTES = 10 * 1024


class ReplyInvalid(PermanentError):
    """The handler built a reply the API would refuse."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply. Defaults: a text message to where the callback came from (group or sender).

    - ``text``: a text message (``type: text``).
    - ``custom_type`` + ``custom_data``: a custom message (``category: custom``).
    - ``media_url`` (+ ``media_type`` image/video/audio/file): a media message by URL.
    - ``metadata``: extra data carried with any of them.
    - ``receiver`` / ``receiver_type``: send somewhere else (another user or group).
    """

    text: str | None = None
    metadata: dict[str, Any] | None = None
    receiver: str | None = None
    receiver_type: str | None = None
    custom_type: str | None = None
    custom_data: dict[str, Any] | None = None
    media_url: str | None = None
    media_type: str = "image"
    media_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self, msg: Message, muid: str) -> dict[str, Any]:
        """The JSON body for ``POST /bots/{bot}/messages``."""
        receiver, receiver_type = msg.reply_receiver
        if self.receiver is not None:
            receiver = self.receiver
            receiver_type = self.receiver_type or "user"
        if receiver_type not in ("user", "group"):
            raise ReplyInvalid(f"receiver_type must be 'user' or 'group', not {receiver_type!r}")
        data: dict[str, Any]
        if self.custom_type is not None:
            category, kind = "custom", self.custom_type
            data = {"customData": self.custom_data or {}}
            if self.text is not None:
                data["text"] = self.text
        elif self.media_url is not None:
            if self.media_type not in ("image", "video", "audio", "file"):
                raise ReplyInvalid(f"media_type must be image, video, audio or file, "
                                   f"not {self.media_type!r}")
            category, kind = "message", self.media_type
            name = self.media_name or self.media_url.rsplit("/", 1)[-1] or "file"
            data = {"url": self.media_url, "attachments": [{"url": self.media_url, "name": name}]}
            if self.text is not None:
                data["text"] = self.text
        elif self.text is not None:
            if not self.text:
                raise ReplyInvalid("a text reply needs non-empty text")
            category, kind, data = "message", "text", {"text": self.text}
        else:
            raise ReplyInvalid("a reply needs text, custom_data or media_url")
        if self.metadata is not None:
            data["metadata"] = self.metadata
        body = {
            "receiver": receiver,
            "receiverType": receiver_type,
            "category": category,
            "type": kind,
            "data": data,
            "muid": muid,
            **self.extra,
            # The muid as a tag too: the reply API lists messages by tag, so a reply whose
            # earlier attempt's outcome is unknown can be looked up (``worker.reply_lookup``).
            "tags": [muid, *[t for t in self.extra.get("tags") or [] if t != muid]],
        }
        _check_size(body)
        return body


def _check_size(body: dict[str, Any]) -> None:
    data_size = len(orjson.dumps(body["data"]))
    if data_size >= MAX_DATA_BYTES:
        raise ReplyInvalid(f"reply data is {data_size} bytes; CometChat's limit is 10 KB")
    size = len(orjson.dumps(body))
    if size >= MAX_MESSAGE_BYTES:
        raise ReplyInvalid(f"reply is {size} bytes; CometChat's limit is 65 KB")


def muid(dedup_key: str, index: int) -> str:
    """A deterministic id for reply ``index`` of a callback: a resent reply carries the same."""
    digest = hashlib.blake2b(f"{dedup_key}#{index}".encode(), digest_size=12).hexdigest()
    return f"br-{digest}"


HandlerResult = None | str | Reply | list[str | Reply]


def normalise(result: object) -> list[Reply]:
    """A handler's return value as a list of replies; anything else is the bot author's bug."""
    if result is None:
        return []
    if isinstance(result, str):
        return [Reply(text=result)]
    if isinstance(result, Reply):
        return [result]
    if isinstance(result, list | tuple):
        out: list[Reply] = []
        for item in result:
            out.extend(normalise(item))
        return out
    raise ReplyInvalid(f"a handler returned {type(result).__name__}; expected None, str, "
                       "Reply or a list of them")


def describe_reply(body: dict[str, Any]) -> str:
    """One readable line for a reply request body."""
    data = body.get("data") or {}
    text = data.get("text")
    if body.get("category") == "custom":
        custom = orjson.dumps(data.get("customData") or {}).decode()
        content = f"[custom {body.get('type')}] {custom}"
        if text:
            content = f"{content} {text}"
    elif body.get("type") in ("image", "video", "audio", "file"):
        content = f"[{body['type']} {data.get('url', '')}]"
        if text:
            content = f"{content} {text}"
    else:
        content = str(text)
    if data.get("metadata"):
        content = f"{content} (metadata {orjson.dumps(data['metadata']).decode()})"
    return f"reply -> {body.get('receiverType')} {body.get('receiver')}: {content}"
