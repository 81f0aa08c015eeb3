"""Dead letters: list, replay, purge (``botrelay dlq ...``).

Messages are taken with ``basic.get`` and held unacked while we look at them, so two operators
replaying at once never move the same message twice: a message held by one is invisible to the
other. What an operation does not take is returned to the queue when its channel closes. Each
scan is bounded by the queue's length at its start.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shared import topology
from shared.broker import connect, make_message
from shared.headers import ATTEMPT, CONVERSATION, ERROR, ERROR_KIND, FAILED_AT, QUEUE, REPLAYED
from shared.headers import TRIGGER as TRIGGER_HEADER
from shared.settings import Settings


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

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.failed_at_ms / 1000) if self.failed_at_ms else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "trigger": self.trigger, "conversation": self.conversation,
            "attempts": self.attempts, "error": self.error, "error_kind": self.error_kind,
            "failed_at_ms": self.failed_at_ms, "age_seconds": round(self.age_seconds, 1),
            "queue": self.queue,
        }


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def describe(delivery: AbstractIncomingMessage) -> DeadLetter:
    h = delivery.headers or {}
    return DeadLetter(
        id=delivery.message_id or "",
        trigger=str(h.get(TRIGGER_HEADER, "")),
        conversation=str(h.get(CONVERSATION, "")),
        attempts=_int(h.get(ATTEMPT, 1)),
        error=str(h.get(ERROR, "")),
        error_kind=str(h.get(ERROR_KIND, "")),
        failed_at_ms=_int(h.get(FAILED_AT)),
        queue=str(h.get(QUEUE, "")),
    )


@dataclass(frozen=True)
class Selection:
    """Which dead letters an operation takes; every given filter must match."""

    ids: frozenset[str] = frozenset()
    trigger: str | None = None
    error: str | None = None
    everything: bool = False

    def matches(self, letter: DeadLetter) -> bool:
        if self.ids and letter.id not in self.ids:
            return False
        if self.trigger is not None and letter.trigger != self.trigger:
            return False
        if self.error is not None and self.error.lower() not in letter.error.lower():
            return False
        return self.everything or bool(self.ids) or self.trigger is not None \
            or self.error is not None


@dataclass
class Report:
    matched: list[DeadLetter] = field(default_factory=list)
    moved: int = 0
    seen: int = 0


Action = Callable[[AbstractChannel, AbstractIncomingMessage], Awaitable[None]]


async def _scan(settings: Settings, selection: Selection | None, limit: int | None,
                action: Action | None) -> Report:
    """Walk the DLQ once; ``action`` (then ack) each selected letter, leave the rest."""
    connection = await connect(settings, "botrelay-dlq")
    report = Report()
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await topology.declare(channel, settings)
        queue = await channel.declare_queue(topology.dead_queue(settings.prefix), passive=True)
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
                await action(channel, delivery)
                await delivery.ack()
                report.moved += 1
        with contextlib.suppress(Exception):
            await channel.close()
    finally:
        await connection.close()
    return report


async def list_letters(settings: Settings, limit: int | None = None) -> list[DeadLetter]:
    return (await _scan(settings, None, limit, None)).matched


async def replay(settings: Settings, selection: Selection, *, limit: int | None = None,
                 dry_run: bool = False) -> Report:
    """Publish the selected letters back to the inbound queue (confirm, then ack from the DLQ),
    attempt count reset and ``x-botrelay-replayed`` set."""

    async def move(channel: AbstractChannel, delivery: AbstractIncomingMessage) -> None:
        headers = {k: v for k, v in (delivery.headers or {}).items()
                   if k not in (ERROR, ERROR_KIND, FAILED_AT, QUEUE)}
        headers[ATTEMPT] = 1
        headers[REPLAYED] = int(time.time() * 1000)
        exchange = await channel.get_exchange(topology.exchange_name(settings.prefix),
                                              ensure=False)
        conversation = str(headers.get(CONVERSATION) or "")
        await exchange.publish(
            make_message(delivery.body, message_id=delivery.message_id or "", headers=headers),
            topology.inbound_key(settings, conversation), mandatory=True, timeout=10,
        )

    return await _scan(settings, selection, limit, None if dry_run else move)


async def purge(settings: Settings, selection: Selection, *, dry_run: bool = False) -> Report:
    async def drop(channel: AbstractChannel, delivery: AbstractIncomingMessage) -> None:
        return None

    return await _scan(settings, selection, None, None if dry_run else drop)
