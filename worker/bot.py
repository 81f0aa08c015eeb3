"""The bot API: a ``Bot`` holds handlers registered with decorators and picks one per message.

Dispatch order: a ``/command`` handler when the text is that command, else the first other
handler (in registration order) whose filters all match. One handler runs per message.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from botrelay.shared.model import MESSAGE_TRIGGERS, Message
from botrelay.worker.reply import Reply, ReplyInvalid, normalise

Handler = Callable[[Message], Awaitable[Any]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    triggers: frozenset[str] | None = None
    category: str | None = None
    type: str | None = None
    receiver_type: str | None = None
    text_only: bool = False
    mention_only: bool = False

    def matches(self, msg: Message, bot_uid: str | None) -> bool:
        if self.triggers is not None and msg.trigger not in self.triggers:
            return False
        if self.category is not None and msg.category != self.category:
            return False
        if self.type is not None and msg.type != self.type:
            return False
        if self.receiver_type is not None and msg.receiver_type != self.receiver_type:
            return False
        if self.text_only and not (msg.text and msg.category == "message" and msg.type == "text"):
            return False
        return not self.mention_only or msg.mentions_uid(msg.bot or bot_uid)


# Triggers that carry a new message: the default for text and command handlers, so an edit or a
# delete does not make the bot answer the same text twice.
NEW_MESSAGE_TRIGGERS = frozenset({"after_message", "message_sent"})


class Bot:
    """A bot's handlers. ``uid`` is the bot's CometChat uid; needed only for webhooks, where the
    payload does not name the bot (bot callbacks carry it). With ``mention_in_groups`` the bot
    takes a group message (commands included) only when it mentions the bot."""

    def __init__(self, uid: str | None = None, *, mention_in_groups: bool = False) -> None:
        self.uid = uid
        self.mention_in_groups = mention_in_groups
        self._commands: dict[str, Handler] = {}
        self._routes: list[Route] = []

    def command(self, name: str, *aliases: str) -> Callable[[H], H]:
        """Handle text starting with ``/name`` (case-insensitive); ``msg.args`` holds the rest."""

        def register(handler: H) -> H:
            _check_async(handler)
            for word in (name, *aliases):
                self._commands[word.lstrip("/").lower()] = handler
            return handler

        return register

    def on_text(self) -> Callable[[H], H]:
        """Handle any new text message that no command took."""
        return self._add(triggers=NEW_MESSAGE_TRIGGERS, text_only=True)

    def on_mention(self) -> Callable[[H], H]:
        """Handle new messages that mention this bot (``<@uid:bot>``)."""
        return self._add(triggers=NEW_MESSAGE_TRIGGERS, mention_only=True)

    def on(
        self,
        trigger: str | list[str] | None = None,
        *,
        category: str | None = None,
        type: str | None = None,  # mirrors the payload's field name
        receiver_type: str | None = None,
    ) -> Callable[[H], H]:
        """Handle messages matching every given filter (trigger, category, type, receiver type)."""
        triggers = None
        if trigger is not None:
            triggers = frozenset([trigger] if isinstance(trigger, str) else trigger)
        return self._add(triggers=triggers, category=category, type=type,
                         receiver_type=receiver_type)

    def _add(self, **filters: Any) -> Callable[[H], H]:
        def register(handler: H) -> H:
            _check_async(handler)
            self._routes.append(Route(handler=handler, **filters))
            return handler

        return register

    def is_own(self, msg: Message) -> bool:
        """A bot never answers itself."""
        own = msg.bot or self.uid
        return own is not None and msg.sender == own

    def is_addressed(self, msg: Message) -> bool:
        """Webhooks report every 1:1 message of the app: with a ``uid``, answer only those sent
        to this bot. Bot callbacks only report the bot's own conversations."""
        if msg.trigger not in MESSAGE_TRIGGERS:
            return True
        if msg.is_group:
            return not self.mention_in_groups or msg.mentions_uid(msg.bot or self.uid)
        return msg.webhook is None or self.uid is None or msg.receiver == self.uid

    def sender_uid(self, msg: Message) -> str:
        """The bot uid replies are sent as: named by a bot callback, else ``Bot(uid=...)``, else
        the receiver of a 1:1 message (the bot it was sent to)."""
        uid = msg.bot or self.uid
        if uid is None and msg.trigger in MESSAGE_TRIGGERS and msg.receiver_type == "user":
            uid = msg.receiver
        if uid is None:
            raise ReplyInvalid(f"a reply to a '{msg.trigger}' webhook needs the bot's uid: "
                               "create the bot as Bot(uid=...)")
        return uid

    def handler_for(self, msg: Message) -> Handler | None:
        if msg.trigger in NEW_MESSAGE_TRIGGERS and msg.command is not None:
            handler = self._commands.get(msg.command)
            if handler is not None:
                return handler
        for route in self._routes:
            if route.matches(msg, self.uid):
                return route.handler
        return None

    async def dispatch(self, msg: Message) -> list[Reply]:
        """Run the matching handler; the replies it asked for (none when nothing matched)."""
        if self.is_own(msg) or not self.is_addressed(msg):
            return []
        handler = self.handler_for(msg)
        if handler is None:
            return []
        return normalise(await handler(msg))


def _check_async(handler: Callable[..., Any]) -> None:
    if not inspect.iscoroutinefunction(handler):
        name = getattr(handler, "__name__", repr(handler))
        raise TypeError(f"handler {name} must be an async function (async def)")
