"""Baseline (1): an aiohttp handler that parses the callback with orjson and publishes it with
aio-pika, publisher confirms on, to a quorum queue; 200 after the confirm.

    python -m bench.baselines.ingress_baseline --port 8081 --queue NAME
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aio_pika
import orjson
import uvloop
from aiohttp import web

EXCHANGE: web.AppKey[aio_pika.abc.AbstractExchange] = web.AppKey("exchange")
QUEUE: web.AppKey[str] = web.AppKey("queue")


async def callback(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        doc = orjson.loads(body)
        key = f"{doc['appId']}:{doc['bot']}:{doc['trigger']}:{doc['data']['id']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return web.Response(status=400, body=b'{"error":"bad callback"}',
                            content_type="application/json")
    message = aio_pika.Message(body, message_id=key, content_type="application/json",
                               delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await request.app[EXCHANGE].publish(message, request.app[QUEUE], timeout=1.5)
    return web.Response(body=orjson.dumps({"status": "queued", "id": key}),
                        content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(amqp_url: str, queue: str) -> web.Application:
    app = web.Application()
    app[QUEUE] = queue

    async def broker(app: web.Application) -> AsyncIterator[None]:
        connection = await aio_pika.connect_robust(amqp_url)
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True,
                                    arguments={"x-queue-type": "quorum"})
        app[EXCHANGE] = channel.default_exchange
        yield
        await connection.close()

    app.cleanup_ctx.append(broker)
    app.router.add_post("/callback", callback)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    web.run_app(make_app(args.amqp, args.queue), host="127.0.0.1", port=args.port,
                access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
