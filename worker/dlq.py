"""Dead letters: list, replay, purge (``botrelay dlq ...``).

Messages are taken with ``basic.get`` and held unacked while we look at them, so two operators
replaying at once never move the same message twice: a message held by one is invisible to the
other. What an operation does not take is returned to the queue when its channel closes. Each
scan is bounded by the queue's length at its start.

Reading changes nothing on the broker: the DLQ is looked up with a passive declare, and no other
queue is declared. A replay returns a letter to the queue it failed from (its
``x-botrelay-queue`` header) through ``worker.requeue``, whatever this process's own ordering
settings, so it never lands in a partition queue no worker reads.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from botrelay.shared import topology
from botrelay.shared.broker import connect, make_message
from botrelay.shared.errors import PayloadError
from botrelay.shared.headers import (
    ATTEMPT,
    CONVERSATION,
    ERROR,
    ERROR_KIND,
    FAILED_AT,
    QUEUE,
    REPLAYED,
)
from botrelay.shared.headers import TRIGGER as TRIGGER_HEADER
from botrelay.shared.payloads import parse_body
from botrelay.shared.settings import Settings
from botrelay.worker.requeue import Destinations


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    trigger: str
    conversation: str
    attempts: int
    error: str
    error_kind: str
    failed_at_ms: int
    queue: str
    text: str = ""
    app: str = ""
    body: bytes = field(default=b"", repr=False)
    headers: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.failed_at_ms / 1000) if self.failed_at_ms else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "trigger": self.trigger, "conversation": self.conversation,
            "attempts": self.attempts, "error": self.error, "error_kind": self.error_kind,
            "failed_at_ms": self.failed_at_ms, "age_seconds": round(self.age_seconds, 1),
            "queue": self.queue, "text": self.text, "app": self.app,
        }


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _text_and_app(body: bytes) -> tuple[str, str]:
    """The message text and app id, for people to recognise a letter by; empty when the body
    is not a callback botrelay can parse (that may be why it is dead)."""
    try:
        callback = parse_body(body)
    except (PayloadError, ValueError, TypeError):
        return "", ""
    text = callback.message.text if callback.message is not None else None
    return text or "", callback.app_id


# What the broker writes on a message it dead-letters itself (a delivery limit reached), in
# place of botrelay's own error headers.
_BROKER_DEATH = ("x-death", "x-first-death-reason", "x-first-death-queue",
                 "x-first-death-exchange", "x-last-death-reason", "x-last-death-queue",
                 "x-last-death-exchange")
_BROKER_REASONS = {
    "delivery_limit": "delivery_limit: redelivered more often than BOTRELAY_DELIVERY_LIMIT "
                      "(a worker was lost while holding it each time)",
}


def _broker_death(h: Mapping[str, Any]) -> tuple[str, str, int]:
    """(error, queue, failed at ms) of a letter the broker dead-lettered, from its x-death."""
    reason = str(h.get("x-first-death-reason", ""))
    if not reason:
        return "", "", 0
    error = _BROKER_REASONS.get(reason, f"dead-lettered by the broker: {reason}")
    deaths = h.get("x-death")
    when = deaths[0].get("time") if isinstance(deaths, list) and deaths and isinstance(
        deaths[0], dict) else None
    failed_at = int(when.timestamp() * 1000) if isinstance(when, datetime) else 0
    return error, str(h.get("x-first-death-queue", "")), failed_at


def describe(delivery: AbstractIncomingMessage) -> DeadLetter:
    h = delivery.headers or {}
    text, app = _text_and_app(delivery.body)
    error, queue, failed_at = str(h.get(ERROR, "")), str(h.get(QUEUE, "")), _int(h.get(FAILED_AT))
    kind = str(h.get(ERROR_KIND, ""))
    if not error:
        error, queue, failed_at = _broker_death(h)
        kind = "transient" if error else ""
    return DeadLetter(
        id=delivery.message_id or "",
        trigger=str(h.get(TRIGGER_HEADER, "")),
        conversation=str(h.get(CONVERSATION, "")),
        attempts=_int(h.get(ATTEMPT, 1)),
        error=error,
        error_kind=kind,
        failed_at_ms=failed_at,
        queue=queue,
        text=text,
        app=app,
        body=delivery.body,
        headers=dict(h),
    )


@dataclass(frozen=True)
class Selection:
    """Which dead letters an operation takes; every given filter must match."""

    ids: frozenset[str] = frozenset()
    trigger: str | None = None
    error: str | None = None
    everything: bool = False
    # The console's search: a substring of the text, id or conversation (case-insensitive).
    query: str | None = None
    kind: str | None = None  # "permanent" or "transient"

    def matches(self, letter: DeadLetter) -> bool:
        if self.ids and letter.id not in self.ids:
            return False
        if self.trigger is not None and letter.trigger != self.trigger:
            return False
        if self.error is not None and self.error.lower() not in letter.error.lower():
            return False
        if self.kind is not None and letter.error_kind != self.kind:
            return False
        if self.query is not None:
            wanted = self.query.lower()
            if not any(wanted in value.lower()
                       for value in (letter.text, letter.id, letter.conversation)):
                return False
        return self.everything or bool(self.ids) or any(
            x is not None for x in (self.trigger, self.error, self.kind, self.query))


@dataclass
class Report:
    matched: list[DeadLetter] = field(default_factory=list)
    moved: int = 0
    seen: int = 0


# What an operation does with each selected letter: its delivery and what ``describe`` read.
Action = Callable[[AbstractConnection, AbstractChannel, AbstractIncomingMessage, DeadLetter],
                  Awaitable[None]]


async def dead_count(settings: Settings) -> int | None:
    """How many letters the DLQ holds (None: it does not exist yet), without taking any."""
    connection = await connect(settings, "botrelay-dlq")
    try:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(topology.dead_queue(settings.prefix),
                                                passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        return queue.declaration_result.message_count or 0
    finally:
        await connection.close()


async def _scan(settings: Settings, selection: Selection | None, limit: int | None,
                action: Action | None) -> Report:
    """Walk the DLQ once; ``action`` (then ack) each selected letter, leave the rest."""
    connection = await connect(settings, "botrelay-dlq")
    report = Report()
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            queue = await channel.declare_queue(topology.dead_queue(settings.prefix),
                                                passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return report  # no DLQ yet: nothing has failed under this prefix
        total = queue.declaration_result.message_count or 0
        for _ in range(total):
            if limit is not None and len(report.matched) >= limit:
                break
            delivery = await queue.get(no_ack=False, fail=False, timeout=10)
            if delivery is None:
                break
            report.seen += 1
            letter = describe(delivery)
            if selection is not None and not selection.matches(letter):
                continue  # stays unacked until the channel closes, then returns to the queue
            report.matched.append(letter)
            if action is not None:
                await action(connection, channel, delivery, letter)
                await delivery.ack()
                report.moved += 1
        with contextlib.suppress(Exception):
            await channel.close()
    finally:
        await connection.close()
    return report


async def list_letters(settings: Settings, limit: int | None = None,
                       selection: Selection | None = None) -> list[DeadLetter]:
    return (await _scan(settings, selection, limit, None)).matched


async def get_letter(settings: Settings, letter_id: str) -> DeadLetter | None:
    """One letter, payload and headers included; it stays in the DLQ."""
    found = await list_letters(settings, 1, Selection(ids=frozenset({letter_id})))
    return found[0] if found else None


async def replay(settings: Settings, selection: Selection, *, limit: int | None = None,
                 dry_run: bool = False) -> Report:
    """Publish the selected letters back to the queue each failed from (confirm, then ack from
    the DLQ), attempt count reset and ``x-botrelay-replayed`` set."""
    destinations: Destinations | None = None

    async def move(connection: AbstractConnection, channel: AbstractChannel,
                   delivery: AbstractIncomingMessage, letter: DeadLetter) -> None:
        nonlocal destinations
        if destinations is None:
            destinations = Destinations(connection, settings.prefix)
        key = await destinations.key_for(letter.queue or None)
        headers = {k: v for k, v in (delivery.headers or {}).items()
                   if k not in (ERROR, ERROR_KIND, FAILED_AT, QUEUE, *_BROKER_DEATH)}
        headers[ATTEMPT] = 1
        headers[REPLAYED] = int(time.time() * 1000)
        exchange = await channel.get_exchange(topology.exchange_name(settings.prefix),
                                              ensure=False)
        await exchange.publish(
            make_message(delivery.body, message_id=delivery.message_id or "", headers=headers),
            key, mandatory=True, timeout=10,
        )

    return await _scan(settings, selection, limit, None if dry_run else move)


async def purge(settings: Settings, selection: Selection, *, dry_run: bool = False) -> Report:
    async def drop(connection: AbstractConnection, channel: AbstractChannel,
                   delivery: AbstractIncomingMessage, letter: DeadLetter) -> None:
        return None

    return await _scan(settings, selection, None, None if dry_run else drop)
