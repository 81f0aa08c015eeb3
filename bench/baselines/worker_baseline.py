"""Baseline (2): an aio-pika consumer with the same prefetch as botrelay's worker that parses each
callback, POSTs the echo reply to the reply API with one aiohttp session, and acks.

    python -m bench.baselines.worker_baseline --queue NAME --api-base URL [--prefetch 64]
"""

from __future__ import annotations

import argparse
import asyncio

import aio_pika
import aiohttp
import orjson
import uvloop


async def run(amqp_url: str, queue_name: str, api_base: str, api_key: str,
              prefetch: int) -> None:
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.declare_queue(queue_name, durable=True,
                                        arguments={"x-queue-type": "quorum"})
    headers = {"Content-Type": "application/json", "apikey": api_key}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            doc = orjson.loads(message.body)
            data = doc["data"]
            reply = {"receiver": data["sender"], "receiverType": "user", "category": "message",
                     "type": "text", "data": {"text": f"echo: {data['data']['text']}"}}
            url = api_base.format(appId=doc["appId"]) + f"/bots/{doc['bot']}/messages"
            try:
                async with session.post(url, data=orjson.dumps(reply), headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                await message.ack()
            else:
                await message.nack(requeue=True)

        await queue.consume(on_message)
        print("consuming", flush=True)
        await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", required=True)
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--api-key", default="bench-api-key")
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    uvloop.run(run(args.amqp, args.queue, args.api_base, args.api_key, args.prefetch))


if __name__ == "__main__":
    main()
