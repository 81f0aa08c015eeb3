"""``POST /callback``: the one hot path. Each answer is in the design's table:

auth 401 -> size 413 -> content type 415 -> slow body 408 -> JSON/shape 400 -> app 403 ->
ignored 200 -> publish -> 200 / 503.
Nothing is published unless every check passed; 200 "queued" only after the broker's confirm.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aio_pika.exceptions import DeliveryError
from aiohttp import web
from aiohttp.typedefs import Handler

from botrelay.ingress.access import Owners, Verdict
from botrelay.ingress.spool import Spool, SpoolFull, SpoolUnavailable
from botrelay.ingress.state import STATE, IngressState
from botrelay.shared.broker import PUBLISH_ERRORS, BrokerUnavailable
from botrelay.shared.errors import PayloadError
from botrelay.shared.headers import ATTEMPT, CONVERSATION, RECEIVED_AT, TRIGGER
from botrelay.shared.model import Callback
from botrelay.shared.payloads import parse_body
from botrelay.shared.topology import inbound_key

# How long a sender should wait after a 503 before posting again.
RETRY_AFTER_SECONDS = "2"
_JSON = "application/json"


def _json(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(doc), content_type=_JSON, headers=headers
    )


def _reject(state: IngressState, status: int, reason: str, error: str, detail: str,
            headers: dict[str, str] | None = None) -> web.Response:
    state.metrics.callbacks.labels("rejected", reason).inc()
    return _json(status, {"error": error, "detail": detail}, headers)


def _unavailable(state: IngressState, reason: str, detail: str) -> web.Response:
    """503 with Retry-After; ``reason``: shutting_down, broker_down, timeout, queue_full or
    refused (the metric's label)."""
    state.metrics.callbacks.labels("unavailable", reason).inc()
    return _json(
        503,
        {"error": "service unavailable", "detail": detail},
        {"Retry-After": RETRY_AFTER_SECONDS},
    )


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers aiohttp makes itself (404, 405, ...) get a JSON error body like ours."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items()
                   if k.lower() not in ("content-type", "content-length")}
        return _json(exc.status, {"error": exc.reason.lower(), "detail": exc.text or ""},
                     headers)


async def handle_callback(request: web.Request) -> web.Response:
    state = request.app[STATE]
    started = time.perf_counter()
    try:
        return await _answer(request, state)
    finally:
        state.metrics.request_seconds.observe(time.perf_counter() - started)


