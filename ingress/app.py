"""The aiohttp application: routes, and the broker link opened and closed in ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from botrelay.ingress.access import CallbackAccess
from botrelay.ingress.callback import handle_callback, json_errors
from botrelay.ingress.forwarder import Forwarder
from botrelay.ingress.openapi import openapi_json
from botrelay.ingress.spool import Spool
from botrelay.ingress.state import STATE, IngressState
from botrelay.shared.broker import BrokerLink
from botrelay.shared.metrics import CONTENT_TYPE_LATEST, IngressMetrics, render
from botrelay.shared.settings import Settings
from botrelay.shared.transport import Broker

log = logging.getLogger("botrelay.ingress")

SPOOL_DRAIN_ON_STOP = 5.0  # seconds; thousands of callbacks a second go when the broker is up


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.closing:
        return web.json_response({"status": "shutting down"}, status=503)
    if not state.broker.ready:
        # With a spool the ingress still takes callbacks (200 "spooled") until it is full.
        if state.spool is not None and state.spool.has_room:
            return web.json_response({"status": "spooling"})
        return web.json_response({"status": "broker unavailable"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = render(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(settings: Settings, *, broker: Broker | None = None,
             wait_for_broker: bool = False, any_app: bool = False) -> web.Application:
    """The ingress app. ``broker`` lets tests and ``botrelay dev`` pass their own link;
    ``any_app`` (dev mode) admits every ``appId`` while no app is configured."""
    # client_max_size makes aiohttp stop reading a body (chunked ones too) past the limit.
    app = web.Application(client_max_size=settings.max_body, middlewares=[json_errors])
    access = CallbackAccess(settings, any_app=any_app)
    state = IngressState(
        settings=settings,
        broker=broker or BrokerLink(settings, "botrelay-ingress"),
        metrics=IngressMetrics(),
        access=access,
    )
    app[STATE] = state

    async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
        await state.broker.start(wait=wait_for_broker)
        yield
        await state.broker.close()

    async def spool_ctx(app: web.Application) -> AsyncIterator[None]:
        # After broker_ctx, so cleanup runs first here: the forwarder stops before the link
        # closes. What it has not forwarded stays on disk for the next start.
        assert settings.spool_dir is not None
        spool = Spool(settings.spool_dir, settings.spool_max_bytes, state.metrics)
        await spool.open()
        state.spool = spool
        forwarder = asyncio.create_task(
            Forwarder(spool, state.broker, settings, state.metrics).run(), name="spool-forwarder")
        yield
        # Stopping for good (a pod deleted with its emptyDir, say): a few seconds for the
        # forwarder to hand what it holds to a reachable broker before the process goes.
        if state.broker.ready and not spool.empty:
            log.info("forwarding %d spooled callbacks before stopping", spool.depth)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spool.wait_empty(), SPOOL_DRAIN_ON_STOP)
        forwarder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forwarder
        state.spool = None
        await spool.close()

    async def on_shutdown(app: web.Application) -> None:
        # Readiness goes 503 first so a load balancer stops sending; requests in flight finish.
        state.closing = True

    app.cleanup_ctx.append(broker_ctx)
    if settings.spool_dir:
        app.cleanup_ctx.append(spool_ctx)
    else:
        log.warning("BOTRELAY_SPOOL_DIR not set: while the broker is unreachable, /callback "
                    "answers 503 and the sender must post again")
    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/callback", handle_callback)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    spec = openapi_json(settings)

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=spec, content_type="application/json")

    app.router.add_get("/openapi.json", openapi)
    if not access.authenticates:
        log.warning("no callback credentials: /callback accepts any caller")
    return app


def make_metrics_app(ingress: web.Application) -> web.Application:
    """``GET /metrics`` of ``ingress``, served on BOTRELAY_METRICS_PORT: never on the public
    callback port, where anyone who can post a callback could read the traffic figures."""
    app = web.Application()
    app[STATE] = ingress[STATE]
    app.router.add_get("/metrics", metrics)
    return app
