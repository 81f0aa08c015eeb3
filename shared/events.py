"""Webhook events that are not messages, as the same ``Message`` model handlers already know.

- Reactions (``message_reaction_added`` / ``_removed``, ``data.reaction``): ``sender`` is the user
  who reacted, ``id`` the message reacted to, ``reaction`` the emoji; a plain reply goes to the
  reacting user (the payload names no conversation).
- Group membership (``group_member_joined`` / ``left`` / ``added`` / ``kicked`` / ``banned`` /
  ``unbanned`` / ``scope_changed``; ``data.group``, ``data.members``, ``data.by``): ``receiver``
  is the group, ``sender`` who acted (``data.by``, else the member who joined or left),
  ``members`` the users it is about; a plain reply goes to the group.

Each gets an event id for the dedup key ``{appId}:{webhook}:{trigger}:{event id}``: the reaction's
id (and time), or for membership events (which carry no id) a digest of ``data``, so a webhook
resent with the same body is recognised.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from botrelay.shared.errors import PayloadError
from botrelay.shared.identity import UID, UID_RULE, check
from botrelay.shared.model import (
    GROUP_MEMBER_TRIGGERS,
    MAX_KEY_BYTES,
    REACTION_TRIGGERS,
    Callback,
    Message,
    _region,
    _uid,
)


def _object(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise PayloadError("invalid callback", f"field '{where}{key}' must be an object")
    return value


def _callback(message: Message, source: str, event_id: str) -> Callback:
    key = f"{message.app_id}:{source}:{message.trigger}:{event_id}"
    if len(key.encode()) > MAX_KEY_BYTES:
        raise PayloadError("invalid callback", "'appId', 'webhook' and the event id together "
                           f"must stay within {MAX_KEY_BYTES - 3} bytes")
    return Callback(message.trigger, message.app_id, source, key, message.conversation_id,
                    message)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _reaction(doc: dict[str, Any], data: dict[str, Any], trigger: str, app_id: str,
              bot: str | None, webhook: str | None) -> Callback:
    source = bot or webhook or ""
    reaction = _object(data, "reaction", "data.")
    message_id = _uid(reaction, "messageId", "data.reaction.")
    reacted_by = reaction.get("reactedBy")
    sender = _uid(reaction, "uid", "data.reaction.", required=False)
    if sender is None and isinstance(reacted_by, dict):
        sender = _uid(reacted_by, "uid", "data.reaction.reactedBy.")
    if sender is None:
        raise PayloadError("invalid callback", "missing field 'data.reaction.uid'")
    assert message_id
    emoji = reaction.get("reaction")
    reacted_at = _int(reaction.get("reactedAt"))
    event_id = _uid(reaction, "id", "data.reaction.", required=False) or f"{message_id}.{sender}"
    if reacted_at is not None:
        event_id = f"{event_id}@{reacted_at}"
    message = Message(
        id=message_id, trigger=trigger, app_id=app_id, region=_region(doc), bot=bot,
        webhook=webhook, sender=sender, receiver=source, receiver_type="user",
        conversation_id=f"message_{message_id}", category="reaction", type="reaction",
        text=None, data=reaction, sent_at=reacted_at, raw=doc,
        reaction=emoji if isinstance(emoji, str) else None,
    )
    return _callback(message, source, event_id)


def _group_member(doc: dict[str, Any], data: dict[str, Any], trigger: str, app_id: str,
                  bot: str | None, webhook: str | None) -> Callback:
    source = bot or webhook or ""
    group = _object(data, "group", "data.")
    guid = _uid(group, "guid", "data.group.")
    members = data.get("members")
    uids = tuple(str(uid) for uid in members) if isinstance(members, dict) else ()
    for uid in uids:
        check(UID, uid, "data.members", f"keyed by UIDs ({UID_RULE})")
    by = data.get("by")
    actor = _uid(by, "uid", "data.by.", required=False) if isinstance(by, dict) else None
    sender = actor or (uids[0] if uids else None)
    if sender is None or guid is None:
        raise PayloadError("invalid callback", "field 'data.members' must name a member")
    conversation = group.get("conversationId")
    if not isinstance(conversation, str) or not conversation:
        conversation = f"group_{guid}"
    digest = hashlib.blake2b(orjson.dumps(data, option=orjson.OPT_SORT_KEYS),
                             digest_size=10).hexdigest()
    message = Message(
        id=digest, trigger=trigger, app_id=app_id, region=_region(doc), bot=bot,
        webhook=webhook, sender=sender, receiver=guid, receiver_type="group",
        conversation_id=conversation, category="action", type="groupMember", text=None,
        data=data, sent_at=_int(group.get("updatedAt")), raw=doc, members=uids,
    )
    return _callback(message, source, digest)


def parse_event(doc: dict[str, Any], data: dict[str, Any], trigger: str, app_id: str,
                bot: str | None, webhook: str | None) -> Callback:
    """The ``Callback`` of a reaction or group-membership webhook; raises ``PayloadError``."""
    if trigger in REACTION_TRIGGERS:
        return _reaction(doc, data, trigger, app_id, bot, webhook)
    if trigger in GROUP_MEMBER_TRIGGERS:
        return _group_member(doc, data, trigger, app_id, bot, webhook)
    raise ValueError(f"not an event trigger: {trigger!r}")
