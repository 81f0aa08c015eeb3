"""The ingress's OpenAPI 3.1 document, served at ``GET /openapi.json``.

It is a contract in both directions, and CI holds the ingress to it with schemathesis: every
request valid under it is accepted (2xx), and every answer is one it documents. So the schemas
are a little stricter than the parser where the parser's limits are joint ones (the dedup key
``appId:source:trigger:id`` must fit in 255 bytes): each part gets its own bound here, chosen so
that together they always fit. ``appId`` is an enum of the configured apps, which is why the
document is built per deployment.
"""

from __future__ import annotations

from typing import Any

import orjson

from botrelay.shared.identity import REGION
from botrelay.shared.model import (
    GROUP_MEMBER_TRIGGERS,
    HANDLED_TRIGGERS,
    REACTION_TRIGGERS,
)
from botrelay.shared.settings import Settings

_UID_CHARS = "^[A-Za-z0-9_-]+$"
# Per-part bounds that keep the dedup key within 255 bytes whatever the combination:
# appId (<= 64) + source (64) + trigger (26) + event id (<= 96) + 3 separators = 253.
_SOURCE_MAX = 64
_ID_MAX = 40
_UID_MAX = 40


def _uid(max_length: int = _UID_MAX) -> dict[str, Any]:
    return {"type": "string", "pattern": _UID_CHARS, "minLength": 1, "maxLength": max_length}


def _message(*, action_free: bool) -> dict[str, Any]:
    category: dict[str, Any] = {"type": "string", "maxLength": 40}
    if action_free:
        # An edit or a delete sent as an action message is read from its entity instead.
        category["not"] = {"const": "action"}
    return {
        "type": "object",
        "required": ["id", "sender", "receiver", "receiverType"],
        "properties": {
            "id": _uid(_ID_MAX),
            "sender": _uid(),
            "receiver": _uid(),
            "receiverType": {"enum": ["user", "group"]},
            "conversationId": {"type": "string", "maxLength": 200},
            "category": category,
            "type": {"type": "string", "maxLength": 40},
            "sentAt": {"type": "integer"},
            "data": {
                "type": "object",
                "properties": {"text": {"type": "string", "maxLength": 4000}},
            },
        },
    }


def _envelope(trigger: dict[str, Any], source: str, data: dict[str, Any],
              apps: list[str]) -> dict[str, Any]:
    other = "webhook" if source == "bot" else "bot"
    return {
        "type": "object",
        "required": ["trigger", "appId", source, "data"],
        "properties": {
            "trigger": trigger,
            "appId": {"enum": apps},
            source: _uid(_SOURCE_MAX),
            "region": {"type": "string", "pattern": f"^{REGION.pattern}$"},
            "data": data,
        },
        # Both present: the bot wins. Each format names only its own source.
        "not": {"required": [other]},
    }


def _callback_schemas(apps: list[str]) -> dict[str, Any]:
    webhook_messages = sorted({"message_sent", "message_edited", "message_deleted",
                               "user_mentioned"})
    reaction = {
        "type": "object",
        "required": ["reaction"],
        "properties": {"reaction": {
            "type": "object",
            "required": ["messageId", "uid"],
            "properties": {
                "messageId": _uid(20),
                "uid": _uid(),
                "id": _uid(20),
                "reaction": {"type": "string", "maxLength": 40},
                "reactedAt": {"type": "integer", "minimum": 0, "maximum": 10**13},
            },
        }},
    }
    group_member = {
        "type": "object",
        "required": ["group", "members"],
        "properties": {
            "group": {
                "type": "object",
                "required": ["guid"],
                "properties": {"guid": _uid(), "conversationId": {"type": "string",
                                                                  "maxLength": 200}},
            },
            "members": {"type": "object", "minProperties": 1, "maxProperties": 20,
                        "propertyNames": _uid()},
            "by": {"type": "object", "properties": {"uid": _uid()}},
        },
    }
    unhandled = {"type": "string", "minLength": 1, "maxLength": 40,
                 "not": {"enum": sorted(HANDLED_TRIGGERS)}}
    return {
        "BotCallback": _envelope({"const": "after_message"}, "bot",
                                 _message(action_free=False), apps),
        "WebhookMessage": _envelope(
            {"enum": webhook_messages}, "webhook",
            {"type": "object", "required": ["message"],
             "properties": {"message": _message(action_free=True)}}, apps),
        "WebhookReaction": _envelope({"enum": sorted(REACTION_TRIGGERS)}, "webhook",
                                     reaction, apps),
        "WebhookGroupMember": _envelope({"enum": sorted(GROUP_MEMBER_TRIGGERS)}, "webhook",
                                        group_member, apps),
        "UnhandledTrigger": _envelope(unhandled, "webhook", {"type": "object"}, apps),
    }


_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}
_ANSWER = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": ["queued", "ignored", "spooled"]},
        "id": {"type": "string"},
        "reason": {"type": "string"},
    },
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(description, {"$ref": "#/components/schemas/Error"})


def _status(values: list[str]) -> dict[str, Any]:
    return _json("the process state", {
        "type": "object", "required": ["status"],
        "properties": {"status": {"enum": values}},
    })


def openapi_document(settings: Settings) -> dict[str, Any]:
    apps = sorted(settings.apps_by_id()) or ["app"]
    schemas = _callback_schemas(apps)
    callback_ref = {"anyOf": [{"$ref": f"#/components/schemas/{name}"} for name in schemas]}
    auth = settings.callback_auth == "basic" and settings.auth_enabled
    callback: dict[str, Any] = {
        "summary": "A CometChat bot callback or webhook",
        "operationId": "postCallback",
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": callback_ref}}},
        "responses": {
            "200": _json("queued (published, confirmed), spooled, or ignored", _ANSWER),
            "400": _error("not JSON, or a field missing or malformed (the detail names it)"),
            "401": _error("missing or wrong Basic credentials"),
            "403": _error("the appId is not a configured app, or the credentials are not "
                          "for it"),
            "408": _error("the body did not arrive within BOTRELAY_BODY_TIMEOUT"),
            "413": _error("the body is larger than BOTRELAY_MAX_BODY"),
            "415": _error("the Content-Type is not application/json"),
            "503": _error("shutting down, or the broker is unavailable and nothing could "
                          "keep the callback; retry after Retry-After"),
        },
    }
    if auth:
        callback["security"] = [{"basic": []}]
    get_ok = {"200": _status(["ok"])}
    return {
        "openapi": "3.1.0",
        "info": {"title": "botrelay ingress", "version": "1"},
        "paths": {
            "/callback": {"post": callback},
            "/healthz": {"get": {"operationId": "healthz", "responses": get_ok}},
            "/readyz": {"get": {"operationId": "readyz", "responses": {
                "200": _status(["ready"]),
                "503": _status(["shutting down", "broker unavailable"]),
            }}},
        },
        "components": {
            "schemas": {**schemas, "Error": _ERROR},
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
        },
    }


def openapi_json(settings: Settings) -> bytes:
    return orjson.dumps(openapi_document(settings))