async def _read_body(request: web.Request, state: IngressState) -> bytes | web.Response:
    """The whole body, or the answer for a body too large, too slow or cut short."""
    settings = state.settings
    try:
        if request.content.is_eof():  # the whole body came with the headers: nothing to time
            return await request.read()
        async with asyncio.timeout(settings.body_timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _reject(state, 413, "too_large", "body too large",
                       f"more than {settings.max_body} bytes")
    except TimeoutError:
        return _reject(state, 408, "timeout", "request timeout",
                       f"the body did not arrive within {settings.body_timeout:g}s",
                       {"Connection": "close"})
    except ConnectionResetError:
        return _reject(state, 400, "incomplete", "incomplete body",
                       "the client closed the connection before sending the whole body")


def _admitted(body: bytes, owners: Owners, state: IngressState) -> Callback | web.Response:
    """The parsed callback, or the answer for a malformed one (400) or one for an app this
    deployment does not serve or these credentials do not cover (403)."""
    try:
        callback = parse_body(body)
    except PayloadError as exc:
        reason = "bad_json" if exc.error == "invalid JSON" else "bad_shape"
        return _reject(state, 400, reason, exc.error, exc.detail)
    verdict = state.access.admit(callback.app_id, owners)
    if verdict is Verdict.UNKNOWN_APP:
        return _reject(state, 403, "unknown_app", "forbidden",
                       f"appId {callback.app_id!r} is not an app this deployment serves")
    if verdict is Verdict.WRONG_APP:
        return _reject(state, 403, "wrong_app", "forbidden",
                       f"these credentials are not for app {callback.app_id!r}")
    return callback


async def _answer(request: web.Request, state: IngressState) -> web.Response:
    settings = state.settings
    owners = state.access.authenticate(request.headers.get("Authorization"))
    if owners is None:
        return _reject(state, 401, "auth", "unauthorized", "missing or wrong Basic credentials",
                       {"WWW-Authenticate": 'Basic realm="botrelay", charset="UTF-8"'})
    length = request.content_length
    if length is not None and length > settings.max_body:
        return _reject(state, 413, "too_large", "body too large",
                       f"{length} bytes, the limit is {settings.max_body}")
    if request.content_type != _JSON:
        return _reject(state, 415, "content_type", "unsupported media type",
                       f"expected {_JSON}, got {request.content_type or 'nothing'}")
    body = await _read_body(request, state)
    if isinstance(body, web.Response):
        return body
    callback = _admitted(body, owners, state)
    if isinstance(callback, web.Response):
        return callback
    if callback.ignore_reason is not None:
        reason = "own_message" if callback.message is not None else "unhandled_trigger"
        state.metrics.callbacks.labels("ignored", reason).inc()
        return _json(200, {"status": "ignored", "reason": callback.ignore_reason})
    if state.closing:
        return _unavailable(state, "shutting_down", "shutting down")

    return await _publish_or_spool(state, body, callback)


async def _publish_or_spool(state: IngressState, body: bytes, callback: Callback
                            ) -> web.Response:
    """Publish with confirm: 200 "queued". With a spool, a callback the broker cannot take (or
    one arriving while older ones wait in the spool, so it stays behind them) is written to
    disk instead: 200 "spooled", only once it is on disk. A nack (queue full) is back-pressure:
    503 either way, as is a full spool (reasons spool_full, spool_error)."""
    settings, spool = state.settings, state.spool
    headers: dict[str, Any] = {
        ATTEMPT: 1,
        RECEIVED_AT: int(time.time() * 1000),
        TRIGGER: callback.trigger,
        CONVERSATION: callback.conversation_id,
    }
    if spool is not None and not spool.empty:
        return await _spool(state, spool, body, callback, headers, "backlog")
    try:
        await state.broker.publish_callback(
            body,
            inbound_key(settings, callback.conversation_id),
            message_id=callback.dedup_key,
            headers=headers,
            timeout=settings.publish_timeout,
        )
    except BrokerUnavailable:
        if spool is not None:
            return await _spool(state, spool, body, callback, headers, "broker_down")
        return _unavailable(state, "broker_down", "the message broker is not reachable")
    except TimeoutError:
        if spool is not None:
            return await _spool(state, spool, body, callback, headers, "timeout")
        return _unavailable(state, "timeout", "the message broker did not confirm in time")
    except PUBLISH_ERRORS as exc:
        # A nack is what a full inbound queue (x-overflow reject-publish) answers.
        if isinstance(exc, DeliveryError):
            return _unavailable(state, "queue_full", f"the message broker refused the message "
                                f"({type(exc).__name__})")
        if spool is not None:
            return await _spool(state, spool, body, callback, headers, "broker_down")
        return _unavailable(state, "refused",
                            f"the message broker refused the message ({type(exc).__name__})")
    state.metrics.queued.inc()
    return _json(200, {"status": "queued", "id": callback.dedup_key})


async def _spool(state: IngressState, spool: Spool, body: bytes, callback: Callback,
                 headers: dict[str, Any], reason: str) -> web.Response:
    try:
        await spool.append(body, callback.dedup_key, headers)
    except SpoolFull:
        return _unavailable(state, "spool_full",
                            "the message broker cannot take the message and the spool is full")
    except SpoolUnavailable:  # the disk failed the write; the spool logged why
        return _unavailable(state, "spool_error",
                            "the message broker cannot take the message and the spool failed")
    state.metrics.callbacks.labels("spooled", reason).inc()
    state.metrics.spooled.labels(reason).inc()
    return _json(200, {"status": "spooled", "id": callback.dedup_key})
