"""CometChat callbacks parsed into one model, for both payload formats.

- Bot callbacks: ``{"trigger": "after_message", "data": {<message>}, "appId", "region", "bot"}``.
- Webhooks: ``{"trigger": "message_sent", "data": {"message": {<message>}}, "appId", "region",
  "webhook"}``.

The ingress uses ``parse_callback`` to validate and route; the worker uses it again to build the
``Message`` a handler sees. Parsing is strict about the fields botrelay relies on (a 400 names the
field) and lenient about everything else (CometChat adds fields over time).
"""

from __future__ import annotations

from typing import Any

from botrelay.shared.errors import PayloadError
from botrelay.shared.events import parse_event
from botrelay.shared.identity import APP_ID, APP_ID_RULE, check
from botrelay.shared.model import (
    _ACTION_TRIGGERS,
    _MENTION,
    HANDLED_TRIGGERS,
    MAX_CONVERSATION_BYTES,
    MAX_KEY_BYTES,
    MESSAGE_TRIGGERS,
    RECEIVER_TYPES,
    Callback,
    Message,
    _region,
    _str,
    _text,
    _uid,
    loads,
)


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
    msg_id = _uid(doc, "id", where)
    sender = _uid(doc, "sender", where)
    receiver = _uid(doc, "receiver", where)
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
    conversation = _text(doc, "conversationId", where)
    if not conversation:
        conversation = _conversation(sender, receiver, receiver_type)
    category = _text(doc, "category", where)
    kind = _text(doc, "type", where)
    sent_at = doc.get("sentAt")
    return Message(
        id=msg_id,
        trigger=trigger,
        app_id=app_id,
        region=_region(raw),
        bot=bot,
        webhook=webhook,
        sender=sender,
        receiver=receiver,
        receiver_type=receiver_type,
        conversation_id=conversation,
        category=category or "message",
        type=kind or "text",
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
    action_id = _uid(doc, "id", "data.message.")
    return action_id, subject


def parse_callback(doc: Any) -> Callback:
    """Validate a decoded callback and build its ``Callback``; raises ``PayloadError``."""
    if not isinstance(doc, dict):
        raise PayloadError("invalid callback", "the body must be a JSON object")
    trigger = _str(doc, "trigger", "")
    app_id = _str(doc, "appId", "")
    assert trigger and app_id
    check(APP_ID, app_id, "appId", APP_ID_RULE)
    bot = _uid(doc, "bot", "", required=False)
    webhook = _uid(doc, "webhook", "", required=False)
    _region(doc)
    source = bot or webhook
    if source is None:
        raise PayloadError("invalid callback", "missing field 'bot' (or 'webhook')")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise PayloadError("invalid callback", "field 'data' must be an object")
    if trigger not in MESSAGE_TRIGGERS:
        if trigger in HANDLED_TRIGGERS:
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
