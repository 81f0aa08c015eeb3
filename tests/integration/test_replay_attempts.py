"""`botrelay dlq replay` gives a letter a fresh start: its attempt count goes back to 1 (so it
gets every attempt again, not just one) and it carries ``x-botrelay-replayed``."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from botrelay.shared.headers import ATTEMPT, REPLAYED
from botrelay.worker import Bot, Message, dlq
from botrelay.worker.service import Worker
from tests.helpers import post_all, text_callback

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 3


async def _dead_letters(settings, n: int, timeout: float = 20.0) -> list[dlq.DeadLetter]:
    stop_at = time.monotonic() + timeout
    while time.monotonic() < stop_at:
        count = await dlq.dead_count(settings)
        if count is not None and count >= n:
            break
        await asyncio.sleep(0.1)
    return await dlq.list_letters(settings)


async def test_replay_resets_the_attempt_count_and_marks_the_letter(make_settings,
                                                                    start_ingress):
    calls: Counter[str] = Counter()
    failing = Bot()

    @failing.on_text()
    async def always_fails(msg: Message) -> str:
        calls[msg.text or ""] += 1
        raise RuntimeError("the weather service is down")

    settings = make_settings(max_attempts=MAX_ATTEMPTS, retry_delays=(0.1,))
    ingress = await start_ingress(settings)
    async with Worker(settings, failing) as worker:
        assert await post_all(f"{ingress.url}/callback", [text_callback("9001", "doomed")]) \
            == [200]
        [letter] = await _dead_letters(settings, 1)
        await asyncio.wait_for(worker.until_idle(), 10)
        assert letter.attempts == MAX_ATTEMPTS and REPLAYED not in letter.headers
        assert calls["doomed"] == MAX_ATTEMPTS

        replayed_from = int(time.time() * 1000)
        report = await dlq.replay(settings, dlq.Selection(everything=True))
        assert report.moved == 1
        [again] = await _dead_letters(settings, 1)
        await asyncio.wait_for(worker.until_idle(), 10)
    # Every attempt again: a replay that kept the old count would have failed it once, at
    # attempt MAX_ATTEMPTS, and dead-lettered it at once.
    assert calls["doomed"] == 2 * MAX_ATTEMPTS
    assert again.attempts == MAX_ATTEMPTS and again.headers[ATTEMPT] == MAX_ATTEMPTS
    stamp = again.headers[REPLAYED]
    assert isinstance(stamp, int) and replayed_from <= stamp <= int(time.time() * 1000)
    assert again.id == letter.id
