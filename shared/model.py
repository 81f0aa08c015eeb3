"""The callback model both payload formats parse into: triggers, ``Message``, ``Callback`` and
the field reader the parsers share. ``payloads`` (messages) and ``events`` (reactions, group
members) both build on it, so neither imports the other's parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from botrelay.shared.errors import PayloadError
from botrelay.shared.identity import ID, REGION, REGION_RULE, UID, UID_RULE, check

# Triggers whose payload carries a message, and so can be answered.
MESSAGE_TRIGGERS = frozenset(
    {
        "after_message",  # bot callbacks
        "message_sent",  # webhooks
        "message_edited",
        "message_deleted",
        "user_mentioned",
    }
)

# Webhook triggers about a message but not carrying one: the reacting user is the sender.
REACTION_TRIGGERS = frozenset({"message_reaction_added", "message_reaction_removed"})
# Webhook triggers about group membership: the group is the receiver, the actor the sender.
GROUP_MEMBER_TRIGGERS = frozenset(
    {
        "group_member_joined",
        "group_member_left",
        "group_member_added",
        "group_member_kicked",
        "group_member_banned",
        "group_member_unbanned",
        "group_member_scope_changed",
    }
)
# Every trigger a handler can subscribe to; the ingress answers any other "ignored".
HANDLED_TRIGGERS = MESSAGE_TRIGGERS | REACTION_TRIGGERS | GROUP_MEMBER_TRIGGERS
# Webhooks deliver an edit or a delete as an action message about the original message.
_ACTION_TRIGGERS = frozenset({"message_edited", "message_deleted"})

RECEIVER_TYPES = frozenset({"user", "group"})
# The dedup key travels as the AMQP message-id, a short string of at most 255 bytes.
MAX_KEY_BYTES = 255
# The conversation id travels as a message header. All headers must fit in one AMQP frame
# (128 KB): a larger one makes the broker close the publisher's connection. CometChat's own ids
# are a few hundred bytes at most.
MAX_CONVERSATION_BYTES = 1024
_MENTION = re.compile(r"<@uid:([^>\s]+)>")


@dataclass(frozen=True, slots=True)
class Message:
    """A typed view of one callback's message; ``raw`` keeps the whole payload."""

    id: str
    trigger: str
    app_id: str
    region: str | None
    bot: str | None
    webhook: str | None
    sender: str
    receiver: str
    receiver_type: str
    conversation_id: str
    category: str
    type: str
    text: str | None
    data: dict[str, Any]
    mentions: tuple[str, ...] = ()
    sent_at: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    reaction: str | None = None  # the emoji, for message_reaction_added/removed
    members: tuple[str, ...] = ()  # the users a group_member_* event is about

    @property
    def is_group(self) -> bool:
        return self.receiver_type == "group"

    @property
    def reply_receiver(self) -> tuple[str, str]:
        """Where a plain reply goes: the group in a group chat, else the sender."""
        if self.is_group:
            return self.receiver, "group"
        return self.sender, "user"

    @property
    def custom_data(self) -> dict[str, Any] | None:
        value = self.data.get("customData")
        return value if isinstance(value, dict) else None

    @property
    def attachments(self) -> list[dict[str, Any]]:
        value = self.data.get("attachments")
        return [a for a in value if isinstance(a, dict)] if isinstance(value, list) else []

    @property
    def command(self) -> str | None:
        """``"weather"`` for ``"/weather Berlin"`` (leading mentions skipped, as in
        ``"<@uid:bot> /weather Berlin"``); None when the text is not a command."""
        text = _without_mentions(self.text)
        if not text.startswith("/"):
            return None
        name = text[1:].split(maxsplit=1)[0] if len(text) > 1 else ""
        return name.split("@", 1)[0].lower() or None

    @property
    def args(self) -> str:
        """The text after the command word, mentions removed: ``"Berlin"`` for the above."""
        text = _without_mentions(self.text)
        if self.command is None:
            return text
        parts = text.split(maxsplit=1)
        return parts[1] if len(parts) > 1 else ""

    def mentions_uid(self, uid: str | None) -> bool:
        return uid is not None and uid in self.mentions


@dataclass(frozen=True, slots=True)
class Callback:
    """One parsed callback: what the ingress needs to route it and the worker to run it."""

    trigger: str
    app_id: str
    source: str  # the bot uid or the webhook id
    dedup_key: str
    conversation_id: str
    message: Message | None
    ignore_reason: str | None = None


def _without_mentions(text: str | None) -> str:
    return _MENTION.sub("", text).strip() if text else ""


def loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError("invalid JSON", str(exc)) from None


def _str(doc: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = doc.get(key)
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # CometChat documents string ids; accept numbers rather than reject
    if value is None and not required:
        return None
    if value is None:
        raise PayloadError("invalid callback", f"missing field '{where}{key}'")
    raise PayloadError("invalid callback", f"field '{where}{key}' must be a non-empty string")


def _uid(doc: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    """A UID, GUID or id field: it ends up in keys and URLs, so it must have CometChat's format."""
    value = _str(doc, key, where, required=required)
    if value is None:
        return None
    return check(UID if key != "id" else ID, value, f"{where}{key}", UID_RULE)


def _text(doc: dict[str, Any], key: str, where: str) -> str | None:
    """An optional field used as a string (category, type, ...): absent, or a string."""
    value = doc.get(key)
    if value is None or isinstance(value, str):
        return value
    raise PayloadError("invalid callback", f"field '{where}{key}' must be a string")


def _region(doc: dict[str, Any]) -> str | None:
    """The payload's region: informative only (the reply host comes from the configured app),
    but still held to its format so nothing odd travels on in the message."""
    value = _text(doc, "region", "")
    if value is None:
        return None
    return check(REGION, value, "region", REGION_RULE)
