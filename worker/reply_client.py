"""The reply client: keep-alive connections (``worker.http_client``), tenacity around each POST,
``Retry-After`` honoured.

Only what ``RETRYABLE`` names is retried, and only within the inline budget
(``BOTRELAY_REPLY_BUDGET``); past it, the failure becomes a ``TransientError`` and the message
takes the slow path through a retry queue. A 4xx other than 408/429 is ``ReplyRejected``
(permanent): the request itself is wrong and sending it again cannot help.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from botrelay.shared.errors import PermanentError, TransientError
from botrelay.shared.identity import UID, matches
from botrelay.shared.metrics import WorkerMetrics
from botrelay.shared.settings import Settings
from botrelay.worker.http_client import HttpClient, HttpError
from botrelay.worker.rate_limit import RateLimiter, make_limiter
from botrelay.worker.reply_lookup import Lookup, stored

log = logging.getLogger("botrelay.reply")

# Longest wait botrelay accepts from a Retry-After; more than this goes to the retry queues.
MAX_RETRY_AFTER = 120.0


class ReplyRejected(PermanentError):
    """The reply API refused the request (4xx other than 408/429)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"reply API answered {status}: {detail}")
        self.status = status


class ReplyFailed(TransientError):
    """The reply API answered 408, 429 or 5xx; ``retry_after`` is its hint in seconds."""

    def __init__(self, status: int, detail: str, retry_after: float | None) -> None:
        super().__init__(f"reply API answered {status}: {detail}")
        self.status = status
        self.retry_after = retry_after


# The single definition of what the reply client retries: 408/429/5xx, a connection that failed
# or closed mid-answer, an answer that is not HTTP at all (a broken proxy in between), and no
# answer within BOTRELAY_REPLY_TIMEOUT. Only a request that never reached the server is sent
# again below this (``worker.http_client``); each of these is a counted attempt.
RETRYABLE: tuple[type[BaseException], ...] = (
    ReplyFailed,
    HttpError,
    asyncio.TimeoutError,
)

_RETRY_STATUSES = frozenset({408, 429})


