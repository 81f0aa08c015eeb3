"""HTTP Basic auth (the ingress's callback, the console), compared in constant time.

Both sides are hashed first so each comparison runs over 32 bytes: ``compare_digest`` on raw
headers would leak the expected header's length through timing. Several pairs can be accepted
at once (credential rotation); every pair is compared on every request, so the time taken says
nothing about which pair, if any, matched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def _digest(username: str, password: str) -> bytes:
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return hashlib.sha256(f"Basic {token}".encode("ascii")).digest()


class BasicAuth:
    def __init__(self, username: str, password: str, *more: tuple[str, str]) -> None:
        self._expected = [_digest(username, password)] + [_digest(u, p) for u, p in more]

    def matches(self, header: str | None) -> list[int]:
        """The positions (0 = the first pair) of the pairs the ``Authorization`` header carries."""
        # A missing header is hashed too, so every rejection costs the same.
        raw = hashlib.sha256((header or "").encode("utf-8", "surrogateescape")).digest()
        found = [hmac.compare_digest(raw, expected) for expected in self._expected]
        return [i for i, hit in enumerate(found) if hit]

    def check(self, header: str | None) -> bool:
        """True when the header carries one of the configured pairs exactly."""
        return bool(self.matches(header))
