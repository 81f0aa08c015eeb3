"""Baseline (3): the echo bot as a FastStream RabbitMQ subscriber, the peer a user would pick
instead. It acks after the reply was accepted (``AckPolicy.ACK``: FastStream acks when the
handler returns; a failed reply raises, and the message is nacked and requeued).

    python -m bench.baselines.faststream_worker --queue NAME --api-base URL [--prefetch 64]
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import orjson
import uvloop
from faststream import AckPolicy, FastStream
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue


class ReplyRefused(Exception):
    pass


def build(amqp_url: str, queue_name: str, api_base: str, api_key: str,
          prefetch: int) -> FastStream:
    broker = RabbitBroker(amqp_url, log_level=30)
    queue = RabbitQueue(queue_name, queue_type=QueueType.QUORUM, durable=True)
    headers = {"Content-Type": "application/json", "apikey": api_key}
    session: dict[str, aiohttp.ClientSession] = {}

    @broker.subscriber(queue, channel=Channel(prefetch_count=prefetch),
                       ack_policy=AckPolicy.NACK_ON_ERROR)
    async def echo(doc: dict[str, Any]) -> None:
        # FastStream decodes the JSON body and validates it against the annotation.
        data = doc["data"]
        reply = {"receiver": data["sender"], "receiverType": "user", "category": "message",
                 "type": "text", "data": {"text": f"echo: {data['data']['text']}"}}
        url = api_base.format(appId=doc["appId"]) + f"/bots/{doc['bot']}/messages"
        async with session["s"].post(url, data=orjson.dumps(reply), headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise ReplyRefused(resp.status)

    app = FastStream(broker)

    @app.on_startup
    async def open_session() -> None:
        session["s"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))

    @app.after_startup
    async def ready() -> None:
        print("consuming", flush=True)

    @app.on_shutdown
    async def close_session() -> None:
        await session["s"].close()

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", required=True)
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--api-key", default="bench-api-key")
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    app = build(args.amqp, args.queue, args.api_base, args.api_key, args.prefetch)
    uvloop.run(app.run())


if __name__ == "__main__":
    main()