def retry_after_seconds(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or ``X-RateLimit-Reset`` /
    ``X-Rate-Limit-Reset`` (Unix time, seconds or ms); header names are case-insensitive."""
    now = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if "," in value else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - now)
    for name in ("X-RateLimit-Reset", "X-Rate-Limit-Reset"):
        value = headers.get(name)
        if value:
            try:
                reset = float(value)
            except ValueError:
                continue
            if reset > 1e12:  # milliseconds
                reset /= 1000
            return max(0.0, reset - now)
    return None


class _Wait:
    """Exponential backoff with jitter, or exactly what the server asked for."""

    def __init__(self) -> None:
        self.backoff = wait_exponential_jitter(multiplier=0.1, max=4.0, jitter=0.2)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ReplyFailed) and exc.retry_after is not None:
            return min(exc.retry_after, MAX_RETRY_AFTER)
        return float(self.backoff(state))


class _BudgetSpent:
    """Stop when the next wait would end past the budget, counted from the first attempt (as
    ``stop_before_delay`` does from the start of the retry loop)."""

    def __init__(self, started: float, budget: float) -> None:
        self.started, self.budget = started, budget

    def __call__(self, state: RetryCallState) -> bool:
        return time.monotonic() - self.started + (state.upcoming_sleep or 0.0) >= self.budget


class UnknownApp(PermanentError):
    """A message for an app this worker is not configured for: nothing is sent anywhere."""


class ReplyClient:
    """Replies for the configured apps only. The URL and the API key of a reply both come from
    the configured app its ``appId`` selects; a payload value never names a host, and a key is
    only ever sent to its own app's API base."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None,
                 limiter: RateLimiter | None = None, user_agent: str | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        # Outbound rate limit per app (the API base names it) and per receiver.
        self.limiter = limiter or make_limiter(settings, metrics)
        self._bases: dict[str, str] = {}  # app id -> API base
        self._pools: dict[str, HttpClient] = {}  # API base -> its connections, with its key
        for app in settings.apps_by_id().values():
            base = app.api_base(settings.cometchat_api_base)
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if app.api_key:
                headers["apikey"] = app.api_key
            # Names the sending worker in the API provider's logs (and in the fake's record).
            headers["User-Agent"] = user_agent or "botrelay-worker"
            self._bases[app.id] = base
            self._pools[base] = HttpClient(limit=max(100, settings.concurrency * 2),
                                           connect_timeout=settings.reply_timeout,
                                           read_timeout=settings.reply_timeout,
                                           headers=headers)
        self._wait = _Wait()
        # Before re-posting a reply whose answer never came: is it stored already?
        self.lookup: Lookup | None = None

    def url(self, app_id: str, bot: str) -> str:
        """The reply URL for ``bot`` of configured app ``app_id``; ``UnknownApp`` otherwise."""
        base = self._bases.get(app_id)
        if base is None:
            raise UnknownApp(f"app {app_id!r} is not configured (BOTRELAY_COMETCHAT_APP_ID or "
                             "BOTRELAY_COMETCHAT_APPS_FILE): no reply sent")
        if not matches(UID, bot):
            raise PermanentError(f"bot uid {bot!r} is not a CometChat UID: no reply sent")
        return f"{base}/bots/{quote(bot, safe='')}/messages"

    async def get(self, url: str, params: Mapping[str, str]) -> tuple[int, bytes]:
        """GET ``url`` (``{base}/messages``, the reply lookup) with the key of the app whose API
        base it is on, and only then."""
        pool = self._pools.get(url.rsplit("/", 1)[0])
        if pool is None:
            raise UnknownApp("a lookup URL outside the configured apps' API bases")
        async with asyncio.timeout(self.settings.reply_timeout):
            resp = await pool.get(f"{url}?{urlencode(dict(params))}")
        return resp.status, resp.body

    async def send(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one reply, retrying within the budget; the API's ``data`` on success."""
        payload = orjson.dumps(body)
        receiver = str(body.get("receiver"))
        started = time.monotonic()
        # Most replies succeed at once: the retry machinery is set up only after a failure.
        try:
            return await self._attempt(url, payload, receiver)
        except RETRYABLE as exc:
            first: BaseException | None = exc
        last: BaseException | None = None
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RETRYABLE),
            stop=_BudgetSpent(started, self.settings.reply_budget),
            wait=self._wait,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if first is not None:  # the attempt made above: tenacity decides what next
                        last, first = first, None
                        raise last
                    # No status came back (lost answer, timeout): it may be stored already.
                    if not isinstance(last, ReplyFailed):
                        stored = await self._stored(url, body)
                        if stored is None:  # cannot tell: the worker retries it later
                            raise TransientError(f"reply API unreachable: {last!r}")
                        if stored:
                            return {}
                    try:
                        return await self._attempt(url, payload, receiver)
                    except BaseException as exc:
                        last = exc
                        raise
        except RETRYABLE as exc:
            if isinstance(exc, TransientError):
                raise
            raise TransientError(f"reply API unreachable: {type(exc).__name__} {exc}") from exc
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _stored(self, url: str, body: dict[str, Any]) -> bool | None:
        """Asks ``lookup`` (``worker.reply_lookup``; set by the worker) whether an attempt
        whose answer never came was stored after all; None when it cannot tell."""
        return await stored(self.lookup, url, body)

    async def _attempt(self, url: str, payload: bytes, receiver: str) -> dict[str, Any]:
        if self.limiter is not None:
            await self.limiter.acquire(_app_of(url), receiver)
        return await self._post(url, payload)

    async def _post(self, url: str, payload: bytes) -> dict[str, Any]:
        started = time.perf_counter()
        status = "error"
        try:
            pool = self._pools.get(_app_of(url))
            if pool is None:  # only url() makes URLs: anything else is never sent, key or not
                raise UnknownApp("a reply URL outside the configured apps' API bases")
            async with asyncio.timeout(self.settings.reply_timeout):
                resp = await pool.post(url, payload)
            status = str(resp.status)
            if 200 <= resp.status < 300:
                return _data(resp.body)
            detail = _detail(resp.body)
            if resp.status in _RETRY_STATUSES or resp.status >= 500:
                retry_after = retry_after_seconds(resp.headers)
                if resp.status == 429 and self.limiter is not None:
                    await self.limiter.slow_down(_app_of(url), retry_after)
                raise ReplyFailed(resp.status, detail, retry_after)
            raise ReplyRejected(resp.status, detail)
        finally:
            if self.metrics is not None:
                self.metrics.reply_requests.labels(status).inc()
                self.metrics.reply_seconds.observe(time.perf_counter() - started)

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        if self.limiter is not None:
            await self.limiter.close()


def _app_of(url: str) -> str:
    """The rate-limit key of a reply URL: its API base, which names the app."""
    return url.rsplit("/bots/", 1)[0]


def _data(raw: bytes) -> dict[str, Any]:
    # A 2xx means the API stored the message; an odd body must not make us send it again.
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    data = doc.get("data") if isinstance(doc, dict) else None
    return data if isinstance(data, dict) else {}


def _detail(raw: bytes) -> str:
    """The API's error code and message, short; never the request (it holds no secret, but
    the response is all the operator needs)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace") or "no body"
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        return f"{error.get('code', '')} {error.get('message', '')}".strip()[:300]
    return str(doc)[:300]
