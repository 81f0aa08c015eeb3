"""The reply client against the fake reply API: retries, Retry-After, permanent errors, hangs."""

from __future__ import annotations

import time

import pytest

from botrelay.shared.errors import PermanentError, TransientError
from botrelay.shared.fake_cometchat import FakeCometChat, FakeConfig, RunningFake
from botrelay.shared.settings import Settings
from botrelay.worker.reply_client import ReplyClient, ReplyRejected, retry_after_seconds

BODY = {"receiver": "cometchat-uid-1", "receiverType": "user", "category": "message",
        "type": "text", "data": {"text": "echo: hi"}, "muid": "br-1"}


def _settings(fake: RunningFake, **extra: object) -> Settings:
    values: dict[str, object] = {"cometchat_api_base": fake.base, "cometchat_api_key": "k-123",
                                 "cometchat_app_id": "app1", "reply_timeout": 0.5,
                                 "reply_budget": 4.0}
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


async def _send(config: FakeConfig, **extra: object) -> tuple[FakeCometChat, float, object]:
    async with RunningFake(FakeCometChat(config)) as fake:
        client = ReplyClient(_settings(fake, **extra))
        started = time.monotonic()
        try:
            result: object = await client.send(client.url("app1", "demo_bot"), BODY)
        except Exception as exc:
            result = exc
        finally:
            await client.close()
        return fake.fake, time.monotonic() - started, result


async def test_429_with_retry_after_waits_then_sends_once() -> None:
    fake, elapsed, result = await _send(FakeConfig(fail_first=1, fail_status=429))
    assert isinstance(result, dict)
    assert fake.statuses == {429: 1, 200: 1}
    assert len(fake.replies) == 1
    assert 0.9 <= elapsed < 2.0  # Retry-After: 1 honoured, not the short backoff


async def test_503_twice_then_200() -> None:
    fake, _, result = await _send(FakeConfig(fail_first=2, fail_status=503))
    assert isinstance(result, dict)
    assert fake.statuses == {503: 2, 200: 1}
    assert len(fake.replies) == 1
    assert fake.replies[0].apikey == "k-123"
    assert fake.replies[0].path == "/app1/v3/bots/demo_bot/messages"


async def test_400_is_permanent_and_not_retried() -> None:
    fake, _, result = await _send(FakeConfig(status_for_receiver={"cometchat-uid-1": 400}))
    assert isinstance(result, ReplyRejected) and isinstance(result, PermanentError)
    assert result.status == 400
    assert fake.requests == 1


async def test_hang_times_out_and_retries() -> None:
    fake, elapsed, result = await _send(FakeConfig(hang_first=1))
    assert isinstance(result, dict)
    assert fake.requests == 2
    assert len(fake.replies) == 1
    assert 0.5 <= elapsed < 2.0


async def test_budget_exhausted_is_transient() -> None:
    fake, elapsed, result = await _send(FakeConfig(fail_rate=1.0, fail_status=500),
                                        reply_budget=1.0)
    assert isinstance(result, TransientError)
    assert fake.requests >= 2
    assert elapsed < 2.5


async def test_retry_after_longer_than_budget_gives_up_at_once() -> None:
    # A 429 asking for 1 s with only 0.5 s of budget left goes to the retry queues now.
    fake, elapsed, result = await _send(FakeConfig(fail_first=5, fail_status=429),
                                        reply_budget=0.5)
    assert isinstance(result, TransientError)
    assert fake.requests == 1
    assert elapsed < 0.5


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Retry-After": "3"}, 3.0),
    ({"retry-after": "0.5"}, 0.5),
    ({"X-RateLimit-Reset": "1700000010"}, 10.0),
    ({"X-Rate-Limit-Reset": "1700000010000"}, 10.0),  # milliseconds
    ({"Retry-After": "Tue, 14 Nov 2023 22:13:30 GMT"}, 10.0),
    ({}, None),
])
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    from multidict import CIMultiDict

    assert retry_after_seconds(CIMultiDict(headers), now=1_700_000_000.0) == expected
