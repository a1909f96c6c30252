"""Optional bearer-key authentication for /v1 routes.

Keys come from the graph's ``server.api_keys`` (``env:NAME`` allowed) and ``OCTOGATE_API_KEYS``
(comma-separated). With no key configured, the gateway is open. Keys are compared in constant
time (per key, and every key is always compared) and never logged.
"""

from __future__ import annotations

import hmac

from octogate.core.errors import OpenAIError
from octogate.core.server_config import ApiKeyConfig


def bearer_token(header: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header value; None for anything else."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class KeyChecker:
    def __init__(self, keys: list[str] | dict[str, ApiKeyConfig], required: bool = False):
        """``keys``: the accepted keys, or each key with its caller (name and budgets).
        ``required``: with no key configured, refuse every request (the admin routes) instead of
        letting every request in (the API, when the graph sets no keys)."""
        table = keys if isinstance(keys, dict) else {k: None for k in keys}
        self._keys = [(k.encode(), caller) for k, caller in table.items()]
        self.required = required

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, header: str | None) -> ApiKeyConfig | None:
        """The caller whose key ``header`` (the Authorization header's value) carries; a 401 unless
        it carries an accepted key. None when keys are off (or a key has no caller of its own)."""
        if not self._keys:
            if self.required:
                raise OpenAIError(403, "This route needs an admin key, and the graph sets none (server.admin_keys).",
                                  code="admin_keys_not_configured")
            return None
        if not header:
            raise OpenAIError(401, "Missing API key: send it as 'Authorization: Bearer <key>'.",
                              code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        token = bearer_token(header)
        candidate = (token or "").encode()
        matched, caller = False, None
        for key, owner in self._keys:  # every key compared, in constant time each
            if hmac.compare_digest(candidate, key):
                matched, caller = True, owner
        if token is None or not matched:
            raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key",
                              headers={"WWW-Authenticate": "Bearer"})
        return caller
