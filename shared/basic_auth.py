"""HTTP Basic auth (the ingress's callback, the console), compared in constant time.

Both sides are hashed first so the comparison always runs over 32 bytes: ``compare_digest`` on
raw headers would leak the expected header's length through timing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


class BasicAuth:
    def __init__(self, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._expected = hashlib.sha256(f"Basic {token}".encode("ascii")).digest()

    def check(self, header: str | None) -> bool:
        """True when the ``Authorization`` header carries exactly the configured credentials."""
        # A missing header is hashed too, so every rejection costs the same.
        raw = (header or "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(hashlib.sha256(raw).digest(), self._expected)
