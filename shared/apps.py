"""The CometChat apps a deployment serves: fixed by configuration, never by a callback.

A callback's ``appId`` only *selects* one of these; the reply host, the API key and the callback
credentials all come from here. One app comes from ``BOTRELAY_COMETCHAT_APP_ID`` /
``_REGION`` / ``_API_KEY``; more from the TOML file named by ``BOTRELAY_COMETCHAT_APPS_FILE``::

    [[app]]
    id = "2248348660ad9bd4"
    region = "eu"
    api_key_env = "COMETCHAT_KEY_SUPPORT"     # or api_key = "..."
    callback = [{ username = "cometchat", password_env = "CALLBACK_PASSWORD_SUPPORT" }]
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botrelay.shared.errors import SettingsError
from botrelay.shared.identity import APP_ID, APP_ID_RULE, REGION, REGION_RULE, matches


@dataclass(frozen=True, slots=True)
class App:
    id: str
    region: str
    api_key: str | None = field(default=None, repr=False)
    # Username/password pairs accepted for this app's callbacks, besides the global ones.
    callback: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not matches(APP_ID, self.id):
            raise SettingsError(f"app id {self.id!r} must be {APP_ID_RULE}")
        if not matches(REGION, self.region):
            raise SettingsError(f"region {self.region!r} of app {self.id} must be {REGION_RULE}")

    def api_base(self, template: str) -> str:
        """The app's REST API base: ``template`` filled with the app's own id and region."""
        return template.format(appId=self.id, region=self.region).rstrip("/")


def _secret(entry: Mapping[str, Any], name: str, where: str, env: Mapping[str, str],
            *, required: bool) -> str | None:
    """``entry[name]``, or the env var ``entry[name + '_env']`` names (keeps keys out of files)."""
    value = entry.get(name)
    env_name = entry.get(f"{name}_env")
    if value is not None and env_name is not None:
        raise SettingsError(f"{where}: set {name} or {name}_env, not both")
    if env_name is not None:
        if not isinstance(env_name, str) or not env.get(env_name):
            raise SettingsError(f"{where}: {name}_env names {env_name!r}, which is not set")
        return env[env_name]
    if value is None:
        if required:
            raise SettingsError(f"{where}: {name} (or {name}_env) is required")
        return None
    if not isinstance(value, str) or not value:
        raise SettingsError(f"{where}: {name} must be a non-empty string")
    return value


def _callback_pairs(entry: Mapping[str, Any], where: str,
                    env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    raw = entry.get("callback", [])
    if not isinstance(raw, list):
        raise SettingsError(f"{where}: callback must be a list of {{username, password}} tables")
    pairs = []
    for i, item in enumerate(raw):
        spot = f"{where} callback[{i}]"
        if not isinstance(item, dict):
            raise SettingsError(f"{spot}: expected a table with username and password")
        username = _secret(item, "username", spot, env, required=True)
        password = _secret(item, "password", spot, env, required=True)
        assert username is not None and password is not None
        pairs.append((username, password))
    return tuple(pairs)


def load_apps_file(path: str, env: Mapping[str, str]) -> tuple[App, ...]:
    """The apps listed in a TOML file; any mistake is a ``SettingsError`` naming the file."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"BOTRELAY_COMETCHAT_APPS_FILE={path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"BOTRELAY_COMETCHAT_APPS_FILE={path}: {exc}") from None
    entries = doc.get("app")
    if not isinstance(entries, list) or not entries:
        raise SettingsError(f"{path}: expected one or more [[app]] tables")
    apps = []
    for i, entry in enumerate(entries):
        where = f"{path} app[{i}]"
        app_id, region = entry.get("id"), entry.get("region")
        if not isinstance(app_id, str) or not isinstance(region, str):
            raise SettingsError(f"{where}: id and region are required strings")
        apps.append(App(
            id=app_id,
            region=region,
            api_key=_secret(entry, "api_key", where, env, required=False),
            callback=_callback_pairs(entry, where, env),
        ))
    return tuple(apps)


def index(apps: tuple[App, ...], template: str) -> dict[str, App]:
    """Apps by id; several apps must not share a reply base, or a key could reach another app."""
    by_id: dict[str, App] = {}
    bases: dict[str, str] = {}
    for app in apps:
        if app.id in by_id:
            raise SettingsError(f"app {app.id} is configured twice")
        base = app.api_base(template)
        if base in bases:
            raise SettingsError(
                f"apps {bases[base]} and {app.id} would share the reply API base {base}: "
                "BOTRELAY_COMETCHAT_API_BASE must contain {appId} when several apps are served")
        by_id[app.id], bases[base] = app, app.id
    return by_id
