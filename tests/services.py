"""Where the tests find RabbitMQ and Redis: an env var, else localhost, else testcontainers
(when a Docker engine is there), else a failure that says what to do."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import Any
from urllib.parse import urlparse

_containers: list[Any] = []


def _listening(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1",
                                       parsed.port or default_port), timeout=1.0):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _missing(what: str, env: str, start: str) -> str:
    return (f"no {what} for the tests: set {env}, or start one on localhost ({start}), "
            "or run a Docker engine so testcontainers can start one")


def amqp_url() -> str:
    url = os.environ.get("BOTRELAY_TEST_AMQP_URL")
    if url:
        return url
    local = "amqp://guest:guest@127.0.0.1:5672/"
    if _listening(local, 5672):
        return local
    if _docker_available():
        from testcontainers.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer("rabbitmq:4-management").start()
        _containers.append(container)
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)
        return f"amqp://guest:guest@{host}:{port}/"
    raise RuntimeError(_missing("RabbitMQ", "BOTRELAY_TEST_AMQP_URL", "rabbitmq-server -detached"))


def redis_url() -> str:
    url = os.environ.get("BOTRELAY_TEST_REDIS_URL")
    if url:
        return url
    local = "redis://127.0.0.1:6379/0"
    if _listening(local, 6379):
        return local
    if _docker_available():
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7").start()
        _containers.append(container)
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        return f"redis://{host}:{port}/0"
    raise RuntimeError(_missing("Redis", "BOTRELAY_TEST_REDIS_URL",
                                "redis-server --daemonize yes --port 6379"))


def stop_containers() -> None:
    for container in _containers:
        container.stop()
    _containers.clear()
