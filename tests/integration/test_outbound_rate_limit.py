"""Three workers share one outbound budget in Redis: a burst of 5x the API's limit waits for
its slots instead of drawing 429s, and every reply still goes out."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.helpers import generated, muid_counts, post_all, wait_for
from tests.integration.processes import start_worker, terminate_worker

pytestmark = pytest.mark.integration

LIMIT = 40  # requests per second per app, enforced by the fake reply API


async def test_burst_of_five_times_the_limit_across_three_workers(
        make_settings, start_ingress, fake_api, redis_url, redis_client, tmp_path):
    fake = fake_api.fake
    fake.config.rate_limit = LIMIT
    requests: list[float] = []
    limited: list[float] = []
    check = fake._rate_limited

    def spy(app_key: str):  # type: ignore[no-untyped-def]
        answer = check(app_key)
        requests.append(time.monotonic())
        if answer is not None:
            limited.append(time.monotonic())
        return answer

    fake._rate_limited = spy  # type: ignore[method-assign]

    # The workers are configured 10% under the API's limit (as the README advises): at exactly
    # the limit, network jitter at a window's edge can push one request into the next second.
    # The lease leaves room to wait for a slot.
    settings = make_settings(redis_url=redis_url, rate_limit_app=LIMIT * 60 * 0.9,
                             dedup_lease=20.0,
                             reply_budget=3.0, max_attempts=6, retry_delays=(1.0, 2.0))
    ingress = await start_ingress(settings)
    log = tmp_path / "workers.log"
    workers = [await start_worker(settings, log) for _ in range(3)]
    try:
        docs = generated(5 * LIMIT, groups=5, users=200)
        assert set(await post_all(f"{ingress.url}/callback", docs)) == {200}
        assert await wait_for(lambda: len(fake.replies) >= len(docs), timeout=45, interval=0.2)
        await asyncio.sleep(0.5)  # nothing more may arrive
    finally:
        codes = [await terminate_worker(w) for w in workers]

    first = requests[0]
    late = [t - first for t in limited if t - first > 1.0]
    print(f"requests={len(requests)} replies={len(fake.replies)} 429s={len(limited)} "
          f"late 429s={len(late)} span={requests[-1] - first:.1f}s")
    assert late == []
    counts = muid_counts(fake)
    assert len(counts) == len(docs) and set(counts.values()) == {1}
    # Never faster than the API allows, once the first second is over.
    per_second: dict[int, int] = {}
    for t in (r.at for r in fake.replies):
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    assert max(per_second.values()) <= LIMIT
    assert codes == [0, 0, 0]
