"""SIGTERM on a worker: it stops taking deliveries, finishes what it holds within
BOTRELAY_SHUTDOWN_GRACE, returns the rest to the queue unacked, and exits 0; another worker then
answers everything exactly once."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.helpers import muid_counts, post_all, text_callback, wait_for
from tests.integration.processes import start_worker, terminate_worker

pytestmark = pytest.mark.integration

APP = "tests.integration.ops_bots:slow"
HELD = 4  # the worker's concurrency (prefetch): what it holds at SIGTERM


def callbacks(seconds: float, n: int = 2 * HELD) -> list[dict]:  # type: ignore[type-arg]
    return [text_callback(str(5000 + i), f"sleep {seconds:g} {i}", sender=f"user-{i}")
            for i in range(n)]


async def run(make_settings, start_ingress, fake_api, redis_url, tmp_path, *,  # type: ignore[no-untyped-def]
              grace: float, handler_seconds: float) -> tuple[float, int, int, float]:
    """Post 2 x HELD slow callbacks, SIGTERM the worker holding HELD of them, start another;
    (seconds the first took to exit, its exit code, replies before the second started,
    seconds the second took to answer the rest)."""
    settings = make_settings(redis_url=redis_url, concurrency=HELD, shutdown_grace=grace,
                             handler_timeout=5.0, dedup_lease=15.0)
    ingress = await start_ingress(settings)
    log = tmp_path / "workers.log"
    first = await start_worker(settings, log, app=APP)
    docs = callbacks(handler_seconds)
    assert set(await post_all(f"{ingress.url}/callback", docs)) == {200}
    await asyncio.sleep(0.5)  # the first worker now holds HELD deliveries
    started = time.monotonic()
    code = await terminate_worker(first)
    took = time.monotonic() - started
    before = len(fake_api.fake.replies)
    second = await start_worker(settings, log, app=APP)
    started = time.monotonic()
    try:
        assert await wait_for(lambda: len(fake_api.fake.replies) >= len(docs), timeout=30)
        rest = time.monotonic() - started
        await asyncio.sleep(0.5)
    finally:
        assert await terminate_worker(second) == 0
    counts = muid_counts(fake_api.fake)
    assert len(counts) == len(docs) and set(counts.values()) == {1}
    return took, code, before, rest


async def test_sigterm_finishes_deliveries_in_flight_within_the_grace(
        make_settings, start_ingress, fake_api, redis_url, redis_client, tmp_path):
    took, code, before, _ = await run(make_settings, start_ingress, fake_api, redis_url,
                                      tmp_path, grace=10.0, handler_seconds=1.5)
    assert code == 0
    assert before == HELD  # what it held was answered before it exited, nothing more
    # It waited for its 1.5 s handlers (started about 0.5 s before the SIGTERM), not for the
    # whole 10 s grace.
    assert 0.5 < took < 1.5 + 1.5, f"handlers of 1.5 s, exited after {took:.2f} s"


async def test_sigterm_returns_what_outlives_the_grace_unacked(
        make_settings, start_ingress, fake_api, redis_url, redis_client, tmp_path):
    took, code, before, rest = await run(make_settings, start_ingress, fake_api, redis_url,
                                         tmp_path, grace=1.0, handler_seconds=4.0)
    assert code == 0
    assert before == 0  # nothing finished within the grace ...
    # It waited out the grace (less its last fifth, kept for cancelling the handlers), then
    # stopped: the 4 s handlers did not hold it up. The 1.5 s over the grace is the exit itself
    # (closing the broker and Redis links, interpreter teardown).
    assert 0.8 <= took < 1.0 + 1.5, f"grace 1.0 s, exited after {took:.2f} s"
    # The stopped worker released its claims: the next one did not wait out the 15 s lease
    # (it answers the 2 x HELD messages, HELD at a time, in 2 x 4 s).
    assert rest < 12.0
