"""Three workers share one outbound budget in Redis: a burst of 5x the limit waits for its slots,
and every reply still goes out once.

The rate is measured from the sender's side: the fake API enforces nothing here (it takes every
request), and the test counts the requests arriving in every one-second window, so a limiter that
lets requests through too fast fails the test instead of being hidden by the fake's 429s."""

from __future__ import annotations

import asyncio
import bisect
import time

import pytest

from botrelay.worker.rate_limit import BURST_SECONDS
from tests.helpers import generated, muid_counts, post_all, wait_for
from tests.integration.processes import start_worker, terminate_worker

pytestmark = pytest.mark.integration

RATE = 30.0  # requests per second per app, the workers' configured budget
WINDOW = 1.0  # seconds


def busiest_window(arrivals: list[float], window: float = WINDOW) -> int:
    """The most requests that arrived within any ``window`` seconds (a sliding window starting
    at each arrival, so a burst straddling a second boundary is not split in two)."""
    times = sorted(arrivals)
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)),
               default=0)


def test_busiest_window_slides():
    # 10 requests in the last half of one second and 10 in the first half of the next: a
    # per-second count sees 10 and 10, the sliding window sees all 20.
    arrivals = [0.5 + i * 0.04 for i in range(10)] + [1.01 + i * 0.04 for i in range(10)]
    assert busiest_window(arrivals) == 20
    assert busiest_window([]) == 0


async def test_burst_of_five_times_the_limit_across_three_workers(
        make_settings, start_ingress, fake_api, redis_url, redis_client, tmp_path):
    fake = fake_api.fake
    fake.config.rate_limit = 0  # the fake takes everything: only the workers limit the rate
    arrivals: list[float] = []
    check = fake._rate_limited

    def spy(app_key: str):  # type: ignore[no-untyped-def]
        # Called once per well-formed request as it arrives, before any answer is chosen.
        arrivals.append(time.monotonic())
        return check(app_key)

    fake._rate_limited = spy  # type: ignore[method-assign]

    # The lease leaves room to wait for a slot.
    settings = make_settings(redis_url=redis_url, rate_limit_app=RATE * 60,
                             dedup_lease=20.0,
                             reply_budget=3.0, max_attempts=6, retry_delays=(1.0, 2.0))
    ingress = await start_ingress(settings)
    log = tmp_path / "workers.log"
    workers = [await start_worker(settings, log) for _ in range(3)]
    docs = generated(int(5 * RATE), groups=5, users=200)
    try:
        assert set(await post_all(f"{ingress.url}/callback", docs)) == {200}
        assert await wait_for(lambda: len(fake.replies) >= len(docs), timeout=45, interval=0.2)
        await asyncio.sleep(0.5)  # nothing more may arrive
    finally:
        codes = [await terminate_worker(w) for w in workers]

    span = max(arrivals) - min(arrivals)
    busiest = busiest_window(arrivals)
    # GCRA lets a burst of BURST_SECONDS' worth through at once, then one request per 1/RATE:
    # any one-second window holds at most RATE + burst requests; two more for timer rounding
    # and the jitter of three processes waking at a window's edges.
    bound = int(RATE * WINDOW + RATE * BURST_SECONDS) + 2
    print(f"requests={len(arrivals)} replies={len(fake.replies)} span={span:.2f}s "
          f"busiest {WINDOW:g}s window={busiest} (bound {bound})")
    counts = muid_counts(fake)
    assert len(counts) == len(docs) and set(counts.values()) == {1}
    assert len(arrivals) == len(docs)  # no request was refused, so none was sent twice
    assert busiest <= bound, f"{busiest} requests in one second, the budget allows {bound}"
    # The whole burst cannot go out faster than the budget: (n - burst) slots of 1/RATE each.
    assert span >= (len(docs) - RATE * BURST_SECONDS - 1) / RATE
    assert codes == [0, 0, 0]
