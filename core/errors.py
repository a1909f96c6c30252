"""OpenAI's error envelope, ``{"error": {"message", "type", "param", "code"}}``: the errors every layer raises.

``OpenAIError`` is what a client should see; ``UpstreamError`` is a backend's failure with the
status the gateway answers with. ``from_validation_error`` turns pydantic's report into one 400
naming the offending param. The ASGI handlers that render them live in ``gateway/error_handlers.py``.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class OpenAIError(Exception):
    """An error the client should see, with its HTTP status and OpenAI envelope fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json(self) -> bytes:
        return orjson.dumps(self.body())


def format_param(loc: tuple[Any, ...]) -> str | None:
    """('messages', 0, 'user', 'content') -> 'messages[0].content' (union tags dropped).

    A name is a union tag only after the first part (``user`` alone is the request's ``user`` field),
    and a role tag only right after a list index (``metadata.user`` is a metadata key)."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i and ((part in _TYPE_TAGS or (isinstance(part, str) and ("[" in part or part.startswith("function-"))))
                    or (part in _ROLE_TAGS and isinstance(loc[i - 1], int))
                    or (part in _FORMAT_TAGS and loc[i - 1] == "format")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or None


# Names pydantic inserts into error paths for union members and discriminated-union (role) tags.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "NamedToolChoice", "NamedCustomToolChoice",
                        "AllowedToolsChoice", "TextPart", "ContentPart"})
# Tags right after a list index: a message's role, a tool's or tool call's type (``tools[0]`` is tagged
# ``function``, then comes its field ``function``: ``tools[0].function.name``), a custom format's type.
_ROLE_TAGS = frozenset({"system", "developer", "user", "assistant", "tool", "function", "custom"})
_FORMAT_TAGS = frozenset({"text", "grammar"})  # a custom tool's format: the tag right after ``format``
_UNION_TAGS = _TYPE_TAGS | _ROLE_TAGS | _FORMAT_TAGS


def from_validation_error(exc: ValidationError) -> OpenAIError:
    """Turn pydantic's report into one OpenAI-style 400 naming the first offending param."""
    errors = exc.errors(include_url=False)
    for err in errors:
        ctx_err = (err.get("ctx") or {}).get("error")
        param = getattr(ctx_err, "param", None)
        if param:
            message = f"Invalid value for '{param}': {ctx_err.message}" if ctx_err.prefixed else ctx_err.message
            return OpenAIError(400, message, param=param, code="invalid_value")
    err = _most_specific(errors)
    param = format_param(err["loc"])
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "missing":
        return OpenAIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = "role" if "role" in str((err.get("ctx") or {}).get("discriminator", "")) else "type"
        if kind == "union_tag_not_found":
            return OpenAIError(400, f"Missing required parameter: '{param}.{field}'.", param=f"{param}.{field}",
                               code="missing_required_parameter")
        expected = (err.get("ctx") or {}).get("expected_tags", "")
        return OpenAIError(400, f"Invalid value for '{param}.{field}': expected one of {expected}.",
                           param=f"{param}.{field}", code="invalid_value")
    code = "invalid_type" if kind.endswith("_type") or kind.endswith("_parsing") else "invalid_value"
    return OpenAIError(400, f"Invalid value for '{param}': {msg}.", param=param, code=code)


def _most_specific(errors: list[Any]) -> Any:
    # With unions pydantic reports one error per member; the deepest path is the one the client meant.
    return max(errors, key=lambda e: len([p for p in e["loc"] if p not in _UNION_TAGS]))


class UpstreamError(OpenAIError):
    """The backend failed; ``status`` is what the gateway should answer with.

    ``retryable``: the failure came before any answer and another try (another replica, a fallback
    node) may succeed: a connect error, a reset, a timeout, a 5xx, 408 or 429 from the upstream."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after: str | None = None,
        retryable: bool = False,
    ):
        super().__init__(status, message, type=type, param=param, code=code,
                         headers={"Retry-After": retry_after} if retry_after else None)
        self.retry_after = retry_after
        self.retryable = retryable

    @property
    def reason(self) -> str:
        """What a fallback or a metric calls it: rate_limited, backend_timeout or backend_error."""
        if self.status == 429:
            return "rate_limited"
        if self.status == 504:
            return "backend_timeout"
        return "backend_error"


class UpstreamTimeout(UpstreamError):
    def __init__(self, message: str):
        super().__init__(504, message, type="timeout_error", code="upstream_timeout", retryable=True)


# An upstream's refusal that is the request's own fault travels back to the client with its status
# (422 as OpenAI's 400); anything else it refuses (its credentials, its model name) is a 502.
PASS_THROUGH_STATUSES = {400: 400, 413: 413, 422: 400, 429: 429, 504: 504}
# What another try may mend: the upstream is overloaded, restarting or failing, not the request.
RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


def max_tokens_reached(limit: object, what: str = "message") -> UpstreamError:
    """The answer (``what``: the message, the tool call) was cut off by the client's token limit: a 400 naming it."""
    return UpstreamError(400, f"Could not finish the {what} because max_tokens ({limit}) was reached. Please try again "
                         "with a higher max_tokens.", param="max_tokens", code="max_tokens_reached")
