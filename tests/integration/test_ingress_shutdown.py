"""SIGTERM on the ingress: readiness is never 200 again, the listener closes, every request it
had taken is answered (the publishes waiting for a confirm finish within the grace), and every
callback answered 200 is in the queue: nothing taken is dropped."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import orjson
import pytest

from tests.chaos.tcp_proxy import TCPProxy
from tests.helpers import inbound_depth, text_callback
from tests.integration.processes import IngressProcess, free_port, wait_exit

pytestmark = pytest.mark.integration

IN_FLIGHT = 40


async def test_sigterm_answers_requests_in_flight_and_drops_nothing(make_settings, amqp_url,
                                                                    tmp_path):
    host_port = amqp_url.rsplit("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    async with TCPProxy(host, int(port)) as proxy:
        settings = make_settings(amqp_url=amqp_url.replace(host_port, f"127.0.0.1:{proxy.port}"),
                                 shutdown_grace=5.0, publish_timeout=4.0)
        ingress = await IngressProcess(settings, free_port(), tmp_path / "ingress.log").start()
        assert ingress.proc is not None
        answers: list[int] = []
        dropped: list[str] = []  # requests sent whose connection closed without an answer
        docs = [text_callback(str(9500 + i), f"in flight {i}", sender=f"user-{i}")
                for i in range(IN_FLIGHT)]
        try:
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=IN_FLIGHT)) as session:
                async def post(doc: dict) -> None:  # type: ignore[type-arg]
                    try:
                        async with session.post(f"{ingress.url}/callback",
                                                data=orjson.dumps(doc), headers={
                                                    "Content-Type": "application/json"}) as resp:
                            await resp.read()
                            answers.append(resp.status)
                    except aiohttp.ClientError as exc:
                        dropped.append(f"{type(exc).__name__}: {exc}")

                # The broker's confirms are held back, so every request waits in the ingress
                # for its confirm when SIGTERM arrives.
                proxy.stall()
                posts = [asyncio.create_task(post(doc)) for doc in docs]
                await asyncio.sleep(0.5)
                assert answers == [] and dropped == []
                ingress.proc.send_signal(signal.SIGTERM)
                stopped_at = time.monotonic()

                # Readiness: never 200 after SIGTERM (503 while closing, then no listener).
                probes: list[int | str] = []
                for _ in range(5):
                    try:
                        async with aiohttp.ClientSession() as probe, probe.get(
                                f"{ingress.url}/readyz") as resp:
                            probes.append(resp.status)
                    except aiohttp.ClientConnectionError:
                        probes.append("refused")
                    await asyncio.sleep(0.05)
                proxy.heal()  # the confirms flow again, within the grace
                await asyncio.wait_for(asyncio.gather(*posts), 15)
            await wait_exit(ingress.proc, 10)
            took = time.monotonic() - stopped_at
            code = ingress.proc.poll()
        finally:
            proxy.heal()
            ingress.kill()
        depth = await inbound_depth(settings)
    print(f"answers {sorted(set(answers))} x{len(answers)}, dropped {len(dropped)}, "
          f"readyz after SIGTERM {probes}, queued {depth}, exit {code} after {took:.2f}s")
    assert 200 not in probes, probes
    assert dropped == [], dropped[:3]
    assert answers == [200] * IN_FLIGHT  # the confirms came within the grace
    assert depth == IN_FLIGHT
    assert code == 0 and took < settings.shutdown_grace + 1.0
