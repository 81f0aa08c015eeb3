"""A testing kit for bot authors: feed a callback to a ``Bot``, get back what would happen.

No broker, no network: the callback goes through the same steps as in production (the ingress's
parsing, a publish to an in-memory broker, the worker's ``Consumer`` with dedup, dispatch, reply
validation and ``muid``), and the replies it would POST are recorded instead of sent.

    from botrelay.worker.testing import BotTester, text_callback
    from my_bot import bot

    async def test_weather() -> None:
        result = await BotTester(bot).send(text_callback("/weather Berlin"))
        assert result.outcome == "replied"
        assert result.texts == ["Sunny in Berlin"]

``send`` takes a callback dict, JSON bytes, or the path of a JSON file. ``Result.outcome`` is
``replied``, ``ignored`` (``reason`` says why), ``retry`` (another attempt would follow after
``delay`` seconds), ``dead_lettered`` (``error``, ``error_kind``), or ``rejected`` (the ingress
would answer 400). With ``follow_retries=True`` the retries run at once, up to
``BOTRELAY_MAX_ATTEMPTS``, as time passing would make them.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from botrelay.shared.broker import make_message
from botrelay.shared.errors import PayloadError, TransientError, describe
from botrelay.shared.headers import ATTEMPT, CONVERSATION, ERROR, ERROR_KIND, RECEIVED_AT, TRIGGER
from botrelay.shared.model import Message
from botrelay.shared.payloads import parse_body
from botrelay.shared.settings import Settings
from botrelay.shared.topology import INBOUND_KEY
from botrelay.worker.assembly import assemble
from botrelay.worker.bot import Bot
from botrelay.worker.dedup import MemoryDedup
from botrelay.worker.memory_broker import MemoryBroker
from botrelay.worker.reply import Reply, describe_reply
from botrelay.worker.reply_client import ReplyFailed, ReplyRejected

__all__ = ["BotTester", "Result", "text_callback"]


@dataclass(frozen=True)
class Result:
    outcome: str  # replied, ignored, retry, dead_lettered, rejected
    replies: list[dict[str, Any]] = field(default_factory=list)  # request bodies, in order
    reason: str | None = None  # why it was ignored
    error: str | None = None  # "ErrorClass: message" for retry, dead_lettered, rejected
    error_kind: str | None = None  # permanent or transient, for dead letters
    attempts: int = 0
    delay: float | None = None  # seconds until the next attempt, for retry
    message: Message | None = None
    dedup_key: str | None = None

    @property
    def texts(self) -> list[str | None]:
        return [body["data"].get("text") for body in self.replies]

    @property
    def lines(self) -> list[str]:
        """The replies as ``botrelay dev`` prints them."""
        return [describe_reply(body) for body in self.replies]


class _Replies:
    """Records reply bodies; answers with a simulated status for receivers in ``statuses``."""

    def __init__(self, settings: Settings, statuses: dict[str, int]) -> None:
        self.settings = settings
        self.statuses = statuses
        self.sent: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def url(self, app_id: str, bot: str) -> str:
        return f"memory://{app_id}/bots/{bot}/messages"

    async def send(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        status = self.statuses.get(str(body.get("receiver")))
        if status is not None:
            if status in (408, 429) or status >= 500:
                self.error = ReplyFailed(status, "simulated", None)
            else:
                self.error = ReplyRejected(status, "simulated")
            raise self.error
        self.sent.append(body)
        return {"id": str(len(self.sent)), **body}


class _Watched:
    """The bot as the consumer sees it, noting whether the handler ran and what it raised."""

    def __init__(self, bot: Bot, timeout: float) -> None:
        self.bot = bot
        self.timeout = timeout
        self.dispatched = False
        self.error: BaseException | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bot, name)

    async def dispatch(self, msg: Message) -> list[Reply]:
        self.dispatched = True
        try:
            return await self.bot.dispatch(msg)
        except BaseException as exc:
            self.error = exc if isinstance(exc, Exception) else TransientError(
                f"handler did not finish within {self.timeout:g}s")
            raise


class BotTester:
    """Drives one ``Bot``. Dedup state is kept across ``send`` calls, as in a running worker."""

    def __init__(self, bot: Bot, settings: Settings | None = None, *,
                 reply_status: dict[str, int] | None = None) -> None:
        self.bot = bot
        # One callback at a time: conversation ordering has nothing to order here.
        self.settings = settings or Settings(uvloop=False, ordering="none")
        # receiver uid -> HTTP status the reply API answers for it (e.g. {"blocked-user": 400})
        self.reply_status = reply_status if reply_status is not None else {}
        self.broker = MemoryBroker(self.settings)
        self._replies = _Replies(self.settings, self.reply_status)
        self._watched = _Watched(bot, self.settings.handler_timeout)
        self.consumer = assemble(
            self.settings, self._watched, self.broker,  # type: ignore[arg-type]
            dedup=MemoryDedup(self.settings.dedup_lease, self.settings.dedup_ttl),
            replies=self._replies).consumer

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Every reply body recorded so far, over all ``send`` calls."""
        return list(self._replies.sent)

    async def send(self, callback: dict[str, Any] | bytes | str | Path, *,
                   follow_retries: bool = False) -> Result:
        body = _body(callback)
        try:
            parsed = parse_body(body)
        except PayloadError as exc:
            return Result("rejected", error=describe(exc))
        if parsed.ignore_reason is not None:
            return Result("ignored", reason=parsed.ignore_reason, message=parsed.message,
                          dedup_key=parsed.dedup_key)
        await self.broker.start()
        await self.broker.publish(make_message(body, message_id=parsed.dedup_key, headers={
            ATTEMPT: 1, RECEIVED_AT: int(time.time() * 1000), TRIGGER: parsed.trigger,
            CONVERSATION: parsed.conversation_id}), INBOUND_KEY)
        first_reply = len(self._replies.sent)
        attempts, dead_before = 0, len(self.broker.dead)
        self._watched.dispatched = False
        # Each pass is one attempt (or one wait that spends none): bounded either way.
        for _ in range(self.settings.max_attempts * 3):
            delivery = self.broker.get()
            assert delivery is not None
            self._watched.error = self._replies.error = None
            attempts += 1
            await self.consumer.process(delivery)
            error = self._watched.error or self._replies.error
            if len(self.broker.dead) > dead_before:
                headers = self.broker.dead[-1].headers
                outcome = Result("dead_lettered", error=str(headers.get(ERROR)),
                                 error_kind=str(headers.get(ERROR_KIND)), attempts=attempts)
                break
            if self.broker.delayed:
                if follow_retries:
                    self.broker.fast_forward()
                    continue
                outcome = Result("retry", error=describe(error) if error else None,
                                 attempts=attempts, delay=self.broker.delayed[-1].delay)
                self.broker.fast_forward()
                self.broker.inbound.clear()  # the next send starts afresh
                break
            replies = self._replies.sent[first_reply:]
            outcome = Result("replied" if replies else "ignored", replies=list(replies),
                             reason=None if replies else self._why_silent(parsed.message),
                             attempts=attempts)
            break
        else:
            raise RuntimeError(f"{parsed.dedup_key} was still being retried after "
                               f"{attempts} passes")
        return Result(outcome.outcome, outcome.replies, outcome.reason, outcome.error,
                      outcome.error_kind, outcome.attempts, outcome.delay, parsed.message,
                      parsed.dedup_key)

    def _why_silent(self, msg: Message | None) -> str:
        if msg is None:
            return "no message"
        if self.bot.is_own(msg):
            return "the bot's own message"
        if not self.bot.is_addressed(msg):
            return "a message not addressed to the bot"
        if self.bot.handler_for(msg) is None:
            return "no handler matched"
        if not self._watched.dispatched:
            return "duplicate: already answered"
        return "the handler returned no reply"


