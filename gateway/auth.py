"""Optional bearer-key authentication for /v1 routes.

Keys come from the graph's ``server.api_keys`` (``env:NAME`` allowed) and ``OCTOGATE_API_KEYS``
(comma-separated). With no key configured, the gateway is open. Keys are compared in constant
time (per key, and every key is always compared) and never logged.
"""

from __future__ import annotations

import hmac

from octogate.core.errors import OpenAIError


def bearer_token(header: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header value; None for anything else."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class KeyChecker:
    def __init__(self, keys: list[str], required: bool = False):
        """``required``: with no key configured, refuse every request (the admin routes) instead of
        letting every request in (the API, when the graph sets no keys)."""
        self._keys = [k.encode() for k in keys]
        self.required = required

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, header: str | None) -> None:
        """Raise a 401 unless ``header`` (the Authorization header's value) carries an accepted key."""
        if not self._keys:
            if self.required:
                raise OpenAIError(403, "This route needs an admin key, and the graph sets none (server.admin_keys).",
                                  code="admin_keys_not_configured")
            return
        if not header:
            raise OpenAIError(401, "Missing API key: send it as 'Authorization: Bearer <key>'.",
                              code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        token = bearer_token(header)
        candidate = (token or "").encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if token is None or not matched:
            raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key",
                              headers={"WWW-Authenticate": "Bearer"})
