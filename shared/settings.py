"""One typed settings object, read from ``BOTRELAY_*`` env vars; command-line flags override.

This module is the only place that reads ``os.environ``. Everything else receives a ``Settings``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from botrelay.shared.apps import App, index, load_apps_file
from botrelay.shared.errors import SettingsError

DEFAULT_API_BASE = "https://{appId}.api-{region}.cometchat.io/v3"

LogFormat = Literal["json", "text"]
Ordering = Literal["conversation", "none"]
ConsoleAuth = Literal["basic", "none"]
CallbackAuth = Literal["basic", "none"]


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


def _amqp_urls(raw: str) -> str:
    """One URL, or a comma-separated list of a cluster's nodes; each must name its scheme."""
    urls = [part.strip() for part in raw.split(",") if part.strip()]
    if not urls:
        raise ValueError("expected amqp://... or a comma-separated list of node URLs")
    for url in urls:
        if not url.startswith(("amqp://", "amqps://")):
            raise ValueError("each URL must start with amqp:// or amqps://")
    return ",".join(urls)


def _host_ports(raw: str) -> tuple[tuple[str, int], ...]:
    out = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        host, colon, port = part.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port[,host:port...]")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError("expected host:port[,host:port...]")
    return tuple(out)


def _env(name: str, parse: Callable[[str], Any] = str) -> Any:
    """Field metadata: which env var feeds the field and how to parse it."""
    return {"env": name, "parse": parse}


