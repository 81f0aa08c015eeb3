"""One way to make a Redis client from the settings: a URL, or the primary Sentinel names.

With ``BOTRELAY_REDIS_SENTINELS`` and ``BOTRELAY_REDIS_SENTINEL_MASTER`` the client asks the
sentinels where the primary is each time it opens a connection. When the primary dies, its
connections fail (callers see ``ConnectionError`` and treat it as the store being briefly
unavailable, as for any Redis outage); a demoted primary answers writes with ``READONLY``, which
redis-py turns into a disconnect. Either way the next connection goes to the primary the sentinels
promoted, so every user of the client (the dedup store, the batched scripts, the partition leases,
the rate limiter) follows a failover within the sentinels' ``down-after-milliseconds`` plus the
election, a few seconds.

``BOTRELAY_REDIS_URL`` may be set beside the sentinels: its password, database number and scheme
(``rediss://`` for TLS) then apply to the primary; its host is not used.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from botrelay.shared.settings import Settings

# Fail over promptly: a call on a dead primary must not hang longer than this.
SOCKET_TIMEOUT = 2.0
# Retries of one call while the sentinels promote a new primary (see ``failover_retry``).
FAILOVER_RETRIES = 20
# About as long as those retries last: how long a caller waits out a failover in Sentinel mode.
FAILOVER_WAIT = 10.0


def make_redis(settings: Settings, **options: Any) -> aioredis.Redis:
    """A client for the configured Redis; ``options`` (timeouts, pool size) apply to it.

    Raises ``ValueError`` when no Redis is configured: callers check ``redis_enabled`` first."""
    options.setdefault("socket_timeout", SOCKET_TIMEOUT)
    options.setdefault("socket_connect_timeout", SOCKET_TIMEOUT)
    if settings.redis_sentinels:
        assert settings.redis_sentinel_master  # Settings.check() requires both
        primary = {**failover_retry(), **options, **url_options(settings.redis_url)}
        # The sentinels themselves are asked with short timeouts and no password of the
        # primary's (a sentinel has its own, rarely set).
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(settings.redis_sentinels),
            sentinel_kwargs={"socket_timeout": options["socket_timeout"],
                             "socket_connect_timeout": options["socket_connect_timeout"]},
            **primary,
        )
        client: aioredis.Redis = sentinel.master_for(settings.redis_sentinel_master)
        return client
    if not settings.redis_url:
        raise ValueError("no Redis configured: set BOTRELAY_REDIS_URL or BOTRELAY_REDIS_SENTINELS")
    return aioredis.Redis.from_url(settings.redis_url, **options)


def failover_retry() -> dict[str, Any]:
    """Sentinel mode: a call that meets a dead or demoted primary is retried, with backoff, for
    up to about 9 s, which covers a failover (about 2-4 s measured with down-after-milliseconds
    1000). So the callers wait out a failover instead of failing: a worker keeps a conversation's
    messages in order through it rather than delaying some of them. A call retried after its
    first try did run (the answer was lost with the connection) is harmless: a claim run again
    with its own token claims again, and every other script leaves the same state when it runs
    twice."""
    return {
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), FAILOVER_RETRIES),
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    }


def url_options(url: str | None) -> dict[str, Any]:
    """What a ``redis://`` or ``rediss://`` URL says besides where the server is."""
    if not url:
        return {}
    parsed = urlparse(url)
    out: dict[str, Any] = {}
    if parsed.username:
        out["username"] = unquote(parsed.username)
    if parsed.password:
        out["password"] = unquote(parsed.password)
    path = parsed.path.lstrip("/")
    if path.isdigit():
        out["db"] = int(path)
    if parsed.scheme == "rediss":
        out["ssl"] = True
    return out
