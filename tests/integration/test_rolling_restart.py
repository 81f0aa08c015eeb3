"""A rolling restart under load: callbacks stream in while every worker is replaced (SIGTERM,
graceful) one by one and the ingress is restarted once; every callback is answered exactly once."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.helpers import generated, muid_counts, post_all, reply_counts, wait_for
from tests.integration.processes import (
    IngressProcess,
    count_lines,
    free_port,
    start_worker,
    terminate_worker,
)

pytestmark = pytest.mark.integration

TOTAL = 2000
CHUNK = 100


@pytest.mark.parametrize("ordering", ["conversation", "none"])
async def test_rolling_restart_answers_every_callback_exactly_once(
        make_settings, fake_api, redis_url, redis_client, tmp_path, ordering):
    fake = fake_api.fake
    fake.config.latency = 0.02  # replies take a moment, so SIGTERM finds deliveries in flight
    settings = make_settings(redis_url=redis_url, concurrency=32, shutdown_grace=10.0,
                             dedup_lease=10.0, ordering=ordering)
    worker_log, ingress_log = tmp_path / "workers.log", tmp_path / "ingress.log"
    ingress = await IngressProcess(settings, free_port(), ingress_log).start()
    workers = [await start_worker(settings, worker_log) for _ in range(3)]
    docs = generated(TOTAL)

    async def stream() -> list[int]:
        """CometChat's side: callbacks keep coming, each re-posted on 503 or a refused
        connection until accepted."""
        statuses: list[int] = []
        for start in range(0, TOTAL, CHUNK):
            statuses += await post_all(f"{ingress.url}/callback", docs[start:start + CHUNK],
                                       concurrency=16, deadline=60)
            await asyncio.sleep(0.3)
        return statuses

    sender = asyncio.create_task(stream())
    worker_codes: list[int] = []
    try:
        await asyncio.sleep(1.0)
        for n in range(len(workers)):
            # Like a Deployment's rolling update: the new one is up before the old one stops.
            replacement = await start_worker(settings, worker_log)
            worker_codes.append(await terminate_worker(workers[n]))
            workers[n] = replacement
            if n == 1:
                ingress_code = await ingress.terminate()
                await ingress.start()
        restarts_done_at = len(fake.replies)
        statuses = await asyncio.wait_for(sender, 120)
        assert await wait_for(lambda: len(fake.replies) >= TOTAL, timeout=60, interval=0.2)
        await asyncio.sleep(1.0)  # a late duplicate would show up now
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        for worker in workers:
            worker_codes.append(await terminate_worker(worker))
        await ingress.terminate()

    texts = reply_counts(fake)
    muids = muid_counts(fake)
    expected = {f"echo: hello {doc['data']['id']}" for doc in docs}
    duplicates = sum(c - 1 for c in texts.values() if c > 1)
    lost = len(expected - set(texts))
    print(f"ordering={ordering} sent={TOTAL} accepted={statuses.count(200)} "
          f"answered={len(texts)} replies={len(fake.replies)} duplicates={duplicates} "
          f"lost={lost} answered before the last restart={restarts_done_at}")
    assert statuses == [200] * TOTAL
    assert restarts_done_at < TOTAL  # the restarts happened while callbacks were streaming
    assert set(texts) == expected and duplicates == 0 and lost == 0
    assert len(muids) == TOTAL and set(muids.values()) == {1}
    assert worker_codes == [0] * 6 and ingress_code == 0
    assert count_lines(worker_log, "worker stopped") == 6
    assert count_lines(ingress_log, "ingress stopped") == 2
