"""The consumer's per-conversation lines: deliveries of one conversation run one after another,
and one cancelled while it waits (a reconnect cancels consumer tasks) leaves the line without
handing the turn on, so the next one still waits for the delivery that holds it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from botrelay.shared.headers import CONVERSATION
from botrelay.shared.metrics import WorkerMetrics
from botrelay.shared.settings import Settings
from botrelay.worker.bot import Bot
from botrelay.worker.consumer import Consumer


@dataclass
class FakeDelivery:
    n: int
    headers: dict[str, Any] = field(default_factory=lambda: {CONVERSATION: "c1"})


async def test_cancelled_waiter_does_not_pass_the_turn_on() -> None:
    consumer = Consumer(Settings(), Bot(), None, None, None, WorkerMetrics())  # type: ignore[arg-type]
    release = asyncio.Event()
    events: list[str] = []

    async def process(delivery: FakeDelivery) -> None:
        events.append(f"start {delivery.n}")
        if delivery.n == 1:
            await release.wait()
        events.append(f"end {delivery.n}")

    consumer.process = process  # type: ignore[assignment,method-assign]
    first, second, third = (asyncio.create_task(consumer.on_delivery(FakeDelivery(n)))
                            for n in (1, 2, 3))
    await asyncio.sleep(0.01)
    second.cancel()  # waiting behind the first
    await asyncio.sleep(0.01)
    assert events == ["start 1"], "the third must still wait for the first"
    release.set()
    results = await asyncio.gather(first, second, third, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert results[0] is None and results[2] is None, results
    assert events == ["start 1", "end 1", "start 3", "end 3"]
    assert consumer.in_flight == 0 and consumer.idle.is_set()
    assert consumer._lines == {}
