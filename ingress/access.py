"""Who may post callbacks, and for which configured app.

The global pairs (``BOTRELAY_CALLBACK_USERNAME``/``_PASSWORD``, and ``_PREVIOUS_*`` during a
rotation) admit callbacks for every configured app; a pair from the apps file admits only its
own app's. A callback whose ``appId`` is not configured is refused (403): the worker could not
answer it, and its ``appId`` must never decide where a reply or a key goes.
"""

from __future__ import annotations

from enum import Enum

from botrelay.shared.apps import App
from botrelay.shared.basic_auth import BasicAuth
from botrelay.shared.settings import Settings

# Owner of a credential pair: None for the global pairs, else the app id.
Owners = frozenset[str | None]


class Verdict(Enum):
    ADMITTED = "admitted"
    UNKNOWN_APP = "unknown_app"
    WRONG_APP = "wrong_app"


class CallbackAccess:
    def __init__(self, settings: Settings, *, any_app: bool = False) -> None:
        self.apps: dict[str, App] = settings.apps_by_id()
        # botrelay dev with no app configured: any appId, since no reply is sent with a key.
        self.any_app = any_app and not self.apps
        pairs = list(settings.callback_pairs())
        self._owners: list[str | None] = [None] * len(pairs)
        for app in self.apps.values():
            pairs.extend(app.callback)
            self._owners.extend([app.id] * len(app.callback))
        open_door = settings.callback_auth == "none" or not pairs
        self._auth = None if open_door else BasicAuth(pairs[0][0], pairs[0][1], *pairs[1:])

    @property
    def authenticates(self) -> bool:
        return self._auth is not None

    def authenticate(self, header: str | None) -> Owners | None:
        """The owners of the pairs the header carries; None when it carries none."""
        if self._auth is None:
            return frozenset({None})
        matched = self._auth.matches(header)
        return frozenset(self._owners[i] for i in matched) if matched else None

    def admit(self, app_id: str, owners: Owners) -> Verdict:
        if self.any_app:
            return Verdict.ADMITTED
        if app_id not in self.apps:
            return Verdict.UNKNOWN_APP
        if None in owners or app_id in owners:
            return Verdict.ADMITTED
        return Verdict.WRONG_APP
