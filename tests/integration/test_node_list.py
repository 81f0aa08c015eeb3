"""``BOTRELAY_AMQP_URL`` as a list of nodes, on the single broker: a node that does not answer is
skipped, and the ingress is ready and queues callbacks through the next one."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from botrelay.shared.amqp_nodes import NodeListConnection
from botrelay.shared.broker import BrokerLink
from tests.helpers import inbound_depth, text_callback
from tests.integration.processes import free_port

pytestmark = pytest.mark.integration


def _with_a_dead_node_first(amqp_url: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/,{amqp_url}"


async def test_the_first_node_that_answers_is_used(make_settings, amqp_url: str) -> None:
    settings = make_settings(amqp_url=_with_a_dead_node_first(amqp_url))
    link = BrokerLink(settings, "node-list-test")
    await link.start(wait=True)
    try:
        connection = link.connection
        assert isinstance(connection, NodeListConnection)
        assert len(connection.nodes) == 2
        assert str(connection.url).endswith(amqp_url.rsplit("@", 1)[1])
        assert link.ready and link.retry_publishes
    finally:
        await link.close()


async def test_ingress_ready_and_queueing_with_a_list(make_settings, start_ingress,
                                                      amqp_url: str) -> None:
    settings = make_settings(amqp_url=_with_a_dead_node_first(amqp_url))
    ingress = await start_ingress(settings)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{ingress.url}/readyz") as resp:
            assert resp.status == 200
        async with session.post(f"{ingress.url}/callback",
                                data=orjson.dumps(text_callback("9001", "hello")),
                                headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200, await resp.text()
    assert await inbound_depth(settings.replace(amqp_url=amqp_url)) == 1
