"""Logging set-up: JSON lines by default, ``text`` for humans; secrets are scrubbed on the way out.

Message lines carry ``key``, ``trigger``, ``conversation``, ``attempt`` and ``outcome`` as fields
(pass them with ``extra=``), so a log search for one dedup key finds its whole story.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from botrelay.shared.settings import Settings

FIELDS = ("key", "trigger", "conversation", "attempt", "outcome", "delay", "error", "worker",
          "text")

# Belt and braces: the code never logs secrets, and this catches what a library might.
_SECRET_PATTERNS = (
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:basic|bearer)\s+[A-Za-z0-9+/=._-]+"),
    re.compile(r"(?i)(apikey['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
    re.compile(r"(amqps?://[^:/@\s]+:)[^@\s]+(@)"),
    re.compile(r"(rediss?://[^:/@\s]*:)[^@\s]+(@)"),
)


def _mask(match: re.Match[str]) -> str:
    """Keep the label (group 1) and any closing delimiter (group 2); hide what is between."""
    suffix = match.group(2) if match.re.groups >= 2 else ""
    return f"{match.group(1)}***{suffix}"


class Redactor(logging.Filter):
    """Replaces configured secret values and secret-looking patterns with ``***``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 3]

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(_mask, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(record.getMessage())
        record.args = None
        for name in FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, self.scrub(value))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def describe(exc: BaseException) -> str:
    """One line saying what went wrong: the error's class, then the words of what caused it.

    A class name alone hides the cause an operator needs: a TLS certificate that failed to verify
    reaches botrelay as aiormq's ``AMQPConnectionError`` (its message a bare errno tuple, the
    ``ssl.SSLCertVerificationError`` as its ``__cause__``) or as redis-py's ``ConnectionError``,
    and both read the same as a refused port. So the message is that of the innermost explicit
    cause (``raise ... from``), else the error's own; no message, the class name only. The lines
    this goes into are scrubbed of secrets like any other (``Redactor``)."""
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).strip() or str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_text:
            doc["exc"] = record.exc_text
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(
            f"{name}={getattr(record, name)}" for name in FIELDS
            if getattr(record, name, None) is not None
        )
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line = f"{line} [{extras}]"
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        return line


class ParserErrors(logging.Filter):
    """aiohttp logs each request its HTTP parser refuses (a bad chunk size, Content-Length with
    Transfer-Encoding, a NUL in a header) at error level with a traceback, although it already
    answered 400. Hostile traffic must not flood the error log: one warning line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = (exc.message or type(exc).__name__).strip().splitlines()[0]
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "refused a malformed HTTP request (400): %s", (reason,)
            record.exc_info, record.exc_text = None, None
        return True


def secrets_of(settings: Settings) -> list[str]:
    values = [settings.callback_password, settings.callback_previous_password,
              settings.cometchat_api_key]
    for app in settings.file_apps:
        values.append(app.api_key)
        values.extend(password for _, password in app.callback)
    for url in (*settings.amqp_urls, settings.redis_url):
        if url and "@" in url and "://" in url:
            creds = url.split("://", 1)[1].rsplit("@", 1)[0]
            if ":" in creds:
                values.append(creds.split(":", 1)[1])
    return [v for v in values if v]


def configure(settings: Settings, *, stream: Any = None) -> None:
    """Install one handler on the root logger, formatted and scrubbed per ``settings``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(Redactor(secrets_of(settings)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # aiormq/aio-pika log every failed connect and reconnect attempt with tracebacks; botrelay
    # logs those itself in one line, so theirs show only when debugging.
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(
            logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ParserErrors) for f in server.filters):
        server.addFilter(ParserErrors())
