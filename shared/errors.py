"""The error hierarchy. Exceptions decide a message's fate, so their classes are the contract.

- ``PayloadError``: a callback body that is not a CometChat callback (ingress: 400; worker: dead
  letter at once, retrying cannot fix it).
- ``PermanentError``: retrying cannot help (reply API 4xx, a reply too large, user code saying so).
- ``TransientError``: worth another attempt later (reply API 5xx/429 beyond the inline budget,
  timeouts, the dedup store being unreachable).
- ``Retry``: user code asking for a later attempt, optionally after ``delay`` seconds.
"""

from __future__ import annotations


class BotrelayError(Exception):
    """Base of every error botrelay raises on purpose."""


class SettingsError(BotrelayError):
    """A setting (env var or flag) has a value botrelay cannot use."""


class PayloadError(BotrelayError):
    """The callback body is not a usable CometChat callback."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail


class PermanentError(BotrelayError):
    """Another attempt would fail the same way: dead-letter at once."""


class TransientError(BotrelayError):
    """Another attempt later may succeed."""


class Retry(BotrelayError):
    """Raised by a handler to ask for a later attempt (counted against BOTRELAY_MAX_ATTEMPTS)."""

    def __init__(
        self, delay: float | None = None, reason: str = "handler asked for a retry"
    ) -> None:
        super().__init__(reason)
        self.delay = delay


class DedupUnavailable(TransientError):
    """The dedup store cannot be reached: a reply that cannot be recorded must not be sent."""


def describe(exc: BaseException) -> str:
    """``ErrorClass: message`` for the ``x-botrelay-error`` header, one line, bounded length."""
    text = str(exc).replace("\r", " ").replace("\n", " ").strip()
    name = type(exc).__name__
    line = f"{name}: {text}" if text else name
    return line[:500]
