"""botrelay: the production backend for CometChat bots. The API bot authors write against::

    from botrelay import Bot, Message, Reply, Retry, PermanentError, BotTester, text_callback

Names are loaded on first use, so ``botrelay ingress`` (which imports this package) never loads
the worker or the testing kit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botrelay.shared.errors import PermanentError, Retry
    from botrelay.shared.model import Message
    from botrelay.worker.bot import Bot
    from botrelay.worker.reply import Reply
    from botrelay.worker.testing import BotTester, text_callback

__all__ = ["Bot", "BotTester", "Message", "PermanentError", "Reply", "Retry", "text_callback"]

_WHERE = {
    "Bot": "botrelay.worker.bot",
    "BotTester": "botrelay.worker.testing",
    "Message": "botrelay.shared.payloads",
    "PermanentError": "botrelay.shared.errors",
    "Reply": "botrelay.worker.reply",
    "Retry": "botrelay.shared.errors",
    "text_callback": "botrelay.worker.testing",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'botrelay' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value
