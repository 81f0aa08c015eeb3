"""What the ingress keeps for its lifetime, stored on the app under a typed key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from botrelay.ingress.access import CallbackAccess
from botrelay.ingress.spool import Spool
from botrelay.shared.metrics import IngressMetrics
from botrelay.shared.settings import Settings
from botrelay.shared.transport import Broker


@dataclass
class IngressState:
    settings: Settings
    broker: Broker
    metrics: IngressMetrics
    access: CallbackAccess
    spool: Spool | None = None  # with BOTRELAY_SPOOL_DIR: opened by the app's cleanup_ctx
    closing: bool = False


STATE: web.AppKey[IngressState] = web.AppKey("botrelay_state", IngressState)
