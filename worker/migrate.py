"""``botrelay migrate``: move queues whose arguments the settings now declare otherwise.

RabbitMQ cannot change a queue's arguments in place (``x-max-length`` from
``BOTRELAY_INBOUND_MAX_LENGTH``, ``x-quorum-initial-group-size`` from ``BOTRELAY_QUORUM_SIZE``, a
classic queue of an older topology). For each such queue ``Q``, bound to its exchange with key
``K``:

1. ``Q.migrating`` is declared with the new arguments, unbound;
2. ``Q`` is emptied into it (publish with confirm, then ack), while ``Q`` still takes new
   callbacks; then ``Q.migrating`` is bound to ``K`` and ``Q`` unbound, and what reached ``Q``
   in between is moved too;
3. ``Q`` is deleted and declared again with the new arguments and bound to ``K``;
4. ``Q.migrating`` is unbound and emptied back into ``Q``, then deleted.

Nothing is lost: a message is acked at its source only after the broker confirmed its copy,
and a crash in between leaves a copy in both, which the workers' dedup absorbs. Run it with the
workers stopped (it refuses while ``Q`` has consumers); the ingress may keep running, and
callbacks that arrive in the instant of a switch may be answered out of order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from botrelay.shared import topology
from botrelay.shared.broker import connect
from botrelay.shared.errors import BotrelayError
from botrelay.shared.queue_changes import Mismatch, parse_refusal
from botrelay.shared.settings import Settings
from botrelay.worker.moving import move_all

HOLDING_SUFFIX = ".migrating"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue of the topology as the settings declare it, and where its callbacks come from."""

    name: str
    arguments: dict[str, Any]
    exchange: str  # the exchange it is bound to
    key: str  # its routing key ("" for the fanout of a retry queue)


@dataclass
class MigrateReport:
    changes: list[Mismatch] = field(default_factory=list)
    moved: dict[str, int] = field(default_factory=dict)


def queue_specs(settings: Settings) -> list[QueueSpec]:
    prefix = settings.prefix
    exchange = topology.exchange_name(prefix)
    specs = [QueueSpec(topology.inbound_queue(prefix), topology.inbound_arguments(settings),
                       exchange, topology.INBOUND_KEY)]
    if settings.ordering == "conversation":
        specs += [QueueSpec(topology.partition_queue(prefix, n),
                            topology.partition_arguments(settings), exchange,
                            topology.partition_key(n)) for n in range(settings.partitions)]
    specs.append(QueueSpec(topology.dead_queue(prefix), topology.dead_arguments(settings), exchange,
                           topology.DEAD_KEY))
    for seconds in settings.retry_delays:
        name = topology.retry_queue(prefix, seconds)
        specs.append(QueueSpec(name, topology.retry_arguments(settings, seconds), name, ""))
    return specs


async def _probe(connection: AbstractConnection, spec: QueueSpec) -> Mismatch | None:
    """Whether ``spec`` differs from the live queue, without changing anything: a declare with
    the wanted arguments either matches, is refused (the difference), or finds no queue."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(spec.name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None  # not there yet: the next start declares it as the settings say
    channel = await connection.channel()
    try:
        await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
        return None
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        return parse_refusal(str(exc))
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def plan(settings: Settings) -> list[Mismatch]:
    """The queues ``migrate`` would move, each with the argument that differs."""
    connection = await connect(settings, "botrelay-migrate")
    try:
        found = [await _probe(connection, spec) for spec in queue_specs(settings)]
    finally:
        await connection.close()
    return [m for m in found if m is not None]


async def migrate(settings: Settings, *, dry_run: bool = False, idle: float = 1.0,
                  out: Callable[[str], None] = print) -> MigrateReport:
    report = MigrateReport(changes=await plan(settings))
    if dry_run or not report.changes:
        return report
    specs = {spec.name: spec for spec in queue_specs(settings)}
    connection = await connect(settings, "botrelay-migrate")
    try:
        for change in report.changes:
            out(f"moving {change.queue}: {change.line()}")
            report.moved[change.queue] = await _move_queue(connection, specs[change.queue],
                                                           idle)
    finally:
        await connection.close()
    return report


async def _consumers(connection: AbstractConnection, name: str) -> int:
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.consumer_count or 0
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def _move_queue(connection: AbstractConnection, spec: QueueSpec, idle: float) -> int:
    if await _consumers(connection, spec.name):
        raise BotrelayError(f"queue {spec.name} has consumers: stop the workers (and any "
                            "`botrelay console` replaying into it) before `botrelay migrate`")
    holding = spec.name + HOLDING_SUFFIX
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await channel.set_qos(prefetch_count=200)
    # The holding queue is a plain quorum queue: no single active consumer, no length bound
    # that could refuse what is moved into it.
    held = await channel.declare_queue(holding, durable=True,
                                       arguments={"x-queue-type": "quorum"})
    moved = await _move_all(channel, spec.name, holding, idle)
    await held.bind(spec.exchange, spec.key)
    old = await channel.get_queue(spec.name, ensure=False)
    await old.unbind(spec.exchange, spec.key)
    moved += await _empty(channel, spec.name, holding, idle)
    await channel.queue_delete(spec.name)
    new = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
    await new.bind(spec.exchange, spec.key)
    await held.unbind(spec.exchange, spec.key)
    await _empty(channel, holding, spec.name, idle)
    await channel.queue_delete(holding)
    await channel.close()
    return moved


async def _move_all(channel: AbstractChannel, source: str, target: str, idle: float) -> int:
    """Move every message of ``source`` to ``target`` through the default exchange."""
    async def forward(copy: aio_pika.Message, message: AbstractIncomingMessage) -> None:
        await channel.default_exchange.publish(copy, target, mandatory=True, timeout=10)

    return await move_all(channel, source, forward, idle, prefetch=200)


async def _empty(channel: AbstractChannel, source: str, target: str, idle: float) -> int:
    """``_move_all`` until the broker counts nothing left in ``source``."""
    moved = 0
    for _ in range(100):
        moved += await _move_all(channel, source, target, idle)
        probe = await channel.declare_queue(source, passive=True)
        if not probe.declaration_result.message_count:
            return moved
    raise BotrelayError(f"queue {source} keeps filling: is a worker still publishing into it?")
