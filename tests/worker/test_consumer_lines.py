"""A conversation's line of deliveries when the broker connection drops: the consumer tasks
waiting in line are cancelled. Each must leave the line without waking the next one (only the
holder passes the turn on) and must still count itself out of ``in_flight``, or the worker never
reads as idle again and its shutdown waits out the whole grace."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from botrelay.shared.headers import CONVERSATION
from botrelay.shared.metrics import WorkerMetrics
from botrelay.shared.settings import Settings
from botrelay.worker.consumer import Consumer


class Held(Consumer):
    """``process`` records the order and blocks until released."""

    def __init__(self) -> None:
        super().__init__(Settings(), None, None, None, None, WorkerMetrics())  # type: ignore[arg-type]
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}

    async def process(self, delivery: Any) -> None:
        self.started.append(delivery.message_id)
        await self.release.setdefault(delivery.message_id, asyncio.Event()).wait()


def delivery(message_id: str) -> Any:
    return SimpleNamespace(message_id=message_id, headers={CONVERSATION: "c1"})


async def test_cancelled_waiters_leave_the_line_and_the_count() -> None:
    consumer = Held()
    head = asyncio.create_task(consumer.on_delivery(delivery("m1")))
    waiters = [asyncio.create_task(consumer.on_delivery(delivery(f"m{i}"))) for i in (2, 3)]
    await asyncio.sleep(0.01)
    assert consumer.started == ["m1"] and consumer.in_flight == 3

    # The connection drops: the consumer tasks are cancelled, the waiters first.
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert consumer.started == ["m1"], "a cancelled waiter woke the next one out of turn"
    assert consumer.in_flight == 1
    head.cancel()
    await asyncio.gather(head, return_exceptions=True)
    assert consumer.in_flight == 0 and consumer.idle.is_set()

    # The redeliveries line up as usual.
    again = [asyncio.create_task(consumer.on_delivery(delivery(f"r{i}"))) for i in (1, 2)]
    await asyncio.sleep(0.01)
    assert consumer.started == ["m1", "r1"]
    consumer.release["r1"].set()
    await asyncio.sleep(0.01)
    assert consumer.started == ["m1", "r1", "r2"]
    consumer.release["r2"].set()
    await asyncio.gather(*again)
    assert consumer.in_flight == 0 and consumer.idle.is_set()


class CancelsTheNext(Held):
    """m1's ``process`` cancels m2's task so that the cancellation lands after m1 hands m2 the
    turn and before m2 wakes to take it: m2 holds the turn when it is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[asyncio.Task[None]] = []

    async def process(self, delivery: Any) -> None:
        await super().process(delivery)
        if delivery.message_id == "m1":
            asyncio.get_running_loop().call_soon(self.tasks[1].cancel)


async def test_a_waiter_cancelled_as_its_turn_comes_passes_the_turn_on() -> None:
    consumer = CancelsTheNext()
    for i in (1, 2, 3):
        consumer.tasks.append(asyncio.create_task(consumer.on_delivery(delivery(f"m{i}"))))
    first, second, third = consumer.tasks
    await asyncio.sleep(0.01)  # all three are in line, m1 running
    consumer.release["m1"].set()
    await asyncio.gather(first, second, return_exceptions=True)
    await asyncio.sleep(0.01)
    assert second.cancelled()
    assert consumer.started == ["m1", "m3"], "the turn m2 held was not passed on"
    consumer.release["m3"].set()
    await asyncio.wait_for(third, 1)
    assert consumer.in_flight == 0 and consumer.idle.is_set()
