"""Basic auth and CSRF tokens for the console."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web

from botrelay.shared.basic_auth import BasicAuth
from botrelay.shared.errors import SettingsError
from botrelay.shared.settings import Settings

REALM = 'Basic realm="botrelay console", charset="UTF-8"'


def check_auth_settings(settings: Settings) -> None:
    """The console moves and drops dead letters: it refuses to run open unless told so."""
    # Both must be non-empty: an empty password would let anyone who guesses the user name in.
    if settings.console_auth == "basic" and not (settings.console_username
                                                 and settings.console_password):
        raise SettingsError(
            "botrelay console needs BOTRELAY_CONSOLE_USERNAME and BOTRELAY_CONSOLE_PASSWORD "
            "(or BOTRELAY_CONSOLE_AUTH=none behind a proxy that authenticates)"
        )


class Guard:
    def __init__(self, settings: Settings) -> None:
        self.required = settings.console_auth == "basic"
        self._username = settings.console_username or ""
        self._auth = BasicAuth(self._username, settings.console_password or "")
        # Per process: a restart invalidates open forms, which only costs a reload.
        self._secret = secrets.token_bytes(32)

    def user(self, request: web.Request) -> str | None:
        """The authenticated user name ("" when auth is off), or None."""
        if not self.required:
            return ""
        return self._username if self._auth.check(request.headers.get("Authorization")) else None

    def token(self, user: str) -> str:
        """The CSRF token for forms of ``user``: another site cannot read it, so cannot forge a
        POST that carries it, even though the browser sends the Basic credentials along."""
        return hmac.new(self._secret, f"csrf:{user}".encode(), hashlib.sha256).hexdigest()

    def token_ok(self, user: str, given: str) -> bool:
        return hmac.compare_digest(self.token(user).encode(), given.encode())


def unauthorized() -> web.Response:
    return web.json_response({"error": "unauthorized", "detail": "Basic auth required"},
                             status=401, headers={"WWW-Authenticate": REALM})
