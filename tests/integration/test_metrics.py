"""GET /metrics on the ingress and on a worker: every family moves exactly as the traffic sent."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from botrelay.ingress.state import STATE
from botrelay.shared import topology
from botrelay.worker import Bot, Message, Retry
from botrelay.worker.service import Worker
from tests.helpers import basic_auth, fixture, post_all, text_callback, wait_for

pytestmark = pytest.mark.integration

USER, PASSWORD = "relay", "s3cret-pass"
AUTH = basic_auth(USER, PASSWORD)


def metrics_bot() -> Bot:
    bot = Bot()
    failed_once: set[str] = set()

    @bot.on_text()
    async def handle(msg: Message) -> str:
        if (msg.text or "").startswith("flaky") and msg.id not in failed_once:
            failed_once.add(msg.id)
            raise Retry(delay=0.2)
        return f"echo: {msg.text}"

    return bot


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sample's value; a sample the scrape does not hold fails the test (an absent metric
    must not read as 0.0, or every ``== 0`` check would pass without it)."""
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {name}{labels} in the scrape"
    return samples[key]


def value_or_zero(samples: dict, name: str, **labels: str) -> float:
    """For polling only, while a counter may not have been created yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_ingress_and_worker_metrics_match_the_traffic(
        make_settings, start_ingress, fake_api, ingress_metrics_url):
    settings = make_settings(callback_username=USER, callback_password=PASSWORD)
    ingress = await start_ingress(settings)
    ingress_metrics = await ingress_metrics_url(ingress)
    url = f"{ingress.url}/callback"
    fake_api.fake.config.status_for_receiver = {"bad-receiver": 400}

    good = [text_callback(str(900 + i), f"hello {i}", sender=f"user-{i}") for i in range(3)]
    flaky = text_callback("950", "flaky one", sender="user-flaky")
    doomed = text_callback("960", "never delivered", sender="bad-receiver")
    duplicate = good[0]

    worker = Worker(settings, metrics_bot())
    worker.depth_interval = 0.2
    async with worker:
        await worker.serve_metrics(0, host="127.0.0.1")
        worker_url = f"http://127.0.0.1:{worker.metrics_port}/metrics"

        assert await post_all(url, [*good, flaky, doomed], auth=AUTH) == [200] * 5
        assert await wait_for(lambda: len(fake_api.fake.replies) == 4, timeout=20)
        await asyncio.wait_for(worker.until_idle(), 20)
        assert await post_all(url, [duplicate], auth=AUTH) == [200]
        assert await post_all(url, [fixture("bot_own_message")], auth=AUTH) == [200]
        assert await post_all(url, [good[1]], retry_503=False) == [401]  # no credentials
        async with aiohttp.ClientSession(headers={"Authorization": AUTH}) as session:
            async with session.post(url, data=b"{not json",
                                    headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 400
            async with session.post(url, data=orjson.dumps(good[1]),
                                    headers={"Content-Type": "text/plain"}) as resp:
                assert resp.status == 415
        ingress.app[STATE].closing = True  # shutting down: the sender must try again later
        assert await post_all(url, [good[2]], auth=AUTH, retry_503=False) == [503]
        ingress.app[STATE].closing = False

        # The duplicate is settled, and the dead letter shows up in the sampled depths.
        dead = topology.dead_queue(settings.prefix)

        async def settled() -> bool:
            samples = await scrape(worker_url)
            return (value_or_zero(samples, "botrelay_deliveries_total", outcome="duplicate") == 1
                    and value_or_zero(samples, "botrelay_queue_messages", queue=dead) == 1)

        for _ in range(100):
            if await settled():
                break
            await asyncio.sleep(0.1)
        await asyncio.wait_for(worker.until_idle(), 20)
        w = await scrape(worker_url)
        i = await scrape(ingress_metrics)

    # Ingress: callbacks by outcome and reason, and one latency sample per POST /callback.
    assert value(i, "botrelay_callbacks_total", outcome="queued", reason="") == 6
    assert value(i, "botrelay_callbacks_total", outcome="ignored", reason="own_message") == 1
    assert value(i, "botrelay_callbacks_total", outcome="rejected", reason="auth") == 1
    assert value(i, "botrelay_callbacks_total", outcome="rejected", reason="bad_json") == 1
    assert value(i, "botrelay_callbacks_total", outcome="rejected", reason="content_type") == 1
    assert sum(v for (name, labels), v in i.items() if name == "botrelay_callbacks_total"
               and dict(labels)["outcome"] == "unavailable") == 1
    assert value(i, "botrelay_callbacks_total", outcome="unavailable", reason="shutting_down") == 1
    assert value(i, "botrelay_ingress_request_seconds_count") == 11

    # Worker: deliveries by outcome (the flaky one is retried once, then replied).
    assert value(w, "botrelay_deliveries_total", outcome="replied") == 4
    assert value(w, "botrelay_deliveries_total", outcome="duplicate") == 1
    assert value(w, "botrelay_deliveries_total", outcome="retried") == 1
    assert value(w, "botrelay_deliveries_total", outcome="dead_lettered") == 1
    # The handler ran for 3 good + 2 flaky + 1 doomed; the duplicate never reached it.
    assert value(w, "botrelay_handler_seconds_count") == 6
    # Reply API: 4 accepted, 1 refused with 400 (permanent), each request timed.
    assert value(w, "botrelay_reply_requests_total", status="200") == 4
    assert value(w, "botrelay_reply_requests_total", status="400") == 1
    assert value(w, "botrelay_reply_request_seconds_count") == 5
    assert value(w, "botrelay_reply_throttle_seconds_count") == 5
    # End to end: one sample per callback whose replies were accepted, each under the run time.
    assert value(w, "botrelay_end_to_end_seconds_count") == 4
    assert 0 < value(w, "botrelay_end_to_end_seconds_sum") < 4 * 20
    assert value(w, "botrelay_end_to_end_seconds_bucket", le="0.1") <= 4
    assert value(w, "botrelay_deliveries_in_flight") == 0
    assert value(w, "botrelay_queue_messages", queue=dead) == 1
    assert value(w, "botrelay_queue_messages", queue=topology.inbound_queue(settings.prefix)) == 0
    for delay in settings.retry_delays:
        assert (("botrelay_queue_messages",
                 (("queue", topology.retry_queue(settings.prefix, delay)),)) in w)
