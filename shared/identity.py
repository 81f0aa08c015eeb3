"""CometChat's identifier formats, checked wherever an id may end up in a URL, a key or a header.

A callback's identity fields (``appId``, ``bot``, ``webhook``, message ids, UIDs) are attacker
controlled until checked. The reply URL and the Redis keys are built from them, so each is held
to the format CometChat itself allows, with a bound on its length: a value that could name a
host, a port, userinfo, a path, a query or a fragment never gets through.
"""

from __future__ import annotations

import re

from botrelay.shared.errors import PayloadError

# CometChat app ids are hexadecimal today; letters and digits covers any future form.
APP_ID = re.compile(r"[A-Za-z0-9]{1,64}")
# UIDs and GUIDs: "alphanumeric with underscore and hyphen" (CometChat's users API), at most 100.
UID = re.compile(r"[A-Za-z0-9_-]{1,100}")
# Message ids are numeric strings; webhook ids and other ids follow the UID rule.
ID = UID
# us, eu, in, ...: a short lowercase code. The payload's region is only ever compared, never
# formatted into a URL: the reply host comes from the configured app.
REGION = re.compile(r"[a-z]{2,16}")


def matches(pattern: re.Pattern[str], value: str) -> bool:
    return pattern.fullmatch(value) is not None


def check(pattern: re.Pattern[str], value: str, field: str, what: str) -> str:
    """``value`` when it has ``pattern``'s format, else a ``PayloadError`` naming ``field``."""
    if pattern.fullmatch(value) is None:
        raise PayloadError("invalid callback", f"field '{field}' must be {what}")
    return value


UID_RULE = "1 to 100 letters, digits, '_' or '-'"
APP_ID_RULE = "1 to 64 letters or digits"
REGION_RULE = "2 to 16 lowercase letters"
