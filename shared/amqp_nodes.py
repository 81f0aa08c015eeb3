"""A robust AMQP connection over the nodes of a RabbitMQ cluster.

aio-pika's ``connect_robust`` takes one URL and, when that node dies, keeps reconnecting to it.
``NodeListConnection`` keeps aio-pika's recovery (its channels reopen, and with them the queues,
exchanges, bindings and consumers declared through them) and changes only where it goes: every
lost connection and every failed attempt moves to the next node of the list, round robin.

The hook is ``_on_connection_close``: aio-pika calls it both when an open connection is lost and
when an attempt to connect fails, and reads ``url`` afresh for every attempt. aio-pika takes the
connection options in a URL's query string from the first node's URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from aio_pika import RobustConnection
from yarl import URL

log = logging.getLogger("botrelay.broker")


class NodeListConnection(RobustConnection):
    def __init__(self, urls: Sequence[str], **kwargs: Any) -> None:
        if not urls:
            raise ValueError("no broker URL")
        self.nodes = [URL(u) for u in urls]
        self.node_index = 0
        super().__init__(self.nodes[0], **kwargs)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # Move first: the attempt this close triggers (aio-pika sets its restore event at the
        # end of the base method) must already go to the next node.
        if len(self.nodes) > 1 and not self._close_called:
            self.node_index = (self.node_index + 1) % len(self.nodes)
            self.url = self.nodes[self.node_index]
            log.info("broker connection lost or refused; next attempt to node %d of %d",
                     self.node_index + 1, len(self.nodes))
        await super()._on_connection_close(closing)


async def connect_nodes(urls: Sequence[str], *, timeout: float, **kwargs: Any
                        ) -> NodeListConnection:
    """A connection to the first node of ``urls`` that answers, tried in order.

    Each node gets one attempt of at most ``timeout`` seconds; when none answers the last error
    is raised (the caller backs off and calls again)."""
    last: BaseException | None = None
    for start in range(len(urls)):
        ordered = [*urls[start:], *urls[:start]]
        connection = NodeListConnection(ordered, fail_fast=True, **kwargs)
        try:
            await connection.connect(timeout=timeout)
        except Exception as exc:  # refused, timed out, or the broker said no (auth, vhost)
            last = exc
            with contextlib.suppress(Exception):  # it never opened: nothing else to clean up
                await connection.close()
            continue
        return connection
    assert last is not None
    raise last
