"""One typed settings object, read from ``BOTRELAY_*`` env vars; command-line flags override.

This module is the only place that reads ``os.environ``. Everything else receives a ``Settings``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from botrelay.shared.errors import SettingsError

DEFAULT_API_BASE = "https://{appId}.api-{region}.cometchat.io/v3"

LogFormat = Literal["json", "text"]
Ordering = Literal["conversation", "none"]
ConsoleAuth = Literal["basic", "none"]


def _delays(raw: str) -> tuple[float, ...]:
    values = tuple(float(part) for part in raw.split(",") if part.strip())
    if not values or any(v <= 0 for v in values):
        raise ValueError("expected a comma-separated list of positive seconds, e.g. 1,5,30")
    return values


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return raw

    return parse


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("expected a positive integer")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("expected a positive number")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("expected zero or a positive number")
    return value


def _env(name: str, parse: Callable[[str], Any] = str) -> Any:
    """Field metadata: which env var feeds the field and how to parse it."""
    return {"env": name, "parse": parse}


@dataclass(frozen=True, slots=True)
class Settings:
    amqp_url: str = field(
        default="amqp://guest:guest@localhost:5672/",
        repr=False,  # may carry a password
        metadata=_env("BOTRELAY_AMQP_URL"),
    )
    prefix: str = field(default="botrelay", metadata=_env("BOTRELAY_PREFIX"))
    redis_url: str | None = field(default=None, repr=False, metadata=_env("BOTRELAY_REDIS_URL"))
    callback_username: str | None = field(
        default=None, metadata=_env("BOTRELAY_CALLBACK_USERNAME")
    )
    callback_password: str | None = field(
        default=None, repr=False, metadata=_env("BOTRELAY_CALLBACK_PASSWORD")
    )
    cometchat_api_key: str | None = field(
        default=None, repr=False, metadata=_env("BOTRELAY_COMETCHAT_API_KEY")
    )
    cometchat_api_base: str = field(
        default=DEFAULT_API_BASE, metadata=_env("BOTRELAY_COMETCHAT_API_BASE")
    )
    concurrency: int = field(default=64, metadata=_env("BOTRELAY_CONCURRENCY", _positive_int))
    retry_delays: tuple[float, ...] = field(
        default=(1.0, 5.0, 30.0, 120.0, 600.0), metadata=_env("BOTRELAY_RETRY_DELAYS", _delays)
    )
    max_attempts: int = field(default=6, metadata=_env("BOTRELAY_MAX_ATTEMPTS", _positive_int))
    dedup_ttl: int = field(default=86400, metadata=_env("BOTRELAY_DEDUP_TTL", _positive_int))
    # A claim outlives a worker that died holding it by at most this long; it must cover the
    # handler timeout plus the inline reply budget, or a slow but live worker could lose its claim.
    dedup_lease: float = field(
        default=30.0, metadata=_env("BOTRELAY_DEDUP_LEASE", _positive_float)
    )
    max_body: int = field(default=262144, metadata=_env("BOTRELAY_MAX_BODY", _positive_int))
    publish_timeout: float = field(
        default=1.5, metadata=_env("BOTRELAY_PUBLISH_TIMEOUT", _positive_float)
    )
    log_format: LogFormat = field(
        default="json", metadata=_env("BOTRELAY_LOG_FORMAT", _choice("json", "text"))
    )
    log_level: str = field(
        default="INFO",
        metadata=_env("BOTRELAY_LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR")),
    )
    handler_timeout: float = field(
        default=10.0, metadata=_env("BOTRELAY_HANDLER_TIMEOUT", _positive_float)
    )
    reply_timeout: float = field(
        default=3.0, metadata=_env("BOTRELAY_REPLY_TIMEOUT", _positive_float)
    )
    reply_budget: float = field(
        default=8.0, metadata=_env("BOTRELAY_REPLY_BUDGET", _positive_float)
    )
    shutdown_grace: float = field(
        default=25.0, metadata=_env("BOTRELAY_SHUTDOWN_GRACE", _positive_float)
    )
    inbound_max_length: int = field(
        default=1_000_000, metadata=_env("BOTRELAY_INBOUND_MAX_LENGTH", _positive_int)
    )
    ordering: Ordering = field(
        default="conversation",
        metadata=_env("BOTRELAY_ORDERING", _choice("conversation", "none")),
    )
    partitions: int = field(default=16, metadata=_env("BOTRELAY_PARTITIONS", _positive_int))
    host: str = field(default="0.0.0.0", metadata=_env("BOTRELAY_HOST"))
    port: int = field(default=8080, metadata=_env("BOTRELAY_PORT", _positive_int))
    metrics_port: int | None = field(
        default=9100, metadata=_env("BOTRELAY_METRICS_PORT", int)
    )
    uvloop: bool = field(default=True, metadata=_env("BOTRELAY_UVLOOP", _bool))
    # Outbound rate limits, in reply requests per minute (0 = no limit). CometChat publishes
    # about 20,000 requests/min per app; the per-receiver limit is off unless set.
    rate_limit_app: float = field(
        default=20_000.0, metadata=_env("BOTRELAY_RATE_LIMIT_APP", _non_negative_float)
    )
    rate_limit_receiver: float = field(
        default=0.0, metadata=_env("BOTRELAY_RATE_LIMIT_RECEIVER", _non_negative_float)
    )
    # A client must deliver the whole callback body within this; a slow one gets 408, so
    # dribbling bodies cannot hold ingress connections and memory open.
    body_timeout: float = field(
        default=5.0, metadata=_env("BOTRELAY_BODY_TIMEOUT", _positive_float)
    )

    # The ingress's disk spool (``ingress/spool.py``): unset, a callback the broker cannot take
    # is answered 503; set, it is kept on disk, answered 200 "spooled" and forwarded later.
    # Off by default because the directory must be on a volume that outlives the process (and is
    # one per replica); compose.yaml and deploy/k8s turn it on.
    spool_dir: str | None = field(default=None, metadata=_env("BOTRELAY_SPOOL_DIR"))
    spool_max_bytes: int = field(
        default=1024 * 1024 * 1024, metadata=_env("BOTRELAY_SPOOL_MAX_BYTES", _positive_int)
    )

    # The operator's console (``botrelay console``): Basic auth it requires, unless
    # BOTRELAY_CONSOLE_AUTH=none says it runs behind something that authenticates.
    console_username: str | None = field(
        default=None, metadata=_env("BOTRELAY_CONSOLE_USERNAME")
    )
    console_password: str | None = field(
        default=None, repr=False, metadata=_env("BOTRELAY_CONSOLE_PASSWORD")
    )
    console_auth: ConsoleAuth = field(
        default="basic", metadata=_env("BOTRELAY_CONSOLE_AUTH", _choice("basic", "none"))
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``env`` (default ``os.environ``); ``overrides`` that are not None win."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata.get("env")
            raw = source.get(name) if name else None
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                raise SettingsError(f"{name}={raw!r} is not valid: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def replace(self, **overrides: Any) -> Settings:
        """A copy with the overrides that are not None (how command-line flags are applied)."""
        settings = dataclasses.replace(
            self, **{k: v for k, v in overrides.items() if v is not None}
        )
        settings.check()
        return settings

    def check(self) -> None:
        if bool(self.callback_username) != bool(self.callback_password):
            raise SettingsError(
                "set both BOTRELAY_CALLBACK_USERNAME and BOTRELAY_CALLBACK_PASSWORD, or neither"
            )
        if bool(self.console_username) != bool(self.console_password):
            raise SettingsError(
                "set both BOTRELAY_CONSOLE_USERNAME and BOTRELAY_CONSOLE_PASSWORD, or neither"
            )
        if self.dedup_lease <= self.handler_timeout + self.reply_budget:
            raise SettingsError(
                "BOTRELAY_DEDUP_LEASE must be longer than BOTRELAY_HANDLER_TIMEOUT + "
                f"BOTRELAY_REPLY_BUDGET ({self.dedup_lease} <= "
                f"{self.handler_timeout} + {self.reply_budget})"
            )
        if not self.prefix or any(c in self.prefix for c in " /#*"):
            raise SettingsError(f"BOTRELAY_PREFIX={self.prefix!r} must be a plain name")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.callback_username)

    def env_names(self) -> dict[str, str]:
        """Field name -> env var name, for docs and the deploy-manifest check."""
        return {f.name: f.metadata["env"] for f in dataclasses.fields(self)}
