"""Log lines: JSON by default, text on request, message fields kept, secrets never written."""

from __future__ import annotations

import base64
import io
import logging
import ssl
from collections.abc import Iterator

import orjson
import pytest
from aiormq.exceptions import AMQPConnectionError

from botrelay.shared import logs
from botrelay.shared.settings import Settings

API_KEY = "ak-0123456789abcdef"
PASSWORD = "hunter2-callback"
SETTINGS = Settings(callback_username="relay", callback_password=PASSWORD,
                    cometchat_api_key=API_KEY, amqp_url="amqp://relay:brokerpw@mq:5672/",
                    redis_url="redis://:redispw@cache:6379/0")


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    yield stream, logging.getLogger("botrelay.test")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_json_lines_carry_the_message_fields(capture):
    stream, log = capture
    logs.configure(SETTINGS, stream=stream)
    log.info("settled", extra={"key": "app:bot:after_message:1", "trigger": "after_message",
                               "conversation": "c1", "attempt": 2, "outcome": "replied"})
    doc = orjson.loads(stream.getvalue().splitlines()[-1])
    assert doc["msg"] == "settled" and doc["level"] == "info"
    assert {k: doc[k] for k in ("key", "trigger", "conversation", "attempt", "outcome")} == {
        "key": "app:bot:after_message:1", "trigger": "after_message", "conversation": "c1",
        "attempt": 2, "outcome": "replied"}


def test_text_format_for_humans(capture):
    stream, log = capture
    logs.configure(SETTINGS.replace(log_format="text"), stream=stream)
    log.warning("retrying later", extra={"key": "k1", "attempt": 1, "outcome": "retried"})
    line = stream.getvalue().splitlines()[-1]
    assert "WARNING" in line and "retrying later" in line
    assert "[key=k1 attempt=1 outcome=retried]" in line


def test_debug_lines_are_dropped_at_info(capture):
    stream, log = capture
    logs.configure(SETTINGS, stream=stream)
    log.debug("message text", extra={"text": "private words"})
    assert "private words" not in stream.getvalue()


def test_secrets_are_scrubbed_from_messages_fields_and_tracebacks(capture):
    stream, log = capture
    logs.configure(SETTINGS.replace(log_level="DEBUG"), stream=stream)
    token = base64.b64encode(f"relay:{PASSWORD}".encode()).decode()
    log.info("headers %s", {"Authorization": f"Basic {token}", "apikey": API_KEY})
    log.info("connecting to amqp://relay:brokerpw@mq:5672/ and redis://:redispw@cache:6379/0")
    log.warning("failed", extra={"error": f"sent apikey={API_KEY}", "key": "k"})
    try:
        raise RuntimeError(f"bad password {PASSWORD}")
    except RuntimeError:
        log.exception("boom")
    out = stream.getvalue()
    for secret in (API_KEY, PASSWORD, token, "brokerpw", "redispw"):
        assert secret not in out
    assert out.count("***") >= 6


def _raised_from(outer: BaseException, cause: BaseException) -> BaseException:
    """``outer`` as ``raise outer from cause`` leaves it."""
    outer.__cause__ = cause
    return outer


def test_describe_names_the_cause_a_wrapper_hides() -> None:
    verify = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate")
    # aiormq re-raises the OS error's args (here an errno tuple) with the TLS error as cause.
    wrapped = _raised_from(AMQPConnectionError(*verify.args), verify)
    assert logs.describe(wrapped) == (
        "AMQPConnectionError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
        "self-signed certificate")


def test_describe_keeps_an_errors_own_words_and_names_a_silent_one() -> None:
    assert logs.describe(ConnectionError("Error 111 connecting to cache:6379.")) == (
        "ConnectionError: Error 111 connecting to cache:6379.")
    assert logs.describe(TimeoutError()) == "TimeoutError"
    assert logs.describe(_raised_from(TimeoutError("no answer"), OSError())) == (
        "TimeoutError: no answer")