@dataclass(frozen=True, slots=True)
class Settings:
    amqp_url: str = field(
        default="amqp://guest:guest@localhost:5672/",
        repr=False,  # may carry a password
        metadata=_env("BOTRELAY_AMQP_URL", _amqp_urls),
    )
    # Replicas per quorum queue; unset: every node listed in BOTRELAY_AMQP_URL, as an odd number
    # of at most 5 (see ``quorum_group_size``).
    quorum_size: int | None = field(
        default=None, metadata=_env("BOTRELAY_QUORUM_SIZE", _positive_int)
    )
    prefix: str = field(default="botrelay", metadata=_env("BOTRELAY_PREFIX"))
    redis_url: str | None = field(default=None, repr=False, metadata=_env("BOTRELAY_REDIS_URL"))
    # Redis through Sentinel: the sentinels to ask and the name of the primary they watch.
    # BOTRELAY_REDIS_URL, when set too, gives the primary's password, database and TLS.
    redis_sentinels: tuple[tuple[str, int], ...] = field(
        default=(), metadata=_env("BOTRELAY_REDIS_SENTINELS", _host_ports)
    )
    redis_sentinel_master: str | None = field(
        default=None, metadata=_env("BOTRELAY_REDIS_SENTINEL_MASTER")
    )
    callback_username: str | None = field(
        default=None, metadata=_env("BOTRELAY_CALLBACK_USERNAME")
    )
    callback_password: str | None = field(
        default=None, repr=False, metadata=_env("BOTRELAY_CALLBACK_PASSWORD")
    )
    # Rotation: the pair being replaced stays accepted until CometChat sends the new one.
    callback_previous_username: str | None = field(
        default=None, metadata=_env("BOTRELAY_CALLBACK_PREVIOUS_USERNAME")
    )
    callback_previous_password: str | None = field(
        default=None, repr=False, metadata=_env("BOTRELAY_CALLBACK_PREVIOUS_PASSWORD")
    )
    # "none" says on purpose that something in front of the ingress authenticates callers.
    callback_auth: CallbackAuth = field(
        default="basic", metadata=_env("BOTRELAY_CALLBACK_AUTH", _choice("basic", "none"))
    )
    # The app this deployment serves; BOTRELAY_COMETCHAT_APPS_FILE lists more.
    cometchat_app_id: str | None = field(default=None, metadata=_env("BOTRELAY_COMETCHAT_APP_ID"))
    cometchat_region: str = field(default="us", metadata=_env("BOTRELAY_COMETCHAT_REGION"))
    cometchat_apps_file: str | None = field(
        default=None, metadata=_env("BOTRELAY_COMETCHAT_APPS_FILE")
    )
    # Read from the apps file by from_env (with its env var indirections); not an env var itself.
    file_apps: tuple[App, ...] = field(default=(), repr=False, compare=False)
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
    # Redeliveries of one callback before the broker dead-letters it (x-delivery-limit). Also
    # what keeps a conversation in order: see ``shared.topology``.
    delivery_limit: int = field(
        default=20, metadata=_env("BOTRELAY_DELIVERY_LIMIT", _positive_int)
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
            if name is None:
                continue
            raw = source.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                raise SettingsError(f"{name}={raw!r} is not valid: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("cometchat_apps_file") and "file_apps" not in values:
            values["file_apps"] = load_apps_file(values["cometchat_apps_file"], source)
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
        if bool(self.callback_previous_username) != bool(self.callback_previous_password):
            raise SettingsError("set both BOTRELAY_CALLBACK_PREVIOUS_USERNAME and "
                                "BOTRELAY_CALLBACK_PREVIOUS_PASSWORD, or neither")
        if self.callback_auth == "none" and self.callback_pairs():
            raise SettingsError("BOTRELAY_CALLBACK_AUTH=none but BOTRELAY_CALLBACK_USERNAME is "
                                "set: unset one of them")
        self.apps_by_id()  # app ids, regions and reply bases are valid and distinct
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
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise SettingsError(
                "set both BOTRELAY_REDIS_SENTINELS and BOTRELAY_REDIS_SENTINEL_MASTER, or neither"
            )
        if not self.prefix or any(c in self.prefix for c in " /#*"):
            raise SettingsError(f"BOTRELAY_PREFIX={self.prefix!r} must be a plain name")

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The broker nodes, in the order they are tried."""
        return tuple(part.strip() for part in self.amqp_url.split(",") if part.strip())

    @property
    def quorum_group_size(self) -> int | None:
        """Replicas of each quorum queue, or None to leave it to the broker (one URL: the
        single-node default, and queues declared before this setting existed stay as they are).
        By default an odd number: an even one adds a copy but no tolerance of a lost node."""
        if self.quorum_size is not None:
            return self.quorum_size
        nodes = len(self.amqp_urls)
        if nodes < 2:
            return None
        size = min(nodes, 5)
        return size if size % 2 else size - 1

    @property
    def redis_enabled(self) -> bool:
        """A shared Redis is configured: by URL, or through Sentinel."""
        return bool(self.redis_url or self.redis_sentinels)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.callback_pairs()) or any(app.callback for app in self.apps)

    def callback_pairs(self) -> tuple[tuple[str, str], ...]:
        """The username/password pairs accepted for every app's callbacks."""
        pairs = []
        for username, password in ((self.callback_username, self.callback_password),
                                   (self.callback_previous_username,
                                    self.callback_previous_password)):
            if username and password:
                pairs.append((username, password))
        return tuple(pairs)

    @property
    def apps(self) -> tuple[App, ...]:
        """Every configured app: the one of BOTRELAY_COMETCHAT_APP_ID, then the file's."""
        own: tuple[App, ...] = ()
        if self.cometchat_app_id:
            try:
                own = (App(self.cometchat_app_id, self.cometchat_region,
                           api_key=self.cometchat_api_key),)
            except SettingsError as exc:
                raise SettingsError(f"BOTRELAY_COMETCHAT_APP_ID/_REGION: {exc}") from None
        return own + self.file_apps

    def apps_by_id(self) -> dict[str, App]:
        return index(self.apps, self.cometchat_api_base)

    def check_ingress(self) -> None:
        """What ``botrelay ingress`` needs to run safely; a ``SettingsError`` (exit 2) if not."""
        if not self.auth_enabled and self.callback_auth != "none":
            raise SettingsError(
                "no callback credentials: set BOTRELAY_CALLBACK_USERNAME and "
                "BOTRELAY_CALLBACK_PASSWORD (the Basic auth configured on the CometChat bot), "
                "or BOTRELAY_CALLBACK_AUTH=none if a proxy in front authenticates callers")
        if not self.apps:
            raise SettingsError("no CometChat app configured: set BOTRELAY_COMETCHAT_APP_ID "
                                "(and BOTRELAY_COMETCHAT_REGION), or BOTRELAY_COMETCHAT_APPS_FILE")

    def check_replies(self) -> None:
        """What sending replies needs (``botrelay worker``; ``botrelay dev`` with a key)."""
        keyed = bool(self.cometchat_api_key) or any(app.api_key for app in self.file_apps)
        if not keyed:
            raise SettingsError("no CometChat API key: set BOTRELAY_COMETCHAT_API_KEY (or "
                                "api_key in BOTRELAY_COMETCHAT_APPS_FILE), or every reply fails")
        if not self.apps:
            raise SettingsError("BOTRELAY_COMETCHAT_API_KEY is set but no app is: set "
                                "BOTRELAY_COMETCHAT_APP_ID (and BOTRELAY_COMETCHAT_REGION), "
                                "so replies go to that app's API and nowhere else")
        missing = [app.id for app in self.apps if not app.api_key]
        if missing:
            raise SettingsError(f"app {missing[0]} has no API key: set "
                                "BOTRELAY_COMETCHAT_API_KEY or its api_key in the apps file")

    def env_names(self) -> dict[str, str]:
        """Field name -> env var name, for docs and the deploy-manifest check."""
        return {f.name: f.metadata["env"] for f in dataclasses.fields(self)
                if "env" in f.metadata}


# Variables botrelay reads that are not settings of a process (the image's bot, the tests').
_OTHER_NAMES = frozenset({"BOTRELAY_APP"})


def unknown_names(env: Mapping[str, str] | None = None) -> list[str]:
    """``BOTRELAY_*`` variables no setting reads, each with the nearest known name: a typo
    must not silently fall back to a default."""
    import difflib

    source = os.environ if env is None else env
    known = set(Settings().env_names().values()) | _OTHER_NAMES
    lines = []
    for name in sorted(n for n in source if n.startswith("BOTRELAY_") and n not in known):
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        lines.append(f"{name} is not a botrelay setting{hint}; it is ignored")
    return lines
