"""Cluster settings: a node list in BOTRELAY_AMQP_URL, the quorum size, Sentinel, and what they
change in the queue arguments, the Redis client and the log scrubbing."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from botrelay.shared import topology
from botrelay.shared.errors import SettingsError
from botrelay.shared.logs import secrets_of
from botrelay.shared.redis_connect import make_redis, url_options
from botrelay.shared.settings import Settings

NODES = "amqp://u:pw1@a:5672/, amqp://u:pw2@b:5672/,amqps://u:pw3@c:5671/"


def test_one_url_is_the_single_node_default() -> None:
    s = Settings.from_env({})
    assert s.amqp_urls == ("amqp://guest:guest@localhost:5672/",)
    assert s.quorum_group_size is None
    # No new argument: queues declared before stay equivalent to their declaration.
    assert "x-quorum-initial-group-size" not in topology.inbound_arguments(s)
    assert not s.redis_enabled


def test_a_list_of_nodes() -> None:
    s = Settings.from_env({"BOTRELAY_AMQP_URL": NODES})
    assert s.amqp_urls == ("amqp://u:pw1@a:5672/", "amqp://u:pw2@b:5672/",
                           "amqps://u:pw3@c:5671/")
    assert s.quorum_group_size == 3
    for arguments in (topology.inbound_arguments(s), topology.dead_arguments(s),
                      topology.retry_arguments(s, 5.0)):
        assert arguments["x-quorum-initial-group-size"] == 3
        assert arguments["x-queue-leader-locator"] == "balanced"
        assert arguments["x-queue-type"] == "quorum"


@pytest.mark.parametrize(("nodes", "size"), [(2, 1), (3, 3), (4, 3), (5, 5), (7, 5)])
def test_default_quorum_size_is_odd_and_at_most_5(nodes: int, size: int) -> None:
    urls = ",".join(f"amqp://h{i}/" for i in range(nodes))
    assert Settings.from_env({"BOTRELAY_AMQP_URL": urls}).quorum_group_size == size


def test_quorum_size_setting_wins() -> None:
    s = Settings.from_env({"BOTRELAY_AMQP_URL": NODES, "BOTRELAY_QUORUM_SIZE": "5"})
    assert s.quorum_group_size == 5
    single = Settings.from_env({"BOTRELAY_QUORUM_SIZE": "3"})
    assert topology.inbound_arguments(single)["x-quorum-initial-group-size"] == 3


@pytest.mark.parametrize(("env", "message"), [
    ({"BOTRELAY_AMQP_URL": "a:5672,b:5672"}, "amqp://"),
    ({"BOTRELAY_AMQP_URL": " , "}, "BOTRELAY_AMQP_URL"),
    ({"BOTRELAY_QUORUM_SIZE": "0"}, "positive"),
    ({"BOTRELAY_REDIS_SENTINELS": "a:1,b"}, "host:port"),
    ({"BOTRELAY_REDIS_SENTINELS": "a:99999"}, "host:port"),
    ({"BOTRELAY_REDIS_SENTINELS": "a:26379"}, "both"),
    ({"BOTRELAY_REDIS_SENTINEL_MASTER": "mymaster"}, "both"),
])
def test_bad_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_every_node_password_is_scrubbed_from_logs() -> None:
    s = Settings.from_env({"BOTRELAY_AMQP_URL": NODES,
                           "BOTRELAY_REDIS_URL": "rediss://:redispw@/2"})
    assert {"pw1", "pw2", "pw3", "redispw"} <= set(secrets_of(s))


def test_sentinel_settings_make_a_sentinel_client() -> None:
    s = Settings.from_env({"BOTRELAY_REDIS_SENTINELS": "10.0.0.1:26379,[::1]:26380",
                           "BOTRELAY_REDIS_SENTINEL_MASTER": "mymaster",
                           "BOTRELAY_REDIS_URL": "rediss://:secret@ignored/3"})
    assert s.redis_sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert s.redis_enabled
    client = make_redis(s, max_connections=4)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    kwargs = pool.connection_kwargs
    assert (kwargs["password"], kwargs["db"], kwargs["socket_timeout"]) == ("secret", 3, 2.0)


def test_url_options() -> None:
    assert url_options("rediss://user:p%40ss@h:6380/1") == {
        "username": "user", "password": "p@ss", "db": 1, "ssl": True}
    assert url_options("redis://h:6379") == {}
    assert url_options(None) == {}


def test_plain_url_makes_a_plain_client() -> None:
    s = Settings.from_env({"BOTRELAY_REDIS_URL": "redis://127.0.0.1:6379/0"})
    client = make_redis(s)
    assert not isinstance(client.connection_pool, SentinelConnectionPool)
    with pytest.raises(ValueError, match="no Redis"):
        make_redis(Settings())