def _body(callback: dict[str, Any] | bytes | str | Path) -> bytes:
    if isinstance(callback, bytes):
        return callback
    if isinstance(callback, dict):
        return orjson.dumps(callback)
    return Path(callback).read_bytes()


_ids = itertools.count(1)
_TEXT_CALLBACK: dict[str, Any] = {
    "trigger": "after_message",
    "data": {"id": "1", "conversationId": "", "sender": "", "receiverType": "user",
             "receiver": "", "category": "message", "type": "text", "data": {"text": ""},
             "sentAt": 1700000000, "updatedAt": 1700000000},
    "appId": "app", "region": "us", "bot": "demo_bot",
}


def text_callback(text: str, *, sender: str = "cometchat-uid-1", group: str | None = None,
                  bot: str = "demo_bot", msg_id: str | None = None, app_id: str = "app",
                  mentions: tuple[str, ...] = ()) -> dict[str, Any]:
    """A bot callback (``after_message``) for a text message: 1:1 with ``bot``, or in ``group``.
    ``mentions`` fills ``data.mentions`` (write ``<@uid:...>`` in ``text`` too, as clients do).
    Each call gets a new message id unless ``msg_id`` is given."""
    doc = copy.deepcopy(_TEXT_CALLBACK)
    data = doc["data"]
    data.update(id=msg_id or str(next(_ids)), sender=sender, data={"text": text})
    doc.update(bot=bot, appId=app_id)
    if group is None:
        data.update(receiverType="user", receiver=bot,
                    conversationId="_user_".join(sorted((sender, bot))))
    else:
        data.update(receiverType="group", receiver=group, conversationId=f"group_{group}")
    if mentions:
        data["data"]["mentions"] = {uid: {"uid": uid, "name": uid} for uid in mentions}
    return doc
