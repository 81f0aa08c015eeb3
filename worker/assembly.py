"""One place that wires a worker's inside: metrics, dedup store, reply sender, consumer.

The RabbitMQ service (``worker.service.Worker``), ``botrelay dev``'s in-memory worker and the
testing kit's ``BotTester`` differ only in what they pass in (a broker, an in-memory dedup
store, a reply sender that prints or records); what they get is built the same way here, so a
change to how a worker is put together cannot reach one of them and miss the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from botrelay.shared.metrics import WorkerMetrics
from botrelay.shared.settings import Settings
from botrelay.shared.transport import Broker
from botrelay.worker.bot import Bot
from botrelay.worker.consumer import Consumer, ReplySender
from botrelay.worker.dedup import DedupStore, RedisDedup, make_store
from botrelay.worker.rate_limit import make_limiter
from botrelay.worker.reply_client import ReplyClient
from botrelay.worker.reply_lookup import ReplyLookup
from botrelay.worker.retry import Mover


@dataclass
class WorkerParts:
    metrics: WorkerMetrics
    dedup: DedupStore
    replies: ReplySender
    consumer: Consumer
    lookup: ReplyLookup | None  # asked before re-sending a reply whose outcome is unknown
    owns_replies: bool  # the reply sender was made here, so closing it is the worker's job


def assemble(settings: Settings, bot: Bot, broker: Broker, *, dedup: DedupStore | None = None,
             replies: ReplySender | None = None, user_agent: str | None = None) -> WorkerParts:
    """The parts of a worker consuming from ``broker``. Without ``dedup``, the store the
    settings name (Redis, or memory for one worker); without ``replies``, a ``ReplyClient``
    sharing the store's Redis client for its rate limiter, and looking replies up by tag."""
    metrics = WorkerMetrics()
    store = dedup if dedup is not None else make_store(settings)
    lookup: ReplyLookup | None = None
    sender: ReplySender
    if replies is None:
        # The rate limiter shares the dedup store's Redis client, and so its pipelines.
        shared = store.client if isinstance(store, RedisDedup) else None
        client = ReplyClient(settings, metrics, limiter=make_limiter(settings, metrics, shared),
                             user_agent=user_agent)
        lookup = ReplyLookup(client.get)
        client.lookup = lookup
        sender = client
    else:
        sender = replies
        if isinstance(sender, ReplyClient):
            lookup = sender.lookup if isinstance(sender.lookup, ReplyLookup) else None
            if sender.lookup is None:
                lookup = ReplyLookup(sender.get)
                sender.lookup = lookup
    consumer = Consumer(settings, bot, store, sender, Mover(settings, broker), metrics,
                        lookup=lookup)
    return WorkerParts(metrics, store, sender, consumer, lookup, owns_replies=replies is None)
