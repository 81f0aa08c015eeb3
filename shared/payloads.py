"""CometChat callbacks parsed into one model, for both payload formats.

- Bot callbacks: ``{"trigger": "after_message", "data": {<message>}, "appId", "region", "bot"}``.
- Webhooks: ``{"trigger": "message_sent", "data": {"message": {<message>}}, "appId", "region",
  "webhook"}``.

The ingress uses ``parse_callback`` to validate and route; the worker uses it again to build the
``Message`` a handler sees. Parsing is strict about the fields botrelay relies on (a 400 names the
field) and lenient about everything else (CometChat adds fields over time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared.errors import PayloadError

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


def _conversation(sender: str, receiver: str, receiver_type: str) -> str:
    if receiver_type == "group":
        return f"group_{receiver}"
    low, high = sorted((sender, receiver))
    return f"{low}_user_{high}"


def _mentions(data: dict[str, Any], text: str | None) -> tuple[str, ...]:
    found: list[str] = []
    mentioned = data.get("mentions")
    if isinstance(mentioned, dict):
        found.extend(str(uid) for uid in mentioned)
    if text:
        found.extend(m for m in _MENTION.findall(text) if m not in found)
    return tuple(dict.fromkeys(found))


def _message(doc: dict[str, Any], raw: dict[str, Any], trigger: str, app_id: str,
             bot: str | None, webhook: str | None) -> Message:
    where = "data.message." if "message" in raw["data"] else "data."
    msg_id = _str(doc, "id", where)
    sender = _str(doc, "sender", where)
    receiver = _str(doc, "receiver", where)
    receiver_type = _str(doc, "receiverType", where)
    assert msg_id and sender and receiver and receiver_type  # required=True guarantees it
    if receiver_type not in RECEIVER_TYPES:
        raise PayloadError(
            "invalid callback", f"field '{where}receiverType' must be 'user' or 'group'"
        )
    inner = doc.get("data")
    if inner is None:
        inner = {}
    elif not isinstance(inner, dict):
        raise PayloadError("invalid callback", f"field '{where}data' must be an object")
    text = inner.get("text")
    if text is not None and not isinstance(text, str):
        raise PayloadError("invalid callback", f"field '{where}data.text' must be a string")
    conversation = doc.get("conversationId")
    if not isinstance(conversation, str) or not conversation:
        conversation = _conversation(sender, receiver, receiver_type)
    sent_at = doc.get("sentAt")
    region = raw.get("region")
    return Message(
        id=msg_id,
        trigger=trigger,
        app_id=app_id,
        region=region if isinstance(region, str) else None,
        bot=bot,
        webhook=webhook,
        sender=sender,
        receiver=receiver,
        receiver_type=receiver_type,
        conversation_id=conversation,
        category=str(doc.get("category") or "message"),
        type=str(doc.get("type") or "text"),
        text=text,
        data=inner,
        mentions=_mentions(inner, text),
        sent_at=sent_at if isinstance(sent_at, int) and not isinstance(sent_at, bool) else None,
        raw=raw,
    )


def _action_subject(doc: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """For an edit or delete delivered as an action message: the action's id (each edit is its
    own event) and the message it is about (``data.entities.on.entity``) laid over the action,
    so sender, receiver and conversation stay known when the entity omits them."""
    inner = doc.get("data")
    entities = inner.get("entities") if isinstance(inner, dict) else None
    on = entities.get("on") if isinstance(entities, dict) else None
    entity = on.get("entity") if isinstance(on, dict) else None
    if doc.get("category") != "action" or not isinstance(entity, dict):
        return None, doc
    subject = {k: v for k, v in doc.items() if k != "data"}
    subject.update(entity)
    subject.setdefault("data", {})
    action_id = _str(doc, "id", "data.message.")
    return action_id, subject


def parse_callback(doc: Any) -> Callback:
    """Validate a decoded callback and build its ``Callback``; raises ``PayloadError``."""
    if not isinstance(doc, dict):
        raise PayloadError("invalid callback", "the body must be a JSON object")
    trigger = _str(doc, "trigger", "")
    app_id = _str(doc, "appId", "")
    bot = _str(doc, "bot", "", required=False)
    webhook = _str(doc, "webhook", "", required=False)
    assert trigger and app_id
    source = bot or webhook
    if source is None:
        raise PayloadError("invalid callback", "missing field 'bot' (or 'webhook')")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise PayloadError("invalid callback", "field 'data' must be an object")
    if trigger not in MESSAGE_TRIGGERS:
        if trigger in HANDLED_TRIGGERS:
            from shared.events import parse_event  # events build on this module's model

            return _bounded(parse_event(doc, data, trigger, app_id, bot, webhook))
        event_id = data.get("id") if isinstance(data.get("id"), str) else "-"
        return Callback(trigger, app_id, source, f"{app_id}:{source}:{trigger}:{event_id}",
                        "", None, ignore_reason=f"unhandled trigger '{trigger}'")
    inner = data.get("message", data) if bot is None else data
    if not isinstance(inner, dict):
        raise PayloadError("invalid callback", "field 'data.message' must be an object")
    event_id = None
    if trigger in _ACTION_TRIGGERS:
        event_id, inner = _action_subject(inner)
    message = _message(inner, doc, trigger, app_id, bot, webhook)
    ignore = None
    if bot is not None and message.sender == bot:
        ignore = "the bot's own message"
    key = f"{app_id}:{source}:{trigger}:{event_id or message.id}"
    if len(key.encode()) > MAX_KEY_BYTES:
        raise PayloadError("invalid callback", "'appId', 'bot' (or 'webhook') and the message "
                           f"'id' together must stay within {MAX_KEY_BYTES - 3} bytes")
    return _bounded(Callback(
        trigger=trigger,
        app_id=app_id,
        source=source,
        dedup_key=key,
        conversation_id=message.conversation_id,
        message=message,
        ignore_reason=ignore,
    ))


def _bounded(callback: Callback) -> Callback:
    if len(callback.conversation_id.encode()) > MAX_CONVERSATION_BYTES:
        raise PayloadError("invalid callback", "the conversation id (or the sender and receiver "
                           f"it is made of) is over {MAX_CONVERSATION_BYTES} bytes")
    return callback


def parse_body(body: bytes) -> Callback:
    return parse_callback(loads(body))
