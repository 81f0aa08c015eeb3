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


def _find(env: str, local: str, port: int, start: Any, what: str, hint: str) -> str:
    """``env`` if set, else ``local`` if listening, else a container from ``start()``."""
    url = os.environ.get(env)
    if url:
        return url
    if _listening(local, port):
        return local
    if _docker_available():
        container, scheme, path = start()
        _containers.append(container)
        host = container.get_container_host_ip()
        return f"{scheme}{host}:{container.get_exposed_port(port)}{path}"
    raise RuntimeError(_missing(what, env, hint))


def _rabbitmq() -> tuple[Any, str, str]:
    from testcontainers.rabbitmq import RabbitMqContainer

    return RabbitMqContainer("rabbitmq:4-management").start(), "amqp://guest:guest@", "/"


def _redis() -> tuple[Any, str, str]:
    from testcontainers.redis import RedisContainer

    return RedisContainer("redis:7").start(), "redis://", "/0"


def amqp_url() -> str:
    return _find("BOTRELAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/", 5672,
                 _rabbitmq, "RabbitMQ", "rabbitmq-server -detached")


def redis_url() -> str:
    return _find("BOTRELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0", 6379, _redis, "Redis",
                 "redis-server --daemonize yes --port 6379")


def stop_containers() -> None:
    for container in _containers:
        container.stop()
    _containers.clear()
